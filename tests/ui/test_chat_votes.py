"""In Chromium: votes in the Chat tab become preference data in the studio's data dir — Left is better on a
side-by-side answer (adapter vs base, and two samples of one model), 👎 on a single reply — each saved before the
page says so, and a vote with nothing to vote on is refused in the page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.ui.test_chat import _bots, _make_adapter, _open_sampling, _pick, _send, _set_model, _set_value, _users

pytestmark = pytest.mark.ui


def _rows(studio, name: str) -> list[dict]:
    path = studio.data_dir / "preferences" / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _last_export(studio) -> list[dict]:
    found = sorted((studio.data_dir / "outputs" / "chats").glob("chat-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text(encoding="utf-8"))["messages"]


def _export(page, studio) -> list[dict]:
    before = set((studio.data_dir / "outputs" / "chats").glob("chat-*.json"))
    page.locator("#chat-export").click()
    expect(page.locator("#chat-export-files")).to_be_visible(timeout=60_000)
    for _ in range(100):
        if set((studio.data_dir / "outputs" / "chats").glob("chat-*.json")) - before:
            break
        page.wait_for_timeout(200)
    return _last_export(studio)


def test_left_is_better_on_a_side_by_side_answer_saves_the_pair(page, studio, tiny_models):
    folder = _make_adapter(tiny_models.causal_lm, studio.data_dir / "runs" / "votes" / "adapter")
    page.goto(studio.url)
    _pick(page, "chat-adapter-path", str(folder))
    expect(page.locator("#chat-adapter-path input")).to_have_value(str(folder))
    _set_model(page, str(tiny_models.causal_lm))
    page.locator("#chat-attach").click()
    expect(page.locator("#chat-adapter-status")).to_contain_text("Attached votes", timeout=60_000)
    _pick(page, "chat-use-adapter", "votes")
    expect(page.locator("#chat-use-adapter input")).to_have_value("votes")
    expect(page.locator("#chat-vote-left")).to_be_hidden()  # the side-by-side votes come with the side pane
    page.locator("#chat-side-by-side input").check()
    expect(page.locator("#chat-side")).to_be_visible()

    # nothing asked yet: refused in the page, nothing written
    page.locator("#chat-vote-left").click()
    expect(page.locator("#chat-vote-status")).to_contain_text("Not saved: Nothing to vote on yet", timeout=30_000)
    assert _rows(studio, "chat-votes.jsonl") == []

    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    page.locator("#chat-system textarea").fill("Answer in one line.")
    _send(page, "hello")
    stats = page.locator("#chat-stats")
    expect(stats).to_contain_text(re.compile(r"With adapter votes: .*tok/s.* · without: .*tok/s"), timeout=60_000)
    for pane in ("#chat-history", "#chat-side"):
        expect(_users(page, pane)).to_have_text(["hello"])
        expect(_bots(page, pane)).to_have_count(1)
    before = len(_rows(studio, "chat-votes.jsonl"))
    page.locator("#chat-vote-left").click()
    expect(page.locator("#chat-vote-status")).to_have_text(
        f"Saved: chat-votes.jsonl now has {before + 1} pair{'s' if before else ''}.", timeout=30_000
    )
    rows = _rows(studio, "chat-votes.jsonl")
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["prompt"] == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "hello"},
    ]
    left = _export(page, studio)[-1]  # the adapter's reply, as the left pane holds it
    assert left["role"] == "assistant" and row["chosen"] == [{"role": "assistant", "content": left["content"]}]
    assert row["rejected"][0]["role"] == "assistant" and row["rejected"][0]["content"] != left["content"]
    assert row["meta"]["source"] == "side-by-side" and row["meta"]["adapter"] == "votes"
    assert row["meta"]["model"] == Path(tiny_models.causal_lm).name
    page.screenshot(path=str(studio.data_dir.parent / "chat-votes.png"), full_page=True)


def test_thumbs_down_on_a_reply_and_two_samples_of_one_model(page, studio, tiny_models):
    page.goto(studio.url)
    _set_model(page, str(tiny_models.causal_lm))
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    _set_value(page, "chat-temperature", "1")
    _set_value(page, "chat-top-k", "5")
    _set_value(page, "chat-seed", "3")
    _send(page, "tell me something")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_bots(page)).to_have_count(1)
    expect(page.locator("#chat-side")).to_be_hidden()

    before = _rows(studio, "chat-feedback.jsonl")
    _bots(page).first.hover()
    page.locator("#chat-history button[aria-label=Dislike]").first.click()
    bad = sum(1 for r in before if r["label"] is False) + 1
    expect(page.locator("#chat-vote-status")).to_have_text(
        f"Saved: chat-feedback.jsonl now has {len(before) + 1} rows ({len(before) + 1 - bad} good, {bad} bad).",
        timeout=30_000,
    )
    row = _rows(studio, "chat-feedback.jsonl")[-1]
    reply = _export(page, studio)[-1]
    assert row["prompt"] == [{"role": "user", "content": "tell me something"}]
    assert row["completion"] == [{"role": "assistant", "content": reply["content"]}]
    assert row["label"] is False and row["meta"]["source"] == "thumbs" and row["meta"]["adapter"] is None

    # no adapter, side by side: the same question answered twice (the second with the next seed); Right is better
    page.locator("#chat-side-by-side input").check()
    expect(page.locator("#chat-side")).to_be_visible()
    _send(page, "and another thing")
    expect(page.locator("#chat-stats")).to_contain_text(
        re.compile(r"Left: .*seed 3.* · right, a second sample: .*seed 4"), timeout=60_000
    )
    expect(_bots(page, "#chat-side")).to_have_count(2)
    before = len(_rows(studio, "chat-votes.jsonl"))
    page.locator("#chat-vote-right").click()
    expect(page.locator("#chat-vote-status")).to_contain_text(
        f"Saved: chat-votes.jsonl now has {before + 1} pair", timeout=30_000
    )
    pair = _rows(studio, "chat-votes.jsonl")[-1]
    left = _export(page, studio)
    assert pair["prompt"] == [*left[:-1]] and pair["prompt"][-1] == {"role": "user", "content": "and another thing"}
    assert pair["rejected"] == [{"role": "assistant", "content": left[-1]["content"]}]  # the left pane's reply lost
    assert pair["chosen"][0]["content"] != left[-1]["content"]
    assert pair["meta"]["source"] == "two-samples"
