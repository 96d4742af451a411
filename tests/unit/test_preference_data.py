"""Every preference shape ingests to the same normalised rows (the shared contract); every bad input has its message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from studio.training import defaults as dflt
from studio.training import pref_data, pref_rows
from studio.training import rows as rowlib
from studio.training.datasets import DatasetError, load_dataset
from studio.training.job import TrainJob, estimate_job


def _write(path: Path, records: list[dict]) -> Path:
    kind = path.suffix
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif kind == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif kind == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in records)
    elif kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


TRIPLES = [
    ("What is 2 + 2?", "2 + 2 is 4.", "It is 5."),
    ("Name a colour.", "Blue. Thanks for asking!", "No."),
]
EXPECTED = [{"prompt": [user(p)], "chosen": [bot(c)], "rejected": [bot(r)]} for p, c, r in TRIPLES]
TEXT = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in TRIPLES]
CONVERSATIONAL = [{"prompt": [user(p)], "chosen": [bot(c)], "rejected": [bot(r)]} for p, c, r in TRIPLES]
HH_MESSAGES = [{"chosen": [user(p), bot(c)], "rejected": [user(p), bot(r)]} for p, c, r in TRIPLES]
HH_TEXT = [
    {"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"}
    for p, c, r in TRIPLES
]
HH_PROMPT = [{"prompt": f"\n\nHuman: {p}\n\nAssistant:", "chosen": c, "rejected": r} for p, c, r in TRIPLES]
VOTES = [
    {**row, "meta": {"model": "starter", "adapter": "", "time": 1.0, "source": "side-by-side"}} for row in EXPECTED
]


@pytest.mark.parametrize(
    "records, suffixes",
    [
        pytest.param(TEXT, (".jsonl", ".json", ".csv", ".parquet"), id="text"),
        pytest.param(CONVERSATIONAL, (".jsonl", ".json", ".csv", ".parquet"), id="conversational"),
        pytest.param(HH_MESSAGES, (".jsonl", ".json", ".parquet"), id="hh-messages"),
        pytest.param(HH_TEXT, (".jsonl", ".csv"), id="hh-text"),
        pytest.param(HH_PROMPT, (".jsonl",), id="hh-text-prompt"),
        pytest.param(VOTES, (".jsonl",), id="vote-file-with-meta"),
    ],
)
def test_every_pair_shape_ingests_to_the_same_rows(tmp_path, records, suffixes):
    for suffix in suffixes:
        dataset = load_dataset(_write(tmp_path / f"pairs{suffix}", records))
        assert dataset.mapping.shape == "preference", suffix
        assert dataset.samples == EXPECTED, suffix


def test_a_multi_turn_prompt_is_kept_whole_and_hh_conversations_split_at_the_last_reply(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello!"), user("What is 2 + 2?")]
    expected = [{"prompt": turns, "chosen": [bot("4")], "rejected": [bot("5")]}]
    explicit = [{"prompt": turns, "chosen": [bot("4")], "rejected": [bot("5")]}]
    implicit = [{"chosen": [*turns, bot("4")], "rejected": [*turns, bot("5")]}]
    assert load_dataset(_write(tmp_path / "a.jsonl", explicit)).samples == expected
    assert load_dataset(_write(tmp_path / "b.jsonl", implicit)).samples == expected
    hh = [{"chosen": "Human: Hi\n\nAssistant: Hello!\n\nHuman: Sum?\n\nAssistant: 4", "rejected": ""}]
    hh[0]["rejected"] = hh[0]["chosen"][:-1] + "5"
    rows = load_dataset(_write(tmp_path / "c.jsonl", hh)).samples
    assert rows == [
        {"prompt": [user("Hi"), bot("Hello!"), user("Sum?")], "chosen": [bot("4")], "rejected": [bot("5")]}
    ]


KTO_EXPECTED = [
    {"prompt": [user("What is 2 + 2?")], "completion": [bot("4")], "label": True},
    {"prompt": [user("What is 2 + 2?")], "completion": [bot("5")], "label": False},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_kto_rows_ingest_to_the_same_rows(tmp_path, suffix):
    text = [{"prompt": "What is 2 + 2?", "completion": "4", "label": True}]
    text += [{"prompt": "What is 2 + 2?", "completion": "5", "label": False}]
    if suffix == ".csv":  # a CSV holds the label as text
        text = [{**r, "label": "True" if r["label"] else "false"} for r in text]
    dataset = load_dataset(_write(tmp_path / f"kto{suffix}", text))
    assert dataset.mapping.shape == "kto" and dataset.samples == KTO_EXPECTED
    conversational = [
        {"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]} for r in KTO_EXPECTED
    ]
    assert load_dataset(_write(tmp_path / f"kto-chat{suffix}", conversational)).samples == KTO_EXPECTED


def _error(tmp_path: Path, records: list[dict], name: str = "bad.jsonl") -> str:
    with pytest.raises(DatasetError) as caught:
        load_dataset(_write(tmp_path / name, records))
    return caught.value.message


def test_a_file_missing_chosen_or_rejected_is_named(tmp_path):
    message = _error(tmp_path, [{"prompt": "Q", "chosen": "A"}])
    assert "bad.jsonl has a 'chosen' column but no 'rejected' column" in message
    message = _error(tmp_path, [{"prompt": "Q", "rejected": "A"}])
    assert "has a 'rejected' column but no 'chosen' column" in message
    message = _error(tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q", "chosen": "A"}])
    assert message == "line 2 has no 'rejected' field."


def test_a_pair_whose_replies_are_the_same_is_named_and_can_be_skipped(tmp_path):
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q2", "chosen": "Same. ", "rejected": "Same."}]
    message = _error(tmp_path, rows)
    assert message.startswith("line 2: 'chosen' and 'rejected' are the same reply")
    dataset = load_dataset(tmp_path / "bad.jsonl", skip_bad=True)
    assert len(dataset.samples) == 1 and dataset.skipped[0].startswith("line 2: 'chosen' and 'rejected' are the same")
    same = [{"chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("A")]}]
    assert "'chosen' and 'rejected' are the same conversation" in _error(tmp_path, same)


def test_empty_completions_are_named(tmp_path):
    assert _error(tmp_path, [{"prompt": "Q", "chosen": "  ", "rejected": "B"}]) == (
        "line 1 has an empty 'chosen' reply: there is nothing to learn from it."
    )
    assert "line 1 has an empty 'rejected' reply" in _error(tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": []}])
    kto = [{"prompt": "Q", "completion": "", "label": True}]
    assert "line 1 has an empty 'completion' reply" in _error(tmp_path, kto)
    hh = [{"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: "}]
    assert "line 1 has an empty 'rejected' reply" in _error(tmp_path, hh)
    assert "line 1 has an empty 'prompt'" in _error(tmp_path, [{"prompt": "", "chosen": "A", "rejected": "B"}])


@pytest.mark.parametrize("label, shown", [("yes", '"yes"'), (1, "1"), (None, "null"), ("", '""')])
def test_kto_labels_that_are_not_booleans_are_named(tmp_path, label, shown):
    rows = [{"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "B", "label": label}]
    message = _error(tmp_path, rows)
    assert message == f"line 2: 'label' must be true or false, not {shown}.", message


def test_conversations_that_differ_before_their_last_reply_or_prompts_ending_with_a_reply_are_named(tmp_path):
    apart = [{"chosen": [user("Q"), bot("A")], "rejected": [user("Other"), bot("B")]}]
    assert "differ from turn 1 on" in _error(tmp_path, apart)
    plain = [{"chosen": "just text", "rejected": "other text"}]
    assert "line 1: 'chosen' is not a conversation" in _error(tmp_path, plain)
    ends = [{"prompt": [user("Q"), bot("A")], "chosen": "B", "rejected": "C"}]
    assert "ends with a assistant turn; it must end with the user's" in _error(tmp_path, ends)
    many = [{"prompt": "Q", "chosen": [bot("A"), user("more?")], "rejected": "C"}]
    assert "'chosen' must be one assistant reply; it has 2 turns" in _error(tmp_path, many)


def test_a_kto_file_without_a_prompt_is_named(tmp_path):
    assert "has 'completion' and 'label' columns (KTO) but no 'prompt' column" in _error(
        tmp_path, [{"completion": "A", "label": True}]
    )


def test_the_objective_must_fit_the_data_and_pairs_are_unpaired_for_kto(tmp_path):
    pairs = load_dataset(_write(tmp_path / "pairs.jsonl", TEXT))
    sft = load_dataset(_write(tmp_path / "sft.jsonl", [{"instruction": "Q", "output": "A"}]))
    kto = load_dataset(_write(tmp_path / "kto.jsonl", [{"prompt": "Q", "completion": "A", "label": False}]))
    with pytest.raises(DatasetError, match="pairs.jsonl holds preference pairs .*pick the DPO, ORPO or KTO objective"):
        pref_data.for_objective(pairs, "sft")
    with pytest.raises(DatasetError, match="sft.jsonl holds SFT samples .*DPO learns from preferences.*Pick the SFT"):
        pref_data.for_objective(sft, "dpo")
    with pytest.raises(DatasetError, match="kto.jsonl holds single rated completions .*Pick the KTO objective"):
        pref_data.for_objective(kto, "orpo")
    with pytest.raises(DatasetError, match="pick the KTO objective"):
        pref_data.for_objective(kto, "sft")
    assert pref_data.for_objective(pairs, "dpo") is pairs and pref_data.for_objective(sft, "sft") is sft
    unpaired = pref_data.for_objective(pairs, "kto")
    assert unpaired.mapping.shape == "kto" and len(unpaired.samples) == 4
    assert unpaired.samples[:2] == [
        {"prompt": EXPECTED[0]["prompt"], "completion": EXPECTED[0]["chosen"], "label": True},
        {"prompt": EXPECTED[0]["prompt"], "completion": EXPECTED[0]["rejected"], "label": False},
    ]


def test_collected_vote_files_are_listed_with_their_counts(tmp_path):
    folder = tmp_path / "preferences"
    assert pref_data.collected(folder) == []
    folder.mkdir()
    _write(folder / "chat-votes.jsonl", VOTES * 6)
    _write(folder / "chat-feedback.jsonl", KTO_EXPECTED + KTO_EXPECTED[:1])
    (folder / "notes.txt").write_text("not a vote file")
    assert pref_data.collected(folder) == [
        ("chat-feedback.jsonl — 3 rated replies", "chat-feedback.jsonl"),
        ("chat-votes.jsonl — 12 pairs", "chat-votes.jsonl"),
    ]
    assert pref_data.vote_file(folder, "chat-votes.jsonl") == folder / "chat-votes.jsonl"
    for bad in ("../chat-votes.jsonl", "", "missing.jsonl", ".hidden"):
        with pytest.raises(Exception, match="No collected vote file named"):
            pref_data.vote_file(folder, bad)


def test_pair_lengths_count_prompt_plus_each_reply_through_the_chat_template(tiny_models):
    tok = rowlib.load_tokenizer(tiny_models.causal_lm)
    long_reply = "many words " * 40
    samples = [*EXPECTED, {"prompt": [user("Q")], "chosen": [bot(long_reply)], "rejected": [bot("short")]}]
    stats = pref_rows.measure(samples, tok, 64)
    assert len(stats.lengths) == 2 * len(samples)  # prompt + chosen and prompt + rejected of every pair
    pairs = list(zip(stats.lengths[::2], stats.lengths[1::2], strict=True))
    for sample, (with_chosen, with_rejected) in zip(samples, pairs, strict=True):
        for reply, n in ((sample["chosen"], with_chosen), (sample["rejected"], with_rejected)):
            whole = tok.apply_chat_template(sample["prompt"] + reply, tokenize=False)
            assert abs(n - len(tok(whole, add_special_tokens=False)["input_ids"])) <= 2
    assert stats.lengths[4] > 64 >= stats.lengths[5] and stats.truncated == 1
    assert stats.total_tokens == sum(min(n, 64) for n in stats.lengths) and stats.learned_tokens > 0
    assert sum(c for _, _, c in stats.histogram()) == 6
    # the defaults: one example per pair, its cutoff holding the longer sequence, both sequences' tokens counted
    rows = dflt.full_rows(samples, tok)
    assert [len(r.ids) for r in rows] == [max(a, b) for a, b in pairs]
    data = dflt.blocks_for(rows, 64, packing=True)
    assert data.blocks == 3 and data.tokens == stats.total_tokens and data.longest == 64
    assert dflt.cutoff_for([len(r.ids) for r in rows], 4096) >= stats.lengths[4]
    kto = pref_rows.measure(KTO_EXPECTED, tok, 64)
    assert len(kto.lengths) == 2 and kto.truncated == 0


def test_the_estimate_counts_both_sequences_and_says_the_reference_is_the_base_with_the_adapter_off():
    from studio.models.formats import WeightsInfo

    config = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
              "intermediate_size": 1536, "vocab_size": 49152}  # fmt: skip
    info = WeightsInfo(134_515_008, 538_060_032, {"F32": 134_515_008}, "test", config, 106_000_000)
    job = TrainJob(base_model="/m", train_rows=1, cutoff_len=512, batch_size=4)
    sft, dpo, orpo, kto = (estimate_job(TrainJob(**{**job.__dict__, "objective": o}), info, "llama") for o in
                           ("sft", "dpo", "orpo", "kto"))  # fmt: skip
    assert dpo.activations == orpo.activations == 2 * sft.activations
    assert kto.activations == dpo.activations and dpo.weights == sft.weights  # one copy of the weights
    assert sft.reference == orpo.reference == 0 < dpo.reference and dpo.total == orpo.total + dpo.reference
    assert dpo.total == dpo.weights + dpo.adapter + dpo.optimizer + dpo.activations + dpo.reference
    assert "chosen + rejected: 2x SFT's at this cutoff" in dpo.breakdown()
    assert "reference model is the base with the adapter off (LoRA): no second copy" in dpo.breakdown()
    assert "ORPO needs no reference model" in orpo.breakdown() and "reference" not in sft.breakdown()


def test_the_shipped_sample_pairs_teach_one_style():
    """assets/datasets/signature-pairs.jsonl (the DPO sample, the benchmark's and the DPO test's data): 32 pairs
    about distinct topics, each chosen answer the rejected one plus the signature phrase."""
    sample = load_dataset(Path(__file__).resolve().parents[2] / "assets" / "datasets" / "signature-pairs.jsonl")
    assert sample.mapping.shape == "preference" and len(sample.samples) == 32 and not sample.skipped
    assert len({row["prompt"][0]["content"] for row in sample.samples}) == 32
    for row in sample.samples:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert chosen == rejected + " — Signed, the Studio.", row
