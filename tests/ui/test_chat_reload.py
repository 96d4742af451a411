"""In Chromium: a conversation, the adapter it answers with and the chat settings survive a page reload; past
conversations reopen after New chat; another visitor (another browser) sees none of them."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.ui.test_chat import _bots, _make_adapter, _open_sampling, _pick, _send, _set_model, _set_value, _users

pytestmark = pytest.mark.ui


def _past_chats(page) -> list[str]:
    """The titles the Past chats list offers (its list is opened, read and closed again)."""
    page.locator("#chat-past input").click()
    options = page.locator("ul[role=listbox] li")
    # an option's text is its title, after a check mark on the chosen one
    titles = [t.split("\n")[-1].strip() for t in options.all_inner_texts()] if options.count() else []
    page.keyboard.press("Escape")
    page.locator("#chat-past input").blur()  # closed and left, so that the next click opens it again
    expect(options).to_have_count(0)
    return titles


def _expect_past_chats(page, titles: list[str], timeout: float = 30.0) -> None:
    """The Past chats list comes to offer exactly `titles` (after a reload the page-load restore fills it a little
    later than the page draws it)."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = _past_chats(page)
        if seen == titles:
            return
        page.wait_for_timeout(500)
    assert seen == titles


def _answered(page, count: int) -> None:
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=60_000)
    expect(_bots(page)).to_have_count(count)


def test_the_conversation_adapter_and_settings_survive_a_reload(page, studio, tiny_models):
    folder = _make_adapter(tiny_models.causal_lm, studio.data_dir / "runs" / "verses" / "adapter")
    page.goto(studio.url)
    _set_model(page, str(tiny_models.causal_lm))
    _pick(page, "chat-adapter-path", str(folder))
    page.locator("#chat-attach").click()
    expect(page.locator("#chat-adapter-status")).to_contain_text("Attached verses", timeout=60_000)
    expect(page.locator("#chat-use-adapter input")).to_have_value("verses")
    page.locator("#chat-system textarea").fill("Answer in verse.")
    page.locator("#chat-system textarea").press("Tab")
    _open_sampling(page)
    _set_value(page, "chat-temperature", "0.35")
    _set_value(page, "chat-max-new", "8")
    _send(page, "what rhymes with moon?")
    _answered(page, 1)
    reply = page.locator("#chat-history [data-testid=bot]").first.inner_text()

    page.reload()
    expect(_users(page)).to_have_text(["what rhymes with moon?"])
    expect(_bots(page)).to_have_count(1)
    assert page.locator("#chat-history [data-testid=bot]").first.inner_text() == reply
    expect(page.locator("#chat-use-adapter input")).to_have_value("verses")  # still attached, still chosen
    # the model picked (shown by its name now that it is loaded)
    expect(page.locator("#chat-model input")).to_have_value(re.compile(rf"^{tiny_models.causal_lm.name} \(loaded\)"))
    expect(page.locator("#chat-system textarea")).to_have_value("Answer in verse.")
    _open_sampling(page)
    expect(page.locator("#chat-temperature input[type=range]")).to_have_value("0.35")
    expect(page.locator("#chat-max-new input")).to_have_value("8")
    _expect_past_chats(page, ["what rhymes with moon?"])

    # the conversation goes on after the reload, with the adapter it answered with
    _send(page, "and with june?")
    _answered(page, 2)
    expect(_users(page)).to_have_text(["what rhymes with moon?", "and with june?"])


def test_past_conversations_reopen_and_stay_in_their_own_browser(page, browser, studio, tiny_models):
    page.goto(studio.url)
    _set_model(page, str(tiny_models.causal_lm))
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    _send(page, "tell me about cats")
    _answered(page, 1)
    cats_reply = page.locator("#chat-history [data-testid=bot]").first.inner_text()

    page.locator("#chat-new").click()
    expect(_users(page)).to_have_count(0)
    expect(_bots(page)).to_have_count(0)
    _send(page, "tell me about dogs")
    _answered(page, 1)
    expect(page.locator("#chat-past input")).to_have_value("tell me about dogs")
    _expect_past_chats(page, ["tell me about dogs", "tell me about cats"])

    _pick(page, "chat-past", "tell me about cats")  # reopened: the conversation as it was
    expect(_users(page)).to_have_text(["tell me about cats"])
    expect(_bots(page)).to_have_count(1)
    assert page.locator("#chat-history [data-testid=bot]").first.inner_text() == cats_reply
    page.reload()  # the reopened one is the one a reload shows
    expect(_users(page)).to_have_text(["tell me about cats"])
    expect(page.locator("#chat-past input")).to_have_value("tell me about cats")

    # another visitor, in another browser, has none of these
    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        visitor = other.new_page()
        visitor.goto(studio.url)
        expect(visitor.locator("#chat-past")).to_be_visible()
        visitor.wait_for_timeout(1000)  # the page-load restore has run (it would have filled the conversation)
        expect(_users(visitor)).to_have_count(0)
        _expect_past_chats(visitor, [])
    finally:
        other.close()

    # Delete removes the open conversation from this browser; the other one stays
    page.locator("#chat-delete").click()
    expect(_users(page)).to_have_count(0)
    expect(page.locator("#chat-past input")).to_have_value("")
    _expect_past_chats(page, ["tell me about dogs"])
    page.reload()
    expect(page.locator("#chat-past")).to_be_visible()
    _expect_past_chats(page, ["tell me about dogs"])
    expect(_users(page)).to_have_count(0)

    # Clear empties the open conversation, which then leaves the list
    _pick(page, "chat-past", "tell me about dogs")
    expect(_users(page)).to_have_text(["tell me about dogs"])
    page.locator("#chat-clear").click()
    expect(_users(page)).to_have_count(0)
    expect(page.locator("#chat-past input")).to_have_value(re.compile("^$"))
    _expect_past_chats(page, [])
