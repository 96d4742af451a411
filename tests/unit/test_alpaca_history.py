"""LLaMA-Factory's alpaca `history` ([[user, assistant], ...]) becomes the conversation's earlier turns; a malformed
history is named by its row and turn."""

from __future__ import annotations

import csv
import json

import pytest

from studio.training import rows as rowlib
from studio.training.datasets import DatasetError, load_dataset

ROW = {
    "instruction": "And its capital?",
    "input": "",
    "output": "Paris.",
    "system": "Answer briefly.",
    "history": [["Which country has the Eiffel Tower?", "France."], ["Is it in Europe?", "Yes."]],
}
EXPECTED = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which country has the Eiffel Tower?"},
    {"role": "assistant", "content": "France."},
    {"role": "user", "content": "Is it in Europe?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "And its capital?"},
    {"role": "assistant", "content": "Paris."},
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_history_becomes_earlier_turns_in_jsonl_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = {"instruction": "Say hi.", "output": "Hi!", "system": "", "input": "", "history": []}
    records = [ROW, plain]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:  # a CSV cell holds the history as JSON
        w = csv.DictWriter(f, fieldnames=list(ROW))
        w.writeheader()
        w.writerows([{**r, "history": json.dumps(r["history"])} for r in records])
    for path in (_jsonl(tmp_path / "d.jsonl", records), tmp_path / "d.parquet", tmp_path / "d.csv"):
        ds = load_dataset(path)
        assert ds.mapping.shape == "alpaca" and ds.mapping.history == "history", path.name
        assert ds.samples[0]["messages"] == EXPECTED, path.name
        assert ds.samples[1]["messages"] == [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!"},
        ]


def test_history_turns_reach_the_tokens_and_their_answers_are_learned(tmp_path, tiny_models):
    tok = rowlib.load_tokenizer(tiny_models.causal_lm)
    sample = load_dataset(_jsonl(tmp_path / "d.jsonl", [ROW])).samples[0]
    text = rowlib.render(sample, tok)
    assert text.index("Eiffel Tower") < text.index("Is it in Europe?") < text.index("And its capital?")
    row = rowlib.tokenize([sample], tok, 512)[0]
    learned = tok.decode([t for t, lab in zip(row.ids, row.labels, strict=True) if lab != rowlib.IGNORE])
    assert "France." in learned and "Paris." in learned and "Eiffel" not in learned


@pytest.mark.parametrize(
    ("history", "needle"),
    [
        ("not json", "line 2: 'history' is text, not a list of [user, assistant] pairs."),
        ({"user": "hi"}, "line 2: 'history' must be a list of [user, assistant] pairs, not dict."),
        ([["only the question"]], "line 2: 'history' turn 1 must be a [user, assistant] pair of texts, not "
                                  '["only the question"].'),
        ([["q", "a"], ["q", 3]], "line 2: 'history' turn 2 must be a [user, assistant] pair of texts, not [\"q\", 3]."),
    ],
)  # fmt: skip
def test_a_bad_history_names_the_row_and_the_turn(tmp_path, history, needle):
    path = _jsonl(tmp_path / "bad.jsonl", [ROW, {**ROW, "history": history}])
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert info.value.message == needle and "LLaMA-Factory" in info.value.tip
    assert len(load_dataset(path, skip_bad=True).samples) == 1  # 'Skip bad rows' gets past it
