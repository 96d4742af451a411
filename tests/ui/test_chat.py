"""In Chromium: choose a model, send a message, watch the reply stream in, stop a long reply, recover from errors,\nregenerate and clear, and use LoRA adapters (offered after a reload, side by side)."""

from __future__ import annotations

import re
import shutil
import struct
import warnings
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import assert_error_badge_beside_text

pytestmark = pytest.mark.ui


def _set_model(page, folder: str) -> None:
    box = page.locator("#chat-model input")
    box.fill(folder)
    box.press("Enter")
    # picking a model sets its sampling defaults: settle them before a test sets its own
    expect(page.locator("#chat-defaults")).to_contain_text(Path(folder).name)


def _open_sampling(page) -> None:
    page.get_by_text("Sampling", exact=True).first.click()
    expect(page.locator("#chat-temperature input[type=range]")).to_be_visible()


def _set_value(page, elem_id: str, value: str) -> None:
    """Type a number into a slider's or a number box's field until the page's state holds it. A field typed into
    while its accordion is still opening can be re-drawn with the old value (seen on a loaded CI machine)."""
    field = page.locator(f"#{elem_id} input[type=number]")
    state = page.locator(f"#{elem_id} input[type=range]")
    check = state if state.count() else field
    for _ in range(4):
        field.fill(value)
        field.press("Tab")
        try:
            expect(check).to_have_value(value, timeout=3_000)
            return
        except AssertionError:
            page.wait_for_timeout(300)
    expect(check).to_have_value(value)


@pytest.fixture(scope="module")
def long_lm(tmp_path_factory):
    """A tiny LM with a long context, so a reply can run long enough to be stopped by hand."""
    from tests.ui.conftest import endless_lm

    return endless_lm(tmp_path_factory.mktemp("long") / "long-lm")


def _bots(page, pane: str = "#chat-history"):
    return page.locator(f"{pane} [data-testid=bot]")


def _users(page, pane: str = "#chat-history"):
    return page.locator(f"{pane} [data-testid=user]")


