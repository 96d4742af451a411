"""A chat model's own sampling defaults (generation_config.json, GGUF metadata, the starter's model card) reach the
Chat tab's widgets, its "Defaults from ..." line and the ChatParams a reply runs with."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.engines import llamacpp
from studio.engines.chat import ChatParams
from studio.ui.chat_tab import SAMPLING_WIDGETS, ChatTab, ReplyForm

LOCAL = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={}, session_hash="defaults-test")
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def ctx(tmp_path):
    return build_context(StudioConfig(data_dir=tmp_path / "data", device="cpu"), start_monitor=False)


def _form(folder, values: dict, history: list) -> ReplyForm:
    return ReplyForm(
        chatbot=history,
        side=None,
        model=str(folder),
        precision="fp32",
        system="",
        temperature=values["temperature"],
        top_p=values["top_p"],
        top_k=values["top_k"],
        rep=values["rep"],
        max_new=values["max_new"],
        seed=0,
        context=0,
        use_adapter=None,
        side_by_side=False,
        asked_after=None,
    )


def test_generation_config_defaults_reach_the_widgets_the_line_and_the_reply(ctx, tiny_models, tmp_path):
    folder = tmp_path / "tuned-lm"
    shutil.copytree(tiny_models.causal_lm, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(temperature=0.2, top_p=0.8, top_k=20, repetition_penalty=1.05, max_new_tokens=6, do_sample=True)
    (folder / "generation_config.json").write_text(json.dumps(config))
    tab = ChatTab(ctx)

    *values, line = tab.model_defaults(str(folder), "fp32")
    shown = dict(zip(SAMPLING_WIDGETS, values, strict=True))
    assert shown == {"temperature": 0.2, "top_p": 0.8, "top_k": 20, "rep": 1.05, "max_new": 6}
    assert line.startswith("Defaults from tuned-lm's generation_config.json: temperature 0.2, top_p 0.8, top_k 20")
    assert "repetition_penalty 1.05" in line and "max_new_tokens 6" in line

    # what the page sends back with those values is what the reply runs with: at most 6 new tokens
    form = _form(folder, shown, [{"role": "user", "content": "hello"}])
    assert form.params() == ChatParams(
        temperature=0.2, top_p=0.8, top_k=20, repetition_penalty=1.05, max_new_tokens=6, seed=0
    )
    updates = list(tab.respond(form, request=LOCAL))
    history, stats = updates[-1][0], updates[-1][2]
    assert "6 tokens" in stats or "stop" in stats, stats
    assert history[-1]["role"] == "assistant"


def test_a_model_without_defaults_gets_the_studios_and_out_of_range_values_are_said(ctx, tiny_models, tmp_path):
    tab = ChatTab(ctx)
    plain = tmp_path / "plain-lm"
    shutil.copytree(tiny_models.causal_lm, plain)
    (plain / "generation_config.json").unlink()
    *values, line = tab.model_defaults(str(plain), "fp32")
    studio = ChatParams()
    assert values == [studio.temperature, studio.top_p, studio.top_k, studio.repetition_penalty, studio.max_new_tokens]
    assert line == "plain-lm names no sampling defaults of its own: the studio's are set."

    odd = tmp_path / "odd-lm"
    shutil.copytree(tiny_models.causal_lm, odd)
    (odd / "generation_config.json").write_text(json.dumps({"temperature": 7, "top_k": 40, "do_sample": False}))
    *values, line = tab.model_defaults(str(odd), "fp32")
    assert values[:3] == [0.0, studio.top_p, 40]  # do_sample false: greedy, as transformers samples it
    assert "Not taken (out of range here): temperature 7." in line


@pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed")
def test_the_starter_answers_the_capital_of_france_with_its_defaults(ctx):
    from studio.models.starter import STARTER_NAME
    from studio.ui.chat_tab import STARTER_PREFIX, resolve_spec

    tab = ChatTab(ctx)
    *values, line = tab.model_defaults(STARTER_PREFIX + STARTER_NAME, llamacpp.AUTO)
    shown = dict(zip(SAMPLING_WIDGETS, values, strict=True))
    assert shown["temperature"] == 0 and shown["top_p"] == 0.9 and shown["max_new"] == 256
    assert line.endswith("'s starter settings: temperature 0, top_p 0.9, max_new_tokens 256."), line
    spec = resolve_spec(ctx, STARTER_PREFIX + STARTER_NAME, llamacpp.AUTO)
    last = list(ctx.chat.stream(spec, FRANCE, _form("x", shown, []).params()))[-1]
    assert "Paris" in last.text and last.stats.finish_reason == "stop", last.text  # a short answer, not 256 tokens
