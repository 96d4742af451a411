"""Tools (function calling) and response_format: request checks, prompt rendering, reply parsing, constrained
decoding on a tiny random LM (no server)."""

from __future__ import annotations

import json

import pytest

from studio.engines import constrain, tools
from studio.errors import FieldError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city, from the zebra-striped forecast service",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
NAMES = ["get_weather", "lookup"]
# A random LM writes digits forever: the bounds make an integer end (a trained model ends it by itself).
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


# ----- parsing ---------------------------------------------------------------------------------------------


def _args(calls: list[dict]) -> list[tuple[str, dict]]:
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("call_")
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', None,
         [("get_weather", {"city": "Oslo"})]),
        ('Let me look.\n<tool_call>{"name": "lookup", "arguments": {}}</tool_call>\n'
         '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>', "Let me look.",
         [("lookup", {}), ("get_weather", {"city": "Rome"})]),
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
        ('<|python_tag|>{"name": "lookup", "parameters": {"q": 1}}', None, [("lookup", {"q": 1})]),
        ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Bern"}}, {"name": "lookup", "arguments": {}}]',
         None, [("get_weather", {"city": "Bern"}), ("lookup", {})]),
        ('[{"name": "lookup", "arguments": {"x": [1, 2]}}]', None, [("lookup", {"x": [1, 2]})]),  # marker dropped
    ],
)  # fmt: skip
def test_each_format_parses_into_tool_calls(text, content, calls):
    parsed = tools.parse_calls(text, NAMES)
    assert parsed is not None
    assert parsed[0] == content and _args(parsed[1]) == calls


@pytest.mark.parametrize(
    "text",
    [
        "Just a plain answer.",
        "",
        '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # broken JSON
        '<tool_call>{"name": "get_weather", "arguments": {}}',  # never closed
        '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call> and then more text',
        '{"name": "not_offered", "arguments": {}}',  # a tool the request did not give
        '{"name": "get_weather", "arguments": [1, 2]}',  # arguments not an object
        '{"name": "get_weather", "arguments": "{not json"}',
        '{"city": "Oslo"}',  # JSON, but not a call
        "[TOOL_CALLS][]",
        '[TOOL_CALLS][{"name": "get_weather"',
        "[1, 2, 3]",
    ],
)
def test_malformed_calls_are_text(text):
    assert tools.parse_calls(text, NAMES) is None


# ----- request checks --------------------------------------------------------------------------------------


def test_tools_and_tool_choice_are_checked():
    listed = tools.check_tools([WEATHER, {"type": "function", "function": {"name": "lookup"}}])
    assert [t["function"]["name"] for t in listed] == NAMES
    assert listed[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert tools.check_tool_choice(None, listed) == "auto" and tools.check_tool_choice(None, ()) is None
    assert tools.check_tool_choice("required", listed) == "required"
    assert tools.check_tool_choice({"type": "function", "function": {"name": "lookup"}}, listed) == "lookup"
    for bad in ({"type": "function"}, [{"type": "function", "function": {}}], [{"function": {"name": "a b"}}], [1]):
        with pytest.raises(FieldError) as err:
            tools.check_tools(bad)
        assert err.value.param == "tools"
    with pytest.raises(FieldError, match="used twice"):
        tools.check_tools([WEATHER, WEATHER])
    for bad in ("sometimes", {"type": "function", "function": {"name": "nope"}}, {"type": "function"}):
        with pytest.raises(FieldError) as err:
            tools.check_tool_choice(bad, listed)
        assert err.value.param == "tool_choice"
    with pytest.raises(FieldError, match="needs 'tools'"):
        tools.check_tool_choice("auto", ())


def test_parse_request_maps_tools_onto_params():
    from studio.api.openai import ApiError, parse_request

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
    req = parse_request(body)
    assert req.params.tools[0]["function"]["name"] == "get_weather" and req.tool_names == ("get_weather",)
    assert req.params.response_format is None  # auto: the model decides
    forced = parse_request({**body, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    schema = forced.params.response_format["json_schema"]["schema"]
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert parse_request({**body, "tool_choice": "none"}).tool_names == ()
    assert not parse_request({**body, "parallel_tool_calls": False}).parallel_tool_calls
    history = parse_request(
        {
            **body,
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
        }
    )
    assert history.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert history.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    for bad, param in [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "unknown"}}}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "florp"}}}},
         "response_format"),
    ]:  # fmt: skip
        with pytest.raises(ApiError) as err:
            parse_request({**body, **bad})
        assert err.value.status == 400 and err.value.param == param, bad


