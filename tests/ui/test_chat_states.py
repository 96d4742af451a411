"""In Chromium: what the Chat tab says while it works. Send and Stop are usable only when they mean something, a
reply cut by Stop is marked in the conversation, a model that must load says so in the reply's bubble (in view)
before its first token, an empty message is a warning (no "Error" over the conversation), and a model's own
sampling defaults are set and named when it is picked."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from playwright.sync_api import expect

from tests.ui.test_chat import _bots, _open_sampling, _send, _set_model, _set_value, _users

pytestmark = pytest.mark.ui
TOKENS = re.compile(r"^\s*[^\s⏳]")  # a bubble with the reply's text, not the line of a load it waits for

# Every text a bot bubble of the conversation shows, with whether the bubble was in the window then: the page's
# own record of what it displayed, however briefly (a tiny model loads in well under a second).
WATCH_BUBBLES = """() => {
  window.seenBubbles = [];
  const pane = document.querySelector('#chat-history');
  const look = () => {
    for (const bot of pane.querySelectorAll('[data-testid=bot]')) {
      const r = bot.getBoundingClientRect();
      const inView = r.bottom > 0 && r.top < window.innerHeight && r.height > 0;
      window.seenBubbles.push({text: bot.innerText, inView});
    }
  };
  new MutationObserver(look).observe(pane, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """The conftest's studio, given longer to start on a busy machine."""
    from tests.ui.conftest import start_studio, stop_studio

    s = start_studio(tmp_path_factory.mktemp("states-data"), "--device", "cpu", "--budget-gb", "2", timeout=300)
    yield s
    stop_studio(s)


@pytest.fixture(scope="module")
def long_lm(tmp_path_factory):
    """A tiny LM with a long context, so that a reply runs until it is stopped."""
    from tests.ui.conftest import endless_lm

    return endless_lm(tmp_path_factory.mktemp("states") / "long-states-lm")


def _long_reply_settings(page) -> None:
    # as in test_chat: sampling from the 5 likeliest tokens with seed 0 writes visible text and no EOS for long
    _set_value(page, "chat-temperature", "1")
    _set_value(page, "chat-top-k", "5")
    _set_value(page, "chat-seed", "0")
    _set_value(page, "chat-max-new", "30000")
    _set_value(page, "chat-context", "32768")


def test_send_and_stop_are_usable_only_when_they_mean_something_and_a_stopped_reply_is_marked(page, studio, long_lm):
    page.goto(studio.url)
    send, stop, regenerate = (page.locator(f"#chat-{name}") for name in ("send", "stop", "regenerate"))
    expect(send).to_be_enabled()
    expect(stop).to_be_disabled()  # nothing to stop yet
    _set_model(page, str(long_lm))
    expect(page.locator("#chat-defaults")).to_contain_text("long-states-lm")
    _open_sampling(page)
    _long_reply_settings(page)
    _send(page, "tell me a long story")
    reply = _bots(page).first
    expect(reply).to_have_text(TOKENS, timeout=60_000)  # tokens have started (the load's line is gone)
    expect(stop).to_be_enabled()  # while the reply runs: Stop, and neither Send nor Regenerate
    expect(send).to_be_disabled()
    expect(regenerate).to_be_disabled()
    # Enter while it runs cuts nothing: a warning says why, the text waits in the box
    page.locator("#chat-input textarea").fill("a question asked meanwhile")
    page.locator("#chat-input textarea").press("Enter")
    expect(page.get_by_text("A reply is still being written").first).to_be_visible()
    expect(page.locator("#chat-input textarea")).to_have_value("a question asked meanwhile")
    expect(_users(page)).to_have_text(["tell me a long story"])
    # a DOM click: Playwright's own click scrolls first, and a page busy drawing a fast, endless reply can stall that
    stop.dispatch_event("click")
    expect(page.locator("#chat-stats")).to_contain_text("stopped", timeout=30_000)
    expect(reply).to_have_text(re.compile(r"\S.*— stopped\s*$", re.S))  # the cut is marked in the conversation
    expect(send).to_be_enabled()
    expect(stop).to_be_disabled()
    expect(regenerate).to_be_enabled()
    # the queued text goes now; the mark is the page's, the answer after it is a whole new reply
    _set_value(page, "chat-max-new", "4")
    send.click()
    expect(_users(page)).to_have_text(["tell me a long story", "a question asked meanwhile"])
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_bots(page)).to_have_count(2)
    expect(_bots(page).nth(1)).not_to_contain_text("— stopped")
    expect(send).to_be_enabled()
    expect(stop).to_be_disabled()


def test_a_model_that_must_load_says_so_in_the_reply_bubble(page, studio, tiny_models, tmp_path):
    # a fresh copy: a model this studio has never loaded
    folder = tmp_path / "fresh-load-lm"
    shutil.copytree(tiny_models.causal_lm, folder)
    page.goto(studio.url)
    _set_model(page, str(folder))
    expect(page.locator("#chat-defaults")).to_contain_text("fresh-load-lm")
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    page.evaluate(WATCH_BUBBLES)
    _send(page, "hello")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    seen = page.evaluate("window.seenBubbles")
    waiting = [s for s in seen if re.fullmatch(r"⏳ Loading fresh-load-lm: \d+ s", s["text"].strip())]
    assert waiting, seen[:20]
    assert all(s["inView"] for s in waiting), waiting
    expect(_bots(page)).to_have_count(1)
    expect(_bots(page).first).not_to_contain_text("⏳")  # the reply took its place


def test_an_empty_message_is_a_warning_not_an_error_over_the_conversation(page, studio):
    page.goto(studio.url)
    expect(page.locator("#chat-send")).to_be_enabled()
    _send(page, "   ")
    expect(page.get_by_text("the message is empty").first).to_be_visible()
    expect(page.locator("#chat-history [data-testid=status-tracker] .error")).to_have_count(0)
    expect(page.locator("#chat-input [data-testid=status-tracker] .error")).to_have_count(0)
    expect(_users(page)).to_have_count(0)
    expect(_bots(page)).to_have_count(0)
    expect(page.locator("#chat-send")).to_be_enabled()
    page.locator("#chat-regenerate").click()  # nothing to regenerate: the same, a warning
    expect(page.get_by_text("Nothing to regenerate yet").first).to_be_visible()
    expect(page.locator("#chat-history [data-testid=status-tracker] .error")).to_have_count(0)
    expect(page.locator("#chat-send")).to_be_enabled()


def test_picking_a_model_sets_its_own_sampling_defaults_and_says_so(page, studio, tiny_models, tmp_path):
    folder = tmp_path / "careful-lm"
    shutil.copytree(tiny_models.causal_lm, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(temperature=0.3, top_p=0.85, top_k=30)
    (folder / "generation_config.json").write_text(json.dumps(config))
    page.goto(studio.url)
    _set_model(page, str(folder))
    line = page.locator("#chat-defaults")
    expect(line).to_contain_text("Defaults from careful-lm's generation_config.json: temperature 0.3, top_p 0.85")
    _open_sampling(page)
    expect(page.locator("#chat-temperature input[type=number]")).to_have_value("0.3")
    expect(page.locator("#chat-top-k input[type=number]")).to_have_value("30")
    expect(page.locator("#chat-max-new input[type=number]")).to_have_value("64")  # the tiny LM's own max_new_tokens
