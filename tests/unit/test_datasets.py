"""Every format and shape ingests to the same training rows; every bad input gets its own message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from studio.training import rows as rowlib
from studio.training.datasets import (
    ColumnMap,
    DatasetError,
    NeedsColumns,
    load_dataset,
    split,
)
from studio.training.job import TrainJob, default_targets, estimate_job, lora_params

ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"
PAIRS = [
    ("What is LoRA?", "", "Low-rank adapters beside frozen weights."),
    ("Translate to French.", "Good morning", "Bonjour"),
    ("Add the numbers.", "2 and 3", "5"),
]
EXPECTED = [
    {
        "messages": [
            {"role": "user", "content": f"{i}\n\n{x}" if x else i},
            {"role": "assistant", "content": o},
        ]
    }
    for i, x, o in PAIRS
]
TEXTS = ["The first sample, on one line.", "A second sample with more words in it.", "Third."]


def _write(path: Path, kind: str, records: list[dict]) -> Path:
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif kind == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif kind in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="\t" if kind == ".tsv" else ",")
            w.writeheader()
            w.writerows(records)
    elif kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


ALPACA = [{"instruction": i, "input": x, "output": o} for i, x, o in PAIRS]
OPENAI = [{"messages": e["messages"]} for e in EXPECTED]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": m["messages"][0]["content"]},
                       {"from": "gpt", "value": m["messages"][1]["content"]}]}
    for m in EXPECTED
]  # fmt: skip


@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_alpaca_in_every_format(tmp_path, kind):
    ds = load_dataset(_write(tmp_path / f"d{kind}", kind, ALPACA))
    assert ds.mapping.shape == "alpaca" and ds.samples == EXPECTED


@pytest.mark.parametrize("kind", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("records,shape", [(OPENAI, "messages"), (SHAREGPT, "sharegpt")])
def test_chat_shapes_in_every_format(tmp_path, kind, records, shape):
    ds = load_dataset(_write(tmp_path / f"d{kind}", kind, records))
    assert ds.mapping.shape == shape and ds.samples == EXPECTED


def test_text_in_every_format(tmp_path):
    records = [{"text": t} for t in TEXTS]
    found = [
        load_dataset(_write(tmp_path / f"d{kind}", kind, records)).samples
        for kind in (".jsonl", ".json", ".csv", ".tsv", ".parquet")
    ]
    (tmp_path / "lines.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    (tmp_path / "blocks.txt").write_text("para one\nstill one\n\npara two\n\n\npara three\n", encoding="utf-8")
    found.append(load_dataset(tmp_path / "lines.txt").samples)
    assert all(f == [{"text": t} for t in TEXTS] for f in found)
    blocks = load_dataset(tmp_path / "blocks.txt").samples
    assert blocks == [{"text": "para one\nstill one"}, {"text": "para two"}, {"text": "para three"}]


def test_every_shape_gives_the_same_token_rows(tmp_path, tiny_models):
    tok = rowlib.load_tokenizer(tiny_models.causal_lm)
    sets = [load_dataset(_write(tmp_path / f"{n}.jsonl", ".jsonl", r)).samples for n, r in
            (("a", ALPACA), ("o", OPENAI), ("s", SHAREGPT))]  # fmt: skip
    token_rows = [[(r.ids, r.labels) for r in rowlib.tokenize(s, tok, 256)] for s in sets]
    assert token_rows[0] == token_rows[1] == token_rows[2]
    row = rowlib.tokenize(sets[0][:1], tok, 256)[0]
    learned = tok.decode([t for t, lab in zip(row.ids, row.labels, strict=True) if lab != rowlib.IGNORE])
    assert learned.startswith("Low-rank adapters") and "What is LoRA" not in learned  # only the answer is learned
    assert rowlib.render(sets[0][0], tok).startswith("<|im_start|>user\nWhat is LoRA?")


def test_packing_fills_blocks_and_keeps_every_token(tiny_models):
    tok = rowlib.load_tokenizer(tiny_models.causal_lm)
    samples = load_dataset(ASSET).samples
    token_rows = rowlib.tokenize(samples, tok, 512)
    blocks = rowlib.pack(token_rows, 512)
    assert sum(len(b) for b in blocks) == sum(len(r.ids) for r in token_rows)
    assert all(len(b) <= 512 for b in blocks) and len(blocks) < len(token_rows) / 3
    b = blocks[0]
    starts = [i for i, p in enumerate(b.positions) if p == 0]
    assert len(starts) >= 2 and all(b.labels[i] == rowlib.IGNORE for i in starts)  # never predicted across rows


def test_measure_counts_truncation(tiny_models):
    tok = rowlib.load_tokenizer(tiny_models.causal_lm)
    samples = [{"text": "word " * n} for n in (5, 50, 200)]
    stats = rowlib.measure(samples, tok, 64)
    assert stats.truncated == 2 and len(stats.lengths) == 3 and stats.total_tokens <= 3 * 64
    assert sum(c for _, _, c in stats.histogram()) == 3


def test_the_sample_dataset_loads():
    ds = load_dataset(ASSET)
    assert ds.mapping.shape == "alpaca" and len(ds.samples) == 30
    train, evals = split(ds.samples, 0.1, 42)
    assert len(train) == 27 and len(evals) == 3 and split(ds.samples, 0.1, 42) == (train, evals)


# ----- bad input --------------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(DatasetError, match="e.jsonl is empty"):
        load_dataset(tmp_path / "e.jsonl")


def test_binary_junk(tmp_path):
    (tmp_path / "junk.csv").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DatasetError, match="looks like binary data"):
        load_dataset(tmp_path / "junk.csv")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="not a Parquet file"):
        load_dataset(tmp_path / "fake.parquet")


def test_other_encodings(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\u00e9 au lait\nna\u00efve\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"not UTF-8: byte 0xE9 on line 1"):
        load_dataset(tmp_path / "latin.txt")
    (tmp_path / "wide.txt").write_bytes("hello\nworld\n".encode("utf-16"))
    with pytest.raises(DatasetError, match="UTF-16"):
        load_dataset(tmp_path / "wide.txt")


def test_csv_with_no_usable_column(tmp_path):
    (tmp_path / "n.csv").write_text("a,b\n1,2\n3,4.5\n,\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no usable column: a, b hold only numbers or nothing"):
        load_dataset(tmp_path / "n.csv")


def test_unclear_columns_are_asked_for_then_used(tmp_path):
    (tmp_path / "qa.csv").write_text("q,a\nWhat is 2+2?,4 of course\nSky colour?,Blue\n", encoding="utf-8")
    with pytest.raises(NeedsColumns) as info:
        load_dataset(tmp_path / "qa.csv")
    assert info.value.columns == ["q", "a"] and "cannot tell which columns" in info.value.message
    ds = load_dataset(tmp_path / "qa.csv", ColumnMap("alpaca", instruction="q", output="a"))
    assert ds.samples[1]["messages"][1] == {"role": "assistant", "content": "Blue"}


def test_jsonl_with_one_broken_line(tmp_path):
    lines = [json.dumps(r) for r in ALPACA]
    lines.insert(2, '{"instruction": "oops", "output": ')
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"b.jsonl: line 3 is not a JSON object") as info:
        load_dataset(tmp_path / "b.jsonl")
    assert info.value.skippable and "Skip bad rows" in info.value.tip and info.value.row == 3
    ds = load_dataset(tmp_path / "b.jsonl", skip_bad=True)
    assert ds.samples == EXPECTED and len(ds.skipped) == 1 and "line 3" in ds.skipped[0]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "it nests arrays or objects too deeply"),
        ('{"instruction": "x", "output": ' + "9" * 5000 + "}", "it holds a whole number longer than 4300 digits"),
    ],
    ids=["nested-100000-deep", "5000-digit-number"],
)
def test_json_beyond_what_python_reads_is_named(tmp_path, line, why):
    (tmp_path / "d.jsonl").write_text(json.dumps(ALPACA[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=f"d.jsonl: line 2 cannot be read: {why}") as info:
        load_dataset(tmp_path / "d.jsonl")
    assert info.value.skippable and len(load_dataset(tmp_path / "d.jsonl", skip_bad=True).skipped) == 1
    (tmp_path / "d.json").write_text(f"[{line}]", encoding="utf-8")
    with pytest.raises(DatasetError, match=f"d.json cannot be read: {why}"):
        load_dataset(tmp_path / "d.json")


def test_a_row_missing_its_field_is_named(tmp_path):
    records = [*ALPACA[:1], {"instruction": "no answer here"}, *ALPACA[1:]]
    path = _write(tmp_path / "m.jsonl", ".jsonl", records)
    with pytest.raises(DatasetError, match="line 2 has no 'output' field"):
        load_dataset(path)
    assert load_dataset(path, skip_bad=True).samples == EXPECTED


def test_rows_all_empty_after_the_template(tmp_path):
    path = _write(tmp_path / "blank.jsonl", ".jsonl", [{"text": "   "}, {"text": ""}, {"text": "\n"}])
    with pytest.raises(DatasetError, match="all 3 rows are empty once shaped as plain text"):
        load_dataset(path)


def test_larger_than_the_upload_limit(tmp_path):
    path = _write(tmp_path / "big.jsonl", ".jsonl", ALPACA * 100)
    with pytest.raises(DatasetError, match=r"big.jsonl is \d+ MB, over the 0 MB upload limit"):
        load_dataset(path, limit=1000)


def test_unknown_extension(tmp_path):
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"\.xlsx is not a dataset format"):
        load_dataset(tmp_path / "d.xlsx")


# ----- the job and its estimate ---------------------------------------------------------------------------


def test_job_round_trips_and_checks():
    job = TrainJob(base_model="/m", target_modules=("q_proj", "v_proj"), train_rows=5)
    job.check()
    assert TrainJob.from_dict(json.loads(job.to_json())) == job
    with pytest.raises(Exception, match="LoRA rank must be between 1 and 1024"):
        TrainJob(base_model="/m", rank=0, train_rows=5).check()
    assert default_targets("llama")[0] == "q_proj" and default_targets("weird") == ("all-linear",)


def test_estimate_grows_with_batch_and_shrinks_with_checkpointing():
    from studio.models.formats import WeightsInfo

    config = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
              "intermediate_size": 1536, "vocab_size": 49152}  # fmt: skip
    info = WeightsInfo(134_515_008, 538_060_032, {"F32": 134_515_008}, "test", config, 106_000_000)
    base = TrainJob(base_model="/m", train_rows=1, rank=16, cutoff_len=512, batch_size=4)
    e = estimate_job(base, info, "llama")
    assert e.lora_params == lora_params(config, 16, default_targets("llama")) == 4_884_480
    bigger = estimate_job(TrainJob(**{**base.__dict__, "batch_size": 8}), info, "llama")
    ckpt = estimate_job(TrainJob(**{**base.__dict__, "gradient_checkpointing": True}), info, "llama")
    qlora = estimate_job(TrainJob(**{**base.__dict__, "method": "qlora"}), info, "llama")
    assert bigger.activations > e.activations > ckpt.activations and qlora.weights < e.weights / 3
    assert e.total == e.weights + e.adapter + e.optimizer + e.activations and "weights" in e.breakdown()
