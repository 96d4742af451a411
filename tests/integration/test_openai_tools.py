"""response_format and tools on the OpenAI-compatible API of a real `python launch.py`, driven by the official
`openai` client, on the tiny random LM (transformers): constrained decoding makes its garbage valid."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from tests.ui.conftest import openai_client, studio_with
from tests.unit.test_tools import PERSON, WEATHER, validate

TINY = "tools-lm"  # the tiny random LM with a longer context: the tools' prompt alone passes 512 of its tokens
HELLO = [{"role": "user", "content": "hello there, how are you"}]
GREEDY = {"temperature": 0, "max_tokens": 200}


@pytest.fixture(scope="module")
def tools_lm(tmp_path_factory):
    from studio.models.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / TINY, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tools_lm):
    with studio_with(tmp_path_factory.mktemp("tools-data"), ("chat", tools_lm)) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio) -> OpenAI:
    return openai_client(studio)


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def test_json_schema_and_json_object_on_transformers(client, tools_lm):
    from transformers import AutoTokenizer

    reply = client.chat.completions.create(
        model=TINY, messages=HELLO, response_format=_schema_format(PERSON), **GREEDY
    )
    choice = reply.choices[0]
    validate(json.loads(choice.message.content), PERSON)
    assert choice.finish_reason == "stop"
    # json_object: any object; the bias toward "}" ends the random LM's object at once (it would write digits)
    brace = str(AutoTokenizer.from_pretrained(tools_lm).convert_tokens_to_ids("}"))
    obj = client.chat.completions.create(
        model=TINY, messages=HELLO, response_format={"type": "json_object"}, logit_bias={brace: 30}, **GREEDY
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_json_schema_streams(client):
    deltas, finish = [], None
    for chunk in client.chat.completions.create(
        model=TINY, messages=HELLO, response_format=_schema_format(PERSON), stream=True, **GREEDY
    ):
        for c in chunk.choices:
            deltas += [c.delta.content] if c.delta.content else []
            finish = c.finish_reason or finish
    validate(json.loads("".join(deltas)), PERSON)
    assert finish == "stop"


def test_a_schema_that_cannot_compile_is_a_400(studio):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "florp"}}}
    r = httpx.post(studio.url + "v1/chat/completions", json={"model": TINY, "messages": HELLO, "response_format": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text


def test_a_named_tool_choice_returns_a_valid_call_and_the_follow_up_is_accepted(client):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    ask = [{"role": "user", "content": "What is the weather in Oslo for the next days?"}]
    reply = client.chat.completions.create(model=TINY, messages=ask, tools=[WEATHER], tool_choice=forced, **GREEDY)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    follow = ask + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    again = client.chat.completions.create(model=TINY, messages=follow, tools=[WEATHER], max_tokens=8)
    assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # streamed: the call comes in a delta, with its index
    calls, finish = [], None
    for chunk in client.chat.completions.create(
        model=TINY, messages=ask, tools=[WEATHER], tool_choice="required", stream=True, **GREEDY
    ):
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and [c.index for c in calls] == [0] and calls[0].function.name == "get_weather"
    validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])


def test_auto_with_a_random_lm_is_text(client):
    reply = client.chat.completions.create(model=TINY, messages=HELLO, tools=[WEATHER], max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "unknown"}}}, "tool_choice"),
        ({"tool_choice": "auto"}, "tool_choice"),
    ],
)
def test_bad_tools_are_named(studio, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        OpenAI(base_url=studio.url + "v1", api_key="x", max_retries=0).chat.completions.create(
            model=TINY, messages=HELLO, **extra
        )
    assert err.value.status_code == 400 and err.value.body["param"] == param