def _send(page, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()


def _pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a dropdown from its list, as a user does."""
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=option).first.click()


def test_chat_streams_and_stops(page, studio, tiny_models, long_lm):
    page.goto(studio.url)
    expect(page.get_by_role("tab", name="Chat")).to_be_visible()
    _set_model(page, str(tiny_models.causal_lm))
    expect(page.locator("#chat-plan")).to_contain_text("Loading")
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    _send(page, "hello there")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(page.locator("#chat-history")).to_contain_text("hello there")
    expect(_bots(page)).to_have_count(1)
    expect(_bots(page).first).to_have_text(re.compile(r"\S"))

    # a long reply streams in: the bot bubble grows while it generates; Stop keeps what was written
    _set_model(page, str(long_lm))
    # greedy decoding makes this random LM repeat the prompt's last token, a newline, which shows nothing; sampling
    # from its 5 likeliest tokens with seed 0 writes visible text and no EOS for (at least) 12,000 tokens
    _set_value(page, "chat-temperature", "1")
    _set_value(page, "chat-top-k", "5")
    _set_value(page, "chat-seed", "0")
    _set_value(page, "chat-max-new", "30000")
    _set_value(page, "chat-context", "32768")
    _send(page, "tell me a long story")
    expect(_bots(page)).to_have_count(2, timeout=30_000)
    reply = _bots(page).nth(1)
    expect(reply).to_have_text(re.compile(r"^\s*[^\s⏳]"), timeout=30_000)  # tokens have started (not the load's line)
    first = reply.inner_text()
    expect(reply).not_to_have_text(first)
    second = reply.inner_text()
    assert len(second) > len(first), (first, second)
    expect(page.locator("#chat-stats")).not_to_contain_text("tok/s")  # still generating
    page.locator("#chat-stop").click()
    expect(page.locator("#chat-stats")).to_contain_text("stopped", timeout=30_000)
    expect(page.locator("#chat-history")).to_contain_text("tell me a long story")
    expect(_bots(page)).to_have_count(2)
    assert len(reply.inner_text()) >= len(second)  # the partial reply stays

    # Clear while a reply streams: the reply ends, the chat empties and stays empty, and the GPU is free again
    _send(page, "another long story")
    expect(_bots(page)).to_have_count(3, timeout=30_000)
    expect(_bots(page).nth(2)).to_have_text(re.compile(r"\S"), timeout=30_000)
    # a question sent with Enter meanwhile (Send is disabled while a reply runs) is refused with a warning
    page.locator("#chat-input textarea").fill("and a question asked meanwhile")
    page.locator("#chat-input textarea").press("Enter")
    page.wait_for_timeout(500)
    page.locator("#chat-clear").click()
    expect(_bots(page)).to_have_count(0)
    page.wait_for_timeout(3000)  # long enough for the stopped reply's messages, and for the waiting question's turn
    assert _users(page).count() == 0, page.locator("#chat-history").inner_text()  # what came back, if it did
    expect(_bots(page)).to_have_count(0)
    _set_value(page, "chat-max-new", "8")
    _send(page, "short one")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_bots(page)).to_have_count(1)
    page.screenshot(path=str(studio.data_dir.parent / "chat-tab.png"), full_page=True)


@pytest.fixture(scope="module")
def broken_lm(tiny_models, tmp_path_factory):
    """The tiny LM with its weights cut short after the header: its plan and estimate work, loading fails."""
    folder = tmp_path_factory.mktemp("broken") / "broken-lm"
    shutil.copytree(tiny_models.causal_lm, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: 8 + struct.unpack("<Q", data[:8])[0] + 64])
    return folder


def _same_text(text: str) -> re.Pattern:
    """The text again, wherever the page puts white space in it. The pattern runs as a JavaScript regex in the page,
    whose \\s lacks the separators U+001C..U+001F and U+0085 that Python counts as space (the random LM writes them)."""
    space = r"[\s\x1c-\x1f\x85]*"
    return re.compile("^" + space + space.join(re.escape(ch) for ch in text if not ch.isspace()) + space + "$")


def test_the_conversation_is_kept_through_bad_input_and_failed_loads(page, studio, tiny_models, broken_lm):
    page.goto(studio.url)
    _set_model(page, str(tiny_models.causal_lm))
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    _send(page, "first question")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_bots(page)).to_have_count(1)
    # the random LM's reply may hold control characters, around which the bubble's line breaks can move on a redraw
    first_reply = _same_text(_bots(page).first.inner_text())

    _send(page, "   ")  # an empty message is refused; the exchange before it stays
    expect(page.get_by_text("the message is empty").first).to_be_visible()
    expect(_users(page)).to_have_text(["first question"])
    expect(_bots(page)).to_have_text([first_reply])

    # a model that fails to load after "Thinking…": the question stays, no empty reply joins the conversation
    _set_model(page, str(broken_lm))
    _send(page, "second question")
    expect(page.locator("#chat-stats")).to_contain_text("No reply: ", timeout=60_000)
    expect(page.locator("#chat-stats")).to_contain_text("broken-lm: not a loadable causal language model")
    expect(page.get_by_text("Pick a folder with config.json and weights").first).to_be_visible()  # the tip
    expect(_users(page)).to_have_text(["first question", "second question"])
    expect(_bots(page)).to_have_text([first_reply])
    expect(page.locator("#chat-history [data-testid=status-tracker] .error")).to_have_count(0)  # no overlay on it
    assert_error_badge_beside_text(page, "#chat-stats")  # the failure's badge does not hide the message

    # Regenerate answers the question that failed, then replaces that answer; Clear empties the chat
    _set_model(page, str(tiny_models.causal_lm))
    page.locator("#chat-regenerate").click()
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_bots(page)).to_have_count(2)
    before = page.locator("#chat-stats").inner_text()
    page.locator("#chat-regenerate").click()
    expect(page.locator("#chat-stats")).not_to_have_text(before)  # a new reply (another random seed)
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_users(page)).to_have_text(["first question", "second question"])
    expect(_bots(page)).to_have_count(2)
    expect(_bots(page).first).to_have_text(first_reply)
    page.locator("#chat-clear").click()
    expect(_users(page)).to_have_count(0)
    expect(_bots(page)).to_have_count(0)
    expect(page.locator("#chat-stats")).not_to_contain_text("tok/s")


def _make_adapter(base, folder):
    """A real PEFT LoRA adapter for `base` (random, untrained LoRA weights: its answers differ from the base's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not this test's business
        warnings.simplefilter("ignore", FutureWarning)
        get_peft_model(model, config).save_pretrained(folder)
    return folder


def test_adapters_made_later_are_offered_and_stay_attached_across_reloads(page, studio, tiny_models):
    page.goto(studio.url)
    expect(page.locator("#chat-adapter-path")).to_be_visible()
    # trained after the studio started (as a Fine-tune run writes it, not through "Try in Chat")
    folder = _make_adapter(tiny_models.causal_lm, studio.data_dir / "runs" / "poems" / "adapter")
    page.reload()
    _pick(page, "chat-adapter-path", str(folder))
    expect(page.locator("#chat-adapter-path input")).to_have_value(str(folder))
    _set_model(page, str(tiny_models.causal_lm))
    page.locator("#chat-attach").click()
    expect(page.locator("#chat-adapter-status")).to_contain_text("Attached poems", timeout=60_000)

    page.reload()  # the adapter is still attached on the server: the page offers it again
    _set_model(page, str(tiny_models.causal_lm))
    _pick(page, "chat-use-adapter", "poems")
    expect(page.locator("#chat-use-adapter input")).to_have_value("poems")

    # side by side: both panes answer, and both replies' stats stay on the page
    page.locator("#chat-side-by-side input").check()
    expect(page.locator("#chat-side")).to_be_visible()
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    _send(page, "hello")
    stats = page.locator("#chat-stats")
    expect(stats).to_contain_text(re.compile(r"With adapter poems: .*tok/s.* · without: .*tok/s"), timeout=60_000)
    for pane in ("#chat-history", "#chat-side"):
        expect(_users(page, pane)).to_have_text(["hello"])
        expect(_bots(page, pane)).to_have_count(1)
        expect(_bots(page, pane).first).to_have_text(re.compile(r"\S"))


@pytest.fixture(scope="module")
def starter_studio(tmp_path_factory, starter_folder):
    """A studio whose data dir already holds the converted starter model (linked from the test cache)."""
    from studio.models.starter import starter_folder as folder_in
    from tests.ui.conftest import start_studio, stop_studio

    data = tmp_path_factory.mktemp("starter-data")
    target = folder_in(data / "models")
    target.parent.mkdir(parents=True)
    target.symlink_to(starter_folder, target_is_directory=True)
    s = start_studio(data, "--device", "cpu")
    yield s
    stop_studio(s)


def test_the_starter_model_answers_in_the_page(page, starter_studio):
    page.goto(starter_studio.url)
    page.locator("#chat-model input").click()
    page.locator("ul[role=listbox] li", has_text="SmolLM2 135M Instruct (starter)").first.click()
    if llamacpp_available():  # the starter's own GGUF runs through llama.cpp, and the page says so
        expect(page.locator("#chat-model input")).to_have_value("SmolLM2 135M Instruct (starter) · llama.cpp · Q4_1")
        expect(page.locator("#chat-plan")).to_contain_text("Engine: llama.cpp · Q4_1", timeout=30_000)
    _open_sampling(page)
    _set_value(page, "chat-temperature", "0")
    _set_value(page, "chat-max-new", "24")
    page.locator("#chat-input textarea").fill("What is the capital of France?")
    page.locator("#chat-input textarea").press("Enter")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=120_000)
    expect(page.locator("#chat-history")).to_contain_text("Paris")
    if llamacpp_available():
        page.get_by_role("tab", name="Models").click()
        expect(page.locator("#models-table")).to_contain_text("llama.cpp · Q4_1 · ctx 4096", timeout=30_000)


def llamacpp_available() -> bool:
    from studio.engines import llamacpp

    return llamacpp.available()
