"""A shared studio (--share on a machine with no network): login everywhere, an API key on /v1, the link's
failure in one line, and remote visitors kept to the workbenches."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.ui.conftest import gradio_call, start_studio, stop_studio


def _log_value(studio, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, studio.log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the log:\n{studio.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("shared-data"), "--device", "cpu", "--budget-gb", "2", "--share")
    s.password = _log_value(s, r"user 'studio', password (\S+)")
    s.api_key = _log_value(s, r"API key for /v1 \(sharing/listening\): (\S+)")
    yield s
    stop_studio(s)


def test_no_network_means_one_line_and_local_serving(shared):
    line = _log_value(shared, r"(Public link unavailable: [^\n]*)")
    assert "keeps serving on this machine" in line
    assert "Traceback" not in shared.log.read_text()
    assert httpx.get(shared.url, timeout=10).status_code == 200  # the login page, served locally


def test_every_door_needs_the_login_or_the_key(shared):
    # the Gradio API without logging in
    r = httpx.post(shared.url + "gradio_api/call/memory_bar", json={"data": []}, timeout=10)
    assert r.status_code in (401, 403), r.text
    # /v1 without and with a wrong key: OpenAI's error shape
    for headers in ({}, {"Authorization": "Bearer sk-wrong-key-000"}):
        r = httpx.get(shared.url + "v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    # the official client with the printed key
    from openai import AuthenticationError, OpenAI

    ok = OpenAI(base_url=shared.url + "v1", api_key=shared.api_key, max_retries=0)
    assert ok.models.list().object == "list"
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=shared.url + "v1", api_key="sk-not-the-key", max_retries=0).models.list()


def test_log_in_see_the_sharing_line_and_use_a_tab(shared, page, tiny_models):
    from playwright.sync_api import expect

    page.goto(shared.url)
    page.get_by_label("username").fill("studio")
    page.get_by_label("password").fill("wrong")
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
    page.goto(shared.url)
    page.get_by_label("username").fill("studio")
    page.get_by_label("password").fill(shared.password)
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#share-status")).to_contain_text("Public link unavailable")
    expect(page.locator("#memory-bar")).to_be_visible()
    page.get_by_role("tab", name="Models").click()
    source = page.locator("#load-source input")
    source.fill(str(tiny_models.causal_lm))
    source.press("Enter")
    page.locator("#load-go").click()
    expect(page.locator("#load-result")).to_contain_text("loaded:", timeout=90_000)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("local-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


def test_remote_visitors_cannot_load_by_path_or_change_the_budget(local, tiny_models):
    visitor = {"Host": "visitor.gradio.live", "X-Forwarded-For": "203.0.113.9"}
    event, data = gradio_call(local, "models_load", ["chat", str(tiny_models.causal_lm), "fp32"], visitor)
    assert event == "error" and "Remote visitors cannot load models by path or Hub id" in data, data
    event, data = gradio_call(local, "models_budget", [1.0, 0.1], visitor)
    assert event == "error" and "Remote visitors cannot change the memory budget" in data, data
    # the owner, on this machine, can
    event, data = gradio_call(local, "models_budget", [1.5, 0.1])
    assert event == "complete" and "Budget now" in data, data


def test_remote_visitors_use_the_owners_models_but_cannot_train_or_load_their_own(local, tiny_models):
    from tests.integration.test_bad_inputs import chat, start, upload
    from tests.ui.conftest import ROOT

    visitor = {"Host": "visitor.gradio.live", "X-Forwarded-For": "203.0.113.9"}
    lm = str(tiny_models.causal_lm)
    # a model the owner has not loaded: refused in the Chat and Speech tabs (no loading from server paths)
    event, data = gradio_call(local, "chat", chat(model=lm, max_new=4), visitor)
    assert event == "error" and "Remote visitors can use the models the owner has loaded" in data, data
    recording = upload(local, ROOT / "assets" / "speech-sample.ogg")
    speech = [recording, None, str(tiny_models.whisper_pt), "int8", "auto", "transcribe", "", 1, False, False, True]
    event, data = gradio_call(local, "speech_transcribe", speech, visitor)
    assert event == "error" and "Remote visitors can use the models the owner has loaded" in data, data
    # fine-tuning is the owner's
    event, data = gradio_call(local, "ft_start", start(None), visitor)
    assert event == "error" and "Remote visitors cannot start fine-tuning" in data, data
    # once the owner has loaded the model, the visitor chats with it
    event, data = gradio_call(local, "models_load", ["chat", lm, "fp32"])
    assert event == "complete" and " loaded: " in data, data
    event, data = gradio_call(local, "chat", chat(model=lm, max_new=4), visitor)
    assert event == "complete" and "tok/s" in data, data


def test_the_route_list_is_behind_the_login(shared):
    r = httpx.get(shared.url + "openapi.json", timeout=10)
    assert r.status_code in (401, 403, 404) and "/v1/chat/completions" not in r.text, r.text[:300]
    for page in ("docs", "redoc"):
        r = httpx.get(shared.url + page, timeout=10)
        assert "openapi.json" not in r.text and "swagger" not in r.text.lower(), r.text[:300]


def test_repeated_wrong_passwords_and_keys_are_locked_out(shared):
    """Per client: a visitor through a proxy (its own X-Forwarded-For) is locked out, the owner is not."""
    visitor = {"X-Forwarded-For": "203.0.113.77"}
    wrong = {"username": "studio", "password": "not-the-password"}
    for _ in range(10):
        assert httpx.post(shared.url + "login", data=wrong, headers=visitor, timeout=10).status_code == 400
    right = {"username": "studio", "password": shared.password}
    r = httpx.post(shared.url + "login", data=right, headers=visitor, timeout=10)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
    assert httpx.post(shared.url + "login", data=right, timeout=10).status_code == 200
    guesser = {"X-Forwarded-For": "203.0.113.78", "Authorization": "Bearer sk-guess-000000"}
    for _ in range(10):
        assert httpx.get(shared.url + "v1/models", headers=guesser, timeout=10).status_code == 401
    key = {"Authorization": f"Bearer {shared.api_key}"}
    r = httpx.get(shared.url + "v1/models", headers={**guesser, **key}, timeout=10)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_failures" and r.headers["retry-after"]
    assert httpx.get(shared.url + "v1/models", headers=key, timeout=10).status_code == 200


@pytest.mark.parametrize(
    "proxied",
    [{"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}, {"X-Forwarded-Host": "studio.example.com"}],
)
def test_a_visitor_through_a_proxy_on_this_machine_is_remote(local, proxied):
    event, data = gradio_call(local, "models_budget", [1.0, 0.1], proxied)
    assert event == "error" and "Remote visitors cannot change the memory budget" in data, data


def test_remote_visitors_get_one_answer_for_any_server_path(local, tmp_path):
    visitor = {"Host": "visitor.gradio.live", "X-Forwarded-For": "203.0.113.9"}
    existing = tmp_path / "secret.txt"
    existing.write_text("not a model")
    paths = [str(existing), str(tmp_path / "missing.txt"), str(tmp_path)]
    calls = {
        "models_plan": lambda p: ["chat", p, "fp32"],
        "chat_plan": lambda p: [p, "fp32", 2048],
        "speech_plan": lambda p: [p, "int8"],
        "image_model": lambda p: [p, "fp32", None],
    }
    for api_name, args in calls.items():
        answers = set()
        for path in paths:
            event, data = gradio_call(local, api_name, args(path), visitor)
            assert event == "error" and "Remote visitors" in data, (api_name, data)
            answers.add(data.replace(path, "PATH"))
        assert len(answers) == 1, (api_name, answers)
