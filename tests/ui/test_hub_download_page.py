"""In Chromium: a Hub id that is not downloaded yet is offered a Download beside the Chat model picker; the
download shows its bytes of the total, Cancel stops it, Download again resumes and finishes, and then the model
answers in Chat with no further step; the same in the Models tab, where Load then loads it. A local server plays the Hugging Face Hub (HF_ENDPOINT), so nothing leaves
the machine."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

from tests.fake_hub import FakeHub
from tests.ui.test_chat import _bots, _send

pytestmark = pytest.mark.ui
REPO = "tiny-hub/chat-lm"


@pytest.fixture
def hub_studio(tmp_path, monkeypatch, tiny_models):
    """A fake Hub serving the tiny LM as REPO (slowly: 64 KB a second), and a studio that downloads from it into an
    empty Hugging Face cache."""
    from tests.ui.conftest import start_studio, stop_studio

    repo = tmp_path / "repo"
    shutil.copytree(tiny_models.causal_lm, repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickle weights the studio must not fetch")
    hub = FakeHub({REPO: repo}, chunk_delay=1.0)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # this studio is online, whatever ran before it here
        monkeypatch.delenv(name, raising=False)
    studio = start_studio(tmp_path / "data", "--device", "cpu", "--budget-gb", "2", timeout=300)
    yield hub, studio
    stop_studio(studio)
    hub.close()


def test_download_a_hub_id_from_the_chat_tab_then_chat_with_it(page, hub_studio):
    hub, studio = hub_studio
    page.goto(studio.url)
    box = page.locator("#chat-model input")
    box.fill(REPO)
    box.press("Enter")
    plan, status = page.locator("#chat-plan"), page.locator("#chat-download-status")
    expect(plan).to_contain_text(f"{REPO} is not downloaded yet; the Hugging Face Hub is reachable", timeout=60_000)
    expect(plan).to_contain_text("Press Download")
    expect(page.locator("#chat-download-row")).to_be_visible()
    expect(status).to_contain_text(f"{REPO} is not downloaded yet")

    page.locator("#chat-download").click()
    expect(status).to_contain_text(
        re.compile(rf"Downloading {REPO}: [\d.]+ [KM]B of [\d.]+ KB \(\d+ %\)"), timeout=60_000
    )
    page.locator("#chat-download-cancel").click()
    expect(status).to_contain_text(f"Download of {REPO} cancelled at", timeout=60_000)
    expect(plan).to_contain_text("is not downloaded yet")  # a cancelled download is not a model yet

    hub.chunk_delay = 0.2
    page.locator("#chat-download").click()
    expect(status).to_contain_text(f"✅ {REPO} is downloaded:", timeout=120_000)
    expect(status).to_contain_text("Send a message to chat with it")
    expect(plan).to_contain_text("Engine: transformers", timeout=60_000)  # planned again: its size is known now
    assert not any(g.endswith(".bin") for g in hub.gets), hub.gets

    hub.close()  # no network from here: the model loads from the cache
    _send(page, "Hello there")
    expect(_bots(page).first).to_have_text(re.compile(r"^\s*[^\s⏳]"), timeout=120_000)  # the reply's own tokens
    expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=120_000)


def test_download_a_hub_id_from_the_models_tab_then_load_it(page, hub_studio):
    hub, studio = hub_studio
    hub.chunk_delay = 0.3
    page.goto(studio.url)
    page.get_by_role("tab", name="Models").click()
    box = page.locator("#load-source input")
    box.fill(REPO)
    box.press("Enter")
    status = page.locator("#models-download-status")
    expect(status).to_contain_text(f"{REPO} is not downloaded yet", timeout=60_000)
    page.locator("#models-download").click()
    expect(status).to_contain_text(f"✅ {REPO} is downloaded:", timeout=120_000)
    expect(status).to_contain_text("Press Load.")
    result = page.locator("#load-result")
    expect(result).to_contain_text(f"Loading {REPO}", timeout=60_000)  # the plan, now that its size is known
    hub.close()
    page.locator("#load-go").click()
    expect(result).to_contain_text(" loaded: ", timeout=120_000)
    expect(page.locator("#models-table")).to_contain_text("chat-lm", timeout=30_000)


def test_a_remote_visitor_cannot_start_a_download(hub_studio):
    """Through the real server, as a share link's visitor arrives (the tunnel's Host, a forwarding header)."""
    from tests.ui.conftest import gradio_call

    hub, studio = hub_studio
    visitor = {"Host": "visitor.gradio.live", "X-Forwarded-For": "203.0.113.9"}
    for api_name, args in (("models_download", ["chat", REPO]), ("chat_download", [REPO, "auto"])):
        event, data = gradio_call(studio, api_name, args, visitor)
        assert event == "error" and "Remote visitors cannot download models on this studio" in data, data
    assert hub.gets == []  # nothing was fetched
    event, data = gradio_call(studio, "models_download", ["chat", REPO])  # the owner, on this machine
    assert event == "complete" and REPO in data, data
