"""In Chromium: export a fine-tune run (Fine-tune tab) and a model folder (Models tab) to GGUF with an Ollama
Modelfile, then *Try the export in Chat*, which answers through llama.cpp; bad inputs get one line in the page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studio.export import parse_modelfile
from tests.ui.conftest import gradio_call

pytestmark = pytest.mark.ui
ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"


def _pick(page, elem_id: str, option: str | re.Pattern) -> None:
    """Choose an option of a dropdown from its list, as a user does."""
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=option).first.click()


def _run_option(run) -> re.Pattern:
    return re.compile(re.escape(run.name) + " —")  # not the run named like it with a -1 after


def _page_loaded(page) -> None:
    """The page load has listed the runs and chosen the newest: a pick made before it arrives would be undone."""
    expect(page.locator("#ft-runs input")).not_to_have_value("", timeout=30_000)
    expect(page.locator("#ft-progress")).not_to_be_empty(timeout=30_000)


def _type(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(value)
    box.press("Enter")


def _run(studio, tiny_models, trained: bool):
    """A run folder in the studio's runs/, made as the Fine-tune tab makes one; trained for two steps (in this
    process, by the worker's own Trainer) or left with no adapter yet."""
    from studio.training.datasets import load_dataset
    from studio.training.dist import Dist
    from studio.training.job import TrainJob
    from studio.training.runs import RunManager
    from studio.training.worker import Trainer
    from tests.managers import cpu_manager

    job = TrainJob(
        base_model=str(tiny_models.causal_lm),
        base_label="tiny",
        max_steps=2,
        batch_size=2,
        cutoff_len=64,
        eval_every=0,
        save_every=0,
        offline=True,
    )
    runs = RunManager(cpu_manager(studio.data_dir), studio.data_dir / "runs")
    run = runs.create(job, load_dataset(ASSET), eval_fraction=0.1)
    if trained:
        assert Trainer(run, run.job(), Dist.from_env()).run_job() == 0
        assert (run.adapter / "adapter_model.safetensors").is_file()
    return run


@pytest.fixture(scope="module")
def runs(studio, tiny_models):
    return _run(studio, tiny_models, trained=True), _run(studio, tiny_models, trained=False)


def test_a_run_exports_to_gguf_with_a_modelfile_and_answers_in_chat_through_llama_cpp(page, studio, runs):
    trained, _ = runs
    page.goto(studio.url)
    page.get_by_role("tab", name="Fine-tune").click()
    _page_loaded(page)
    page.locator("#ft-refresh").click()
    _pick(page, "ft-runs", _run_option(trained))
    expect(page.locator("#ft-progress")).to_contain_text(trained.name)
    _pick(page, "ft-export-format", "GGUF F16")
    page.locator("#ft-export").click()
    result = page.locator("#ft-export-result")
    expect(result).to_contain_text("ollama create", timeout=120_000)
    gguf = trained.path / "export" / f"{trained.name}-F16.gguf"
    modelfile = gguf.with_suffix(".Modelfile")
    assert gguf.is_file() and modelfile.is_file()  # on disk, under the run, before the page says so
    expect(result).to_contain_text(str(gguf))
    expect(result).to_contain_text(re.compile(r"\d+(\.\d+)? [KM]B from \d+(\.\d+)? [KM]B"))  # sizes before/after
    assert parse_modelfile(modelfile.read_text()).model == f"./{gguf.name}"
    assert not list(gguf.parent.glob(".*partial"))

    # Try the export in Chat: the Chat tab opens on the export, asks a question from the run's data, and llama.cpp
    # answers it
    question = json.loads(trained.eval_file.read_text().splitlines()[0])["messages"][0]["content"]
    page.locator("#ft-export-try").click()
    expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true", timeout=30_000)
    expect(page.locator("#chat-model input")).to_have_value(re.compile(re.escape(gguf.name)))
    expect(page.locator("#chat-plan")).to_contain_text("llama.cpp")
    expect(page.locator("#chat-history [data-testid=user]").first).to_contain_text(question[:30], timeout=30_000)
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=90_000)
    expect(page.locator("#chat-history [data-testid=bot]")).to_have_count(1)

    # the export stays in the Chat picker after a reload
    page.reload()
    page.locator("#chat-model input").click()
    expect(page.locator("ul[role=listbox] li", has_text=gguf.name).first).to_be_visible()


def test_the_models_tab_exports_a_model_folder_and_a_script_exports_a_run_by_name(page, studio, runs, tiny_models):
    page.goto(studio.url)
    page.get_by_role("tab", name="Models").click()
    page.locator("#export-accordion").get_by_text("Export a chat model").click()
    _type(page, "models-export-source", str(tiny_models.causal_lm))
    _pick(page, "models-export-format", "GGUF F16")
    page.locator("#models-export").click()
    expect(page.locator("#models-export-result")).to_contain_text("ollama create", timeout=120_000)
    out = studio.data_dir / "outputs" / "exports" / f"{tiny_models.causal_lm.name}-F16.gguf"
    assert out.is_file() and out.with_suffix(".Modelfile").is_file()
    expect(page.locator("#models-export-try")).to_be_visible()

    # the Fine-tune tab's export names its run, so a script can export any run (here its adapter as GGUF LoRA)
    trained, _ = runs
    event, data = gradio_call(studio, "ft_export", [trained.name, "lora"], timeout=180)
    assert event == "complete", data
    lora = trained.path / "export" / f"{trained.name}-LoRA.gguf"
    assert lora.is_file() and str(lora) in data and "--lora" in data


def test_bad_exports_are_one_line_in_the_page_and_the_studio_keeps_serving(page, studio, runs, tmp_path):
    _, untrained = runs
    page.goto(studio.url)
    page.get_by_role("tab", name="Fine-tune").click()
    _page_loaded(page)  # the newest run (the untrained one) is chosen on load
    expect(page.locator("#ft-runs input")).to_have_value(_run_option(untrained))
    page.locator("#ft-export").click()
    expect(page.locator("#ft-export-result")).to_contain_text(f"The run {untrained.name} has no adapter yet")
    assert not (untrained.path / "export").exists()

    odd = tmp_path / "odd-model"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    page.get_by_role("tab", name="Models").click()
    page.locator("#export-accordion").get_by_text("Export a chat model").click()
    _type(page, "models-export-source", str(odd))
    page.locator("#models-export").click()
    expect(page.locator("#models-export-result")).to_contain_text("Mamba", timeout=60_000)
    page.locator("#models-export-stop").click()  # nothing runs: said so, nothing breaks
    expect(page.locator("#models-export-result")).to_contain_text("No export is running")
    expect(page.get_by_role("tab", name="Chat")).to_be_visible()  # still serving
