"""The page's Gradio API as a script drives it: a fresh gradio_client, named parameters, run names given and
returned as values, OpenAI-style messages for /chat, and no helper events published as endpoints."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.ui.conftest import start_studio, stop_studio

ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("gradio-api-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


def _client(studio):
    from gradio_client import Client

    return Client(studio.url, verbose=False)  # a fresh client: no browser session behind it


def test_only_named_actions_are_endpoints_and_their_parameters_have_names(studio):
    info = _client(studio).view_api(return_format="dict", print_info=False)
    names = set(info["named_endpoints"])
    assert {"/chat", "/ft_start", "/ft_poll", "/ft_export", "/models_load", "/image_generate"} <= names
    helpers = [n for n in names if re.search(r"_\d+$", n) or n in ("/lambda", "/refresh", "/show_plan")]
    assert helpers == [], helpers
    assert info["unnamed_endpoints"] == {}
    for name, endpoint in info["named_endpoints"].items():
        params = [p["parameter_name"] for p in endpoint["parameters"]]
        assert not [p for p in params if re.fullmatch(r"param_\d+", p)], (name, params)
    start = [p["parameter_name"] for p in info["named_endpoints"]["/ft_start"]["parameters"]]
    assert start[0] == "file" and {"model", "max_steps", "batch", "cutoff", "lr"} <= set(start)
    for action in ("/ft_stop", "/ft_resume", "/ft_poll", "/ft_select", "/ft_try_in_chat", "/ft_export"):
        assert info["named_endpoints"][action]["parameters"][0]["parameter_name"] in ("name", "source"), action


def test_chat_takes_openai_style_messages(studio, tiny_models):
    history, _, stats = _client(studio).predict(
        chatbot=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        model=str(tiny_models.causal_lm),
        max_new=8,
        api_name="/chat",
    )
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"][0]["text"] == "hello there" and "tok/s" in stats


def test_a_fresh_client_trains_polls_and_exports_a_run_by_its_name(studio, tiny_models):
    from gradio_client import handle_file

    client = _client(studio)
    run, note = client.predict(
        file=handle_file(str(ASSET)),
        model=str(tiny_models.causal_lm),
        max_steps=3,
        batch=2,
        cutoff=64,
        eval_every=0,
        api_name="/ft_start",
    )
    assert re.fullmatch(r"\d{8}-\d{6}-\S+", run) and run in note  # the run's name as a value of its own
    deadline = time.monotonic() + 240
    progress = ""
    while time.monotonic() < deadline:
        progress = _client(studio).predict(name=run, api_name="/ft_select")[0]  # another fresh client
        if "done" in progress:
            break
        time.sleep(2)
    assert "done" in progress, progress
    for _ in range(20):  # "done" is written just before the worker process exits
        try:
            client.predict(name=run, api_name="/ft_stop")
        except Exception as exc:  # noqa: BLE001 - gradio_client raises AppError with the page's message
            assert "is not training" in str(exc)
            break
        time.sleep(0.5)
    else:
        pytest.fail("/ft_stop kept answering for a finished run")
    result = client.predict(source=run, to="f16", api_name="/ft_export")
    gguf = studio.data_dir / "runs" / run / "export" / f"{run}-F16.gguf"
    assert gguf.is_file() and str(gguf) in result and "ollama create" in result


def test_the_models_tab_plans_and_loads_by_name(studio, tiny_models):
    client = _client(studio)
    plan = client.predict(kind="chat", source=str(tiny_models.causal_lm), api_name="/models_plan")
    assert plan.startswith("Engine: transformers")  # loaded already by the chat test, or planned to fit
    assert "is already loaded" in plan or "fits" in plan
    loaded = client.predict(kind="chat", source=str(tiny_models.causal_lm), api_name="/models_load")
    assert f"{tiny_models.causal_lm.name} loaded:" in loaded
    listed = client.predict(current=None, api_name="/models_list")[0]
    assert tiny_models.causal_lm.name in str(listed)
