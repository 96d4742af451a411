"""In Chromium: the Fine-tune tab's objectives and preference data — DPO's settings, a dropped pair file previewed
with chosen and rejected side by side, and a vote file collected in the data dir listed with its count and used."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import Studio, start_studio, stop_studio

pytestmark = pytest.mark.ui


def _rows(n: int, signature: str) -> list[dict]:
    return [
        {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}. {signature}", "rejected": f"Maybe {i}."}
        for i in range(n)
    ]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def voted(tmp_path_factory) -> Iterator[Studio]:
    """A studio whose data dir already holds 12 side-by-side votes, written before the page loads."""
    data = tmp_path_factory.mktemp("studio-pref-data")
    votes = [{**r, "meta": {"model": "tiny", "source": "side-by-side"}} for r in _rows(12, "(voted)")]
    _jsonl(data / "preferences" / "chat-votes.jsonl", votes)
    s = start_studio(data, "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


def test_objective_settings_side_by_side_preview_and_collected_votes(page, voted, tmp_path, tiny_models):
    page.goto(voted.url)
    page.get_by_role("tab", name="Fine-tune").click()
    model = page.locator("#ft-model input")
    model.fill(str(tiny_models.causal_lm))
    model.press("Enter")
    # the objective's own settings show only where they apply
    beta, loss = page.locator("#ft-beta"), page.locator("#ft-loss-type")
    expect(beta).to_be_hidden()
    expect(loss).to_be_hidden()
    page.locator("#ft-objective").get_by_text("ORPO", exact=True).click()
    expect(beta).to_be_visible(timeout=30_000)
    expect(beta).to_contain_text("λ")
    expect(loss).to_be_hidden()
    page.locator("#ft-objective").get_by_text("DPO", exact=True).click()
    expect(loss).to_be_visible(timeout=30_000)
    expect(beta).to_contain_text("β")

    # a dropped pair file: chosen and rejected side by side
    dropped = _jsonl(tmp_path / "pairs.jsonl", _rows(5, "— signed"))
    page.locator("#ft-file input[type=file]").set_input_files(str(dropped))
    summary = page.locator("#ft-data-summary")
    expect(summary).to_contain_text("5 rows, preference pairs", timeout=90_000)
    expect(summary).to_contain_text("prompt + chosen and prompt + rejected")
    expect(summary).not_to_contain_text("⚠")
    chosen = page.locator("#ft-preview td.ft-chosen").first
    rejected = page.locator("#ft-preview td.ft-rejected").first
    expect(chosen).to_contain_text("It is 0. — signed")
    expect(rejected).to_contain_text("Maybe 0.")
    left, right = chosen.bounding_box(), rejected.bounding_box()
    assert left["x"] + left["width"] <= right["x"] + 1 and abs(left["y"] - right["y"]) < 2, (left, right)
    expect(page.locator("#ft-histogram svg")).to_be_visible()
    # SFT on pairs says which objective to pick
    page.locator("#ft-objective").get_by_text("SFT", exact=True).click()
    expect(summary).to_contain_text("pick the DPO, ORPO or KTO objective", timeout=60_000)
    page.locator("#ft-objective").get_by_text("DPO", exact=True).click()
    expect(summary).not_to_contain_text("⚠", timeout=60_000)

    # the votes collected in the data dir, listed with their count, and picked as the dataset
    page.locator("#ft-votes input").click()
    option = page.locator("ul[role=listbox] li", has_text="chat-votes.jsonl — 12 pairs")
    expect(option).to_be_visible(timeout=30_000)
    option.first.click()
    expect(summary).to_contain_text("chat-votes.jsonl", timeout=90_000)
    expect(summary).to_contain_text("12 rows, preference pairs")
    expect(page.locator("#ft-preview td.ft-chosen").first).to_contain_text("It is 0. (voted)")
    expect(page.locator("#ft-derived")).to_contain_text("Chosen from the data", timeout=60_000)
    page.screenshot(path=str(voted.data_dir.parent / "finetune-preference.png"), full_page=True)
