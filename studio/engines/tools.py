"""Tools (function calling) for chat: checking OpenAI's `tools` and `tool_choice`, rendering them and the tool
turns of a conversation through a chat template (or, for a template that knows nothing of tools, in the Hermes
format most instruct models were trained on), the forced call's JSON schema, and parsing a reply into
`tool_calls`.

Reply formats parsed: Hermes/Qwen `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (one or more),
Llama 3.1 JSON `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`), and Mistral
`[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (the marker may be a special token the decoder dropped, so a
bare JSON list of calls counts too). Anything else, or a call of a tool the request did not offer, is text.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from studio.errors import FieldError

MAX_TOOLS = 128  # as OpenAI
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


# ----- request ---------------------------------------------------------------------------------------------


def check_tools(raw: Any) -> tuple[dict, ...]:
    """OpenAI's `tools` as {"type": "function", "function": {name, description, parameters}} dicts; FieldError
    (param "tools") for anything else."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise FieldError("'tools' must be a list of {'type': 'function', 'function': {...}} objects.", param="tools")
    if len(raw) > MAX_TOOLS:
        raise FieldError(f"'tools' holds {len(raw)} tools; at most {MAX_TOOLS}.", param="tools")
    out, names = [], set()
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise FieldError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}.", param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise FieldError(
                f"tools[{i}] needs a function 'name' of letters, digits, _ or - (at most 64).", param="tools"
            )
        if name in names:
            raise FieldError(f"tools[{i}]: the function name {name!r} is used twice.", param="tools")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise FieldError(f"tools[{i}]'s 'parameters' must be a JSON schema object.", param="tools")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise FieldError(f"tools[{i}]'s 'description' must be text.", param="tools")
        function = {"name": name, "description": description or "", "parameters": params}
        if fn.get("strict") is not None:
            function["strict"] = bool(fn["strict"])
        out.append({"type": "function", "function": function})
    return tuple(out)


def check_tool_choice(raw: Any, tools: tuple[dict, ...]) -> str | None:
    """ "none", "auto", "required" or the name of the function to call; None when no tools are given. FieldError
    (param "tool_choice") for an unknown choice or function."""
    if raw is None:
        return "auto" if tools else None
    if not tools:
        raise FieldError("'tool_choice' needs 'tools'.", param="tool_choice")
    if raw in ("none", "auto", "required"):
        return raw
    fn = raw.get("function") if isinstance(raw, dict) and raw.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise FieldError(
            "'tool_choice' must be none, auto, required or {'type': 'function', 'function': {'name': ...}}.",
            param="tool_choice",
        )
    if name not in names_of(tools):
        raise FieldError(f"'tool_choice' names the function {name!r}, which is not in 'tools'.", param="tool_choice")
    return name


def names_of(tools: tuple[dict, ...]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def call_format(tools: tuple[dict, ...], name: str | None = None) -> dict:
    """A json_schema response_format whose every reply is a call `{"name": ..., "arguments": {...}}` of the named
    tool (or of any of them): what tool_choice "required" or a named function decodes with."""
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for fn in chosen
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}


# ----- prompt ----------------------------------------------------------------------------------------------


def renders_tools(template: str | None) -> bool:
    """Whether a chat template's source uses the `tools` it is given."""
    return bool(template) and re.search(r"\btools\b", template) is not None


def _arguments(call: dict) -> Any:
    """A history tool call's arguments as an object (templates write them with `tojson`)."""
    args = call.get("function", {}).get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args if args is not None else {}


def tool_system_prompt(tools: tuple[dict, ...]) -> str:
    """The Hermes tool prompt, for templates that do not render tools themselves."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def render(messages: list[dict], tools: tuple[dict, ...], template: str | None) -> tuple[list[dict], list | None]:
    """The messages and `tools` argument to give a chat template. A template that uses `tools` gets them and the
    tool turns as OpenAI writes them (arguments as objects); any other gets plain system/user/assistant turns:
    the tools in the system message, calls as <tool_call> text, results as <tool_response> user turns."""
    native = renders_tools(template)
    has_tool_turns = any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    if native:
        out = []
        for m in messages:
            if m.get("tool_calls"):
                calls = [
                    {**c, "function": {**c.get("function", {}), "arguments": _arguments(c)}} for c in m["tool_calls"]
                ]
                m = {**m, "tool_calls": calls}
            out.append(m)
        return out, list(tools) or None
    if not tools and not has_tool_turns:
        return messages, None
    out = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        elif m.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>\n"
                + json.dumps({"name": c["function"]["name"], "arguments": _arguments(c)}, ensure_ascii=False)
                + "\n</tool_call>"
                for c in m["tool_calls"]
            )
            out.append({"role": "assistant", "content": f"{content}\n{calls}".strip()})
        else:
            out.append({"role": role, "content": content})
    if tools:
        prompt = tool_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}".strip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


# ----- reply -----------------------------------------------------------------------------------------------


def _call(obj: Any, names: list[str]) -> dict | None:
    """One OpenAI tool call from a parsed {"name", "arguments"/"parameters"} object, or None."""
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_calls(text: str, names: list[str]) -> tuple[str | None, list[dict]] | None:
    """(the text before the calls or None, the tool calls) when the reply is one or more well-formed calls of the
    offered tools; None when it is text (also when a call is malformed or names an unknown tool)."""
    stripped = text.strip()
    if not stripped or not names:
        return None
    if "<tool_call>" in stripped:  # Hermes / Qwen
        head = stripped.split("<tool_call>", 1)[0].strip()
        bodies = CALL_TAG.findall(stripped)
        rest = CALL_TAG.sub("", stripped[len(head) :]).strip()
        if not bodies or rest:
            return None
        calls = [_call(_json(b), names) for b in bodies]
        return (head or None, calls) if all(calls) else None
    body = stripped
    for marker in ("[TOOL_CALLS]", "<|python_tag|>"):
        if body.startswith(marker):
            body = body[len(marker) :].strip()
    parsed = _json(body)
    if isinstance(parsed, dict):  # Llama 3.1 JSON (and the studio's own forced calls)
        parsed = [parsed]
    if not isinstance(parsed, list) or not parsed:  # Mistral: a list of calls
        return None
    calls = [_call(obj, names) for obj in parsed]
    return (None, calls) if all(calls) else None
