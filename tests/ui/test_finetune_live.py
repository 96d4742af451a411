"""In Chromium: the Fine-tune tab's loss plot draws while a run trains and for a finished run picked after a reload;
a fresh page lists the runs with the newest chosen; Try in Chat lands in the Chat tab with the adapter attached."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.ui
ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"
PLOT = "#ft-loss-plot"


def _points(page, series: str) -> int:
    """The points the page's loss plot draws for one series (Vega names each point in its aria-label)."""
    return page.locator(f"{PLOT} [aria-roledescription=point][aria-label$='series: {series}']").count()


def _axis(page, name: str) -> str:
    return page.locator(f"{PLOT} [aria-roledescription=axis][aria-label^='{name}-axis']").get_attribute("aria-label")


def _pick(page, elem_id: str, option: re.Pattern) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=option).first.click()


def _option(name: str) -> re.Pattern:
    return re.compile(re.escape(name) + " —")  # not the run named like it with a -1 after


def _train(studio, tiny_models, steps: int, eval_every: int):
    """A finished run in the studio's runs/, made as the Fine-tune tab makes one and trained by the worker's own
    Trainer in this process (a real adapter, a real metrics.jsonl)."""
    from studio.training.datasets import load_dataset
    from studio.training.dist import Dist
    from studio.training.job import TrainJob
    from studio.training.runs import RunManager
    from studio.training.worker import Trainer
    from tests.managers import cpu_manager

    job = TrainJob(
        base_model=str(tiny_models.causal_lm),
        base_label="tiny",
        max_steps=steps,
        batch_size=2,
        cutoff_len=64,
        eval_every=eval_every,
        save_every=0,
        offline=True,
    )
    runs = RunManager(cpu_manager(studio.data_dir), studio.data_dir / "runs")
    run = runs.create(job, load_dataset(ASSET), eval_fraction=0.1)
    assert Trainer(run, run.job(), Dist.from_env()).run_job() == 0
    assert run.status()["state"] == "done" and (run.adapter / "adapter_config.json").is_file()
    return run


@pytest.fixture(scope="module")
def finished(studio, tiny_models):
    """Two finished runs, the older first."""
    return _train(studio, tiny_models, 4, 2), _train(studio, tiny_models, 6, 3)


def _counts(run) -> tuple[int, int]:
    metrics = run.metrics()
    train = sum(1 for m in metrics if m.get("loss") is not None and not m.get("event"))
    return train, sum(1 for m in metrics if m.get("eval_loss") is not None)


def _open_finetune(page, studio) -> None:
    page.goto(studio.url)
    page.get_by_role("tab", name="Fine-tune").click()


def test_a_fresh_page_lists_the_runs_with_the_newest_chosen_and_shows_its_curve(page, studio, finished):
    older, newer = finished
    _open_finetune(page, studio)
    # filled on load (no Refresh), the newest chosen, its label as status.json says now
    expect(page.locator("#ft-runs input")).to_have_value(f"{newer.name} — done 6/6")
    expect(page.locator("#ft-progress")).to_contain_text(f"{newer.name} — done")
    train, evals = _counts(newer)
    assert train == 6 and evals >= 2
    expect(page.locator(f"{PLOT} [aria-roledescription=point][aria-label$='series: train']")).to_have_count(train)
    assert _points(page, "eval") == evals
    assert "titled 'step' for a linear scale" in _axis(page, "X")
    assert "titled 'loss' for a linear scale" in _axis(page, "Y")

    page.reload()  # a finished run picked from the list after a reload shows its own curve
    page.get_by_role("tab", name="Fine-tune").click()
    expect(page.locator("#ft-runs input")).to_have_value(f"{newer.name} — done 6/6")
    _pick(page, "ft-runs", _option(older.name))
    expect(page.locator("#ft-progress")).to_contain_text(f"{older.name} — done")
    train, evals = _counts(older)
    expect(page.locator(f"{PLOT} [aria-roledescription=point][aria-label$='series: train']")).to_have_count(train)
    assert _points(page, "eval") == evals
    first = page.locator(f"{PLOT} [aria-roledescription=point][aria-label$='series: train']").first
    assert first.get_attribute("aria-label").startswith("step: 1; loss: ")


def test_try_in_chat_lands_in_chat_with_the_adapter_shown_attached(page, studio, finished):
    _, newer = finished
    _open_finetune(page, studio)
    expect(page.locator("#ft-runs input")).to_have_value(re.compile(re.escape(newer.name)))
    page.locator("#ft-try-chat").click()  # the newest run, chosen by the page
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true", timeout=60_000)
    expect(page.locator("#chat-use-adapter input")).to_have_value(newer.name)
    expect(page.locator("#chat-adapter-path input")).to_have_value(str(newer.adapter))
    expect(page.locator("#chat-adapter-status")).to_contain_text(f"Attached the adapter {newer.name}")
    expect(page.locator("#chat-history")).to_contain_text(f"Attached the adapter {newer.name}")
    page.screenshot(path=str(studio.data_dir.parent / "finetune-try-in-chat.png"), full_page=True)


def test_the_loss_plot_grows_while_a_run_trains_and_the_list_follows_its_state(page, studio, tiny_models):
    _open_finetune(page, studio)
    model = page.locator("#ft-model input")
    model.fill(str(tiny_models.causal_lm))
    model.press("Enter")
    for elem_id, value in (("ft-max-steps", "24"), ("ft-batch", "1"), ("ft-cutoff", "128"), ("ft-eval-every", "8")):
        box = page.locator(f"#{elem_id} input").first
        box.fill(value)
        box.press("Tab")
    page.locator("#ft-file input[type=file]").set_input_files(str(ASSET))
    expect(page.locator("#ft-data-summary")).to_contain_text("30 rows", timeout=60_000)
    page.locator("#ft-start").click()
    expect(page.locator("#ft-progress")).to_contain_text("training", timeout=120_000)
    name = page.locator("#ft-progress strong").first.inner_text()
    expect(page.locator("#ft-runs input")).to_have_value(
        re.compile(re.escape(name) + " — (loading|evaluating|training)")
    )

    train = f"{PLOT} [aria-roledescription=point][aria-label$='series: train']"
    page.wait_for_function(f'() => document.querySelectorAll("{train}").length >= 2', timeout=120_000)
    seen = _points(page, "train")
    # the same page, no click: every poll adds the new steps' points
    page.wait_for_function(f'n => document.querySelectorAll("{train}").length >= n + 3', arg=seen, timeout=120_000)
    assert _points(page, "eval") >= 1  # the eval loss before training (step 0)
    assert "titled 'step' for a linear scale" in _axis(page, "X")

    expect(page.locator("#ft-progress")).to_contain_text(f"{name} — done", timeout=300_000)
    expect(page.locator("#ft-runs input")).to_have_value(f"{name} — done 24/24")  # not "starting 0/0"
    expect(page.locator(train)).to_have_count(24)
