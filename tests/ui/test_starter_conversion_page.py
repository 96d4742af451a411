"""In Chromium: the first reply of the starter model on a fresh data dir waits for its one-time conversion (the
GGUF in its wheel into safetensors, for transformers), and the reply's bubble, in view, says so with the seconds so
far before the first token. One real conversion (about a minute on 2 loaded cores)."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from tests.ui.test_chat import _bots, _open_sampling, _pick, _send, _set_value
from tests.ui.test_chat_states import WATCH_BUBBLES

pytestmark = pytest.mark.ui
CONVERTING = re.compile(r"⏳ Converting the starter model once \(first use only\), then loading it: \d+ s")


@pytest.fixture
def fresh_studio(tmp_path):
    """A studio on an empty data dir: the starter has not been converted there."""
    from studio.models import starter
    from tests.ui.conftest import start_studio, stop_studio

    if starter.find_wheel() is None and not os.environ.get("CI"):
        pytest.skip("the starter model's wheel is not here (scripts/setup.sh fetches it)")
    s = start_studio(tmp_path / "data", "--device", "cpu", "--budget-gb", "2", timeout=300)
    assert not starter.is_converted(tmp_path / "data" / "models")
    yield s
    stop_studio(s)


def test_the_first_starter_reply_shows_its_one_time_conversion_in_the_bubble(page, fresh_studio):
    from studio.models import starter

    page.goto(fresh_studio.url)
    _pick(page, "chat-model", "SmolLM2 135M Instruct (starter)")
    _pick(page, "chat-precision", "fp32")  # transformers: the GGUF is converted to safetensors once
    expect(page.locator("#chat-plan")).to_contain_text("transformers", timeout=60_000)
    _open_sampling(page)
    _set_value(page, "chat-max-new", "8")
    page.evaluate(WATCH_BUBBLES)
    _send(page, "What is the capital of France?")
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=600_000)
    seen = page.evaluate("window.seenBubbles")
    converting = [i for i, s in enumerate(seen) if CONVERTING.fullmatch(s["text"].strip())]
    assert converting, seen[:20]
    assert all(seen[i]["inView"] for i in converting)
    seconds = {int(re.search(r"(\d+) s$", seen[i]["text"].strip()).group(1)) for i in converting}
    assert len(seconds) > 1, seconds  # the line counts on while it converts
    first_token = next(i for i, s in enumerate(seen) if s["text"].strip() and not s["text"].strip().startswith("⏳"))
    assert max(converting) < first_token  # all of it before the reply's first token
    expect(_bots(page).first).not_to_contain_text("⏳")
    assert starter.is_converted(fresh_studio.data_dir / "models")  # the conversion really ran, into this data dir
