"""Votes from the Chat tab as preference data: the shared contract's rows, counts, fsync, locks and bad input."""

from __future__ import annotations

import json
import os
import threading

import pytest

from studio.errors import InputError
from studio.training import votes
from studio.training.votes import FEEDBACK_FILE, PAIRS_FILE, VoteBook, VoteMeta

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
]


def _meta(source="side-by-side", adapter="poems"):
    return VoteMeta(model="tiny-lm", adapter=adapter, source=source)


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_side_by_side_vote_is_one_pair_line_in_the_contract_format(tmp_path):
    book = VoteBook(tmp_path / "preferences")
    saved = book.add_pair(CHAT, "4", "five", _meta())
    (row,) = _lines(tmp_path / "preferences" / PAIRS_FILE)
    assert row["prompt"] == CHAT  # the system prompt and the earlier turns included, the last question last
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]
    assert row["rejected"] == [{"role": "assistant", "content": "five"}]
    assert set(row) == {"prompt", "chosen", "rejected", "meta"}
    assert row["meta"]["model"] == "tiny-lm" and row["meta"]["adapter"] == "poems"
    assert row["meta"]["source"] == "side-by-side" and row["meta"]["time"].endswith("Z")
    assert saved.rows == 1 and saved.message() == "Saved: chat-votes.jsonl now has 1 pair."
    saved = book.add_pair(CHAT, "four", "5", _meta(source="two-samples", adapter=None))
    assert saved.message() == "Saved: chat-votes.jsonl now has 2 pairs."
    assert _lines(saved.path)[1]["meta"]["adapter"] is None


def test_thumbs_are_kto_rows_and_both_bad_is_two_bad_rows(tmp_path):
    book = VoteBook(tmp_path)
    book.add_feedback(CHAT, "4", True, _meta(source="thumbs"))
    saved = book.add_feedback(CHAT, "22", False, _meta(source="thumbs"))
    assert saved.message() == "Saved: chat-feedback.jsonl now has 2 rows (1 good, 1 bad)."
    saved = book.add_both_bad(CHAT, "five", "22", _meta())
    rows = _lines(tmp_path / FEEDBACK_FILE)
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("4", True),
        ("22", False),
        ("five", False),
        ("22", False),
    ]
    assert all(set(r) == {"prompt", "completion", "label", "meta"} and r["prompt"] == CHAT for r in rows)
    assert (saved.rows, saved.good, saved.bad) == (4, 1, 3)
    assert not (tmp_path / PAIRS_FILE).exists()  # "both bad" is no pair
    assert book.count(PAIRS_FILE).rows == 0 and book.count(FEEDBACK_FILE).rows == 4


def test_the_line_is_on_disk_when_fsync_returns(tmp_path, monkeypatch):
    seen = []
    real = os.fsync

    def fsync(fd):
        real(fd)
        seen.append((tmp_path / PAIRS_FILE).read_text(encoding="utf-8"))  # what another reader finds at that point

    monkeypatch.setattr(votes.os, "fsync", fsync)
    VoteBook(tmp_path).add_pair(CHAT, "4", "five", _meta())
    assert len(seen) == 1 and json.loads(seen[0])["chosen"][0]["content"] == "4" and seen[0].endswith("\n")


def test_votes_at_once_never_mix_their_lines(tmp_path):
    books = [VoteBook(tmp_path), VoteBook(tmp_path)]  # two books (two pages, or two processes) on one folder
    reply = "x" * 20_000  # long lines: unlocked appends of this size from several threads can interleave

    def vote(n):
        books[n % 2].add_pair(CHAT, f"{n}{reply}", "no", _meta())

    threads = [threading.Thread(target=vote, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _lines(tmp_path / PAIRS_FILE)
    assert sorted(int(r["chosen"][0]["content"].removesuffix(reply)) for r in rows) == list(range(24))
    assert books[0].count(PAIRS_FILE).rows == 24


def test_a_line_cut_by_a_crash_does_not_swallow_the_next_vote(tmp_path):
    (tmp_path / PAIRS_FILE).write_text('{"prompt": [{"role": "us', encoding="utf-8")
    saved = VoteBook(tmp_path).add_pair(CHAT, "4", "five", _meta())
    lines = (tmp_path / PAIRS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["chosen"][0]["content"] == "4"
    assert saved.rows == 2


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected", "words"),
    [
        ([], "4", "5", "Nothing to vote on yet: ask a question"),
        (None, "4", "5", "Nothing to vote on yet"),
        ([{"role": "system", "content": "Be brief."}], "4", "5", "no question before this reply"),
        (CHAT[:3], "4", "5", "no question before this reply"),  # ends with a reply, not a question
        (CHAT, "", "5", "The better reply is empty"),
        (CHAT, "4", "  \n", "The worse reply is empty"),
        (CHAT, "4", "4", "The two replies are the same"),
        ([{"role": "tool", "content": "x"}], "4", "5", "Message 1 of the conversation cannot be kept: its role"),
        ([{"role": "user", "content": ["x"]}], "4", "5", "Message 1 of the conversation cannot be kept: its content"),
    ],
)
def test_bad_votes_are_refused_and_write_nothing(tmp_path, prompt, chosen, rejected, words):
    with pytest.raises(InputError, match=words):
        VoteBook(tmp_path).add_pair(prompt, chosen, rejected, _meta())
    assert not (tmp_path / PAIRS_FILE).exists()


def test_an_empty_thumbed_reply_and_an_unknown_source_are_refused(tmp_path):
    with pytest.raises(InputError, match="The reply is empty"):
        VoteBook(tmp_path).add_feedback(CHAT, " ", False, _meta(source="thumbs"))
    with pytest.raises(InputError, match="source must be one of side-by-side, thumbs, two-samples"):
        VoteMeta(model="m", adapter=None, source="arena")
    assert not (tmp_path / FEEDBACK_FILE).exists()