# ----- prompt ----------------------------------------------------------------------------------------------


HISTORY = [
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
]


def test_tools_reach_the_prompt_of_a_template_without_tool_support(tiny_models):
    """The tiny LM's ChatML template knows nothing of tools (and refuses a 'tool' role): the Hermes rendering."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from studio.engines.chat import ChatEngine

    tok = AutoTokenizer.from_pretrained(tiny_models.causal_lm)
    assert not tools.renders_tools(tok.chat_template)
    lm = SimpleNamespace(tokenizer=tok)
    prompt = tok.decode(ChatEngine._template_ids(lm, HISTORY, (WEATHER,)))
    assert "get_weather" in prompt and "zebra-striped forecast service" in prompt and "<tools>" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_a_template_that_renders_tools_gets_them(tiny_models):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from studio.engines.chat import ChatEngine

    tok = AutoTokenizer.from_pretrained(tiny_models.causal_lm)
    tok.chat_template = (
        "{% for t in tools or [] %}TOOL {{ t.function.name }}: {{ t.function.description }}\n{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
        "\n{% endfor %}assistant:"
    )
    prompt = tok.decode(ChatEngine._template_ids(SimpleNamespace(tokenizer=tok), HISTORY, (WEATHER,)))
    assert "TOOL get_weather: Current weather in a city" in prompt
    assert 'CALL get_weather {"city": "Oslo"}' in prompt and "tool: sunny, 21 C" in prompt
    assert "<tools>" not in prompt  # the template's own rendering, not the fallback


# ----- constrained decoding --------------------------------------------------------------------------------


def _generate(tiny_models, response_format: dict, **kwargs) -> tuple[str, bool]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    tok = AutoTokenizer.from_pretrained(tiny_models.causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.causal_lm)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=True)
    ids = ids["input_ids"]
    eos = model.generation_config.eos_token_id or tok.eos_token_id
    vocab = model.get_output_embeddings().weight.shape[0]
    processor = constrain.logits_processor(response_format, tok, vocab, {eos}, len(ids))
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=200,
        logits_processor=LogitsProcessorList([processor]),
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
        **kwargs,
    )
    new = out[0, len(ids) :].tolist()
    return tok.decode(new, skip_special_tokens=True), new[-1] == eos


def validate(value: object, schema: dict) -> None:
    """jsonschema's validate where it is installed (it is not a studio dependency), else a check by hand of the
    object schemas these tests use."""
    try:
        import jsonschema
    except ImportError:
        types = {"string": str, "integer": int, "object": dict}
        assert isinstance(value, dict) and set(schema["required"]) <= set(value)
        assert set(value) <= set(schema["properties"])
        for key, item in value.items():
            expected = schema["properties"][key]
            assert isinstance(item, types[expected["type"]]) and not isinstance(item, bool)
            if isinstance(item, str):
                assert len(item) <= expected.get("maxLength", len(item))
            if isinstance(item, int):
                assert expected.get("minimum", item) <= item <= expected.get("maximum", item)
        return
    jsonschema.validate(value, schema)


def test_a_json_schema_constrains_a_random_lm(tiny_models):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    text, ended = _generate(tiny_models, fmt)
    assert ended, text  # the grammar completed and let EOS through
    validate(json.loads(text), PERSON)


def test_a_schema_the_library_cannot_compile_is_a_field_error():
    for schema in ({"type": "florp"}, {"$ref": "#/definitions/missing"}):
        with pytest.raises(FieldError) as err:
            constrain.check({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert err.value.param == "response_format" and "JSON schema" in str(err.value)
