"""Values that the page's widgets cannot read become one line that names the widget.

Gradio turns each value an API client (or a page script) sends into the handler's argument before the handler runs:
a Number rounds it, an Image opens it, a Chatbot validates it against its data model. When that fails Gradio raises
its own exception, and since only gr.Error reaches the client, the caller sees a bare "error" with no message.
`StudioBlocks` checks numbers first (with the widget's label and range in the message) and turns any other failure
to read a value into a gr.Error that names the widget and says what it takes.

It overrides `gr.Blocks.preprocess_data`, a method Gradio does not document as public;
tests/integration/test_bad_inputs.py catches a Gradio that stops calling it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import typing
from typing import Any

import gradio as gr

from studio.ui import messages as msg

log = logging.getLogger(__name__)
FILE_META = {"_type": "gradio.FileData"}
FILE_COMPONENTS = (gr.File, gr.Image, gr.Audio, gr.Video)


def short(value: Any, limit: int = 60) -> str:
    """The value as the client sent it (JSON), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label_of(block: Any, index: int) -> str:
    label = getattr(block, "label", None)
    return str(label) if label else f"Input {index + 1} ({block.get_block_name()})"


def number_problem(block: Any, value: Any, label: str) -> str | None:
    """Why `value` cannot go into a Number or Slider, or None when it can."""
    if value is None:
        return msg.NUMBER_MISSING.format(label=label) if isinstance(block, gr.Slider) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return msg.NUMBER_TYPE.format(label=label, value=short(value))
    if not math.isfinite(value):
        return msg.NUMBER_FINITE.format(label=label, value=value)
    if getattr(block, "precision", None) == 0 and value != int(value):
        return msg.NUMBER_WHOLE.format(label=label, value=f"{value:g}")
    low, high = getattr(block, "minimum", None), getattr(block, "maximum", None)
    if low is not None and value < low:
        return msg.NUMBER_LOW.format(label=label, bound=f"{low:g}", value=f"{value:g}")
    if high is not None and value > high:
        return msg.NUMBER_HIGH.format(label=label, bound=f"{high:g}", value=f"{value:g}")
    return None


def tag_files(value: Any) -> Any:
    """A file payload without Gradio's marker gets it, so Gradio checks that the file was uploaded here (an Image
    payload without it would be opened from any path on the studio's machine)."""
    if isinstance(value, list):
        return [tag_files(v) for v in value]
    if isinstance(value, dict):
        value = {k: tag_files(v) for k, v in value.items()}
        if isinstance(value.get("path"), str) and not value.get("meta"):
            value["meta"] = dict(FILE_META)
    return value


def culprit(block_fn: Any, inputs: list[Any], exc: BaseException) -> int | None:
    """The index of the input that Gradio could not read, when it can be told."""
    found = re.search(r"input component at index (\d+)", str(exc))
    if found:
        return int(found.group(1))
    for i, block in enumerate(block_fn.inputs):
        value = inputs[i] if i < len(inputs) else None
        if value is None:
            continue
        if isinstance(exc, gr.exceptions.InvalidPathError):
            if '"path"' in short(value, 100_000):
                return i
            continue
        model = getattr(block, "data_model", None)
        if model is not None:
            try:
                model.model_validate(value, context={"validate_meta": True})
            except Exception:  # noqa: BLE001 - this is the value that does not fit its data model
                return i
    return None


def unreadable(block_fn: Any, inputs: list[Any], exc: BaseException) -> str:
    """The gr.Error text for a value Gradio failed to read."""
    i = culprit(block_fn, inputs, exc)
    if i is None:
        return msg.INPUT_UNREADABLE_SOMEWHERE.format(action=block_fn.api_name or block_fn.name)
    block, value = block_fn.inputs[i], inputs[i]
    label = label_of(block, i)
    if isinstance(exc, gr.exceptions.InvalidPathError):
        return msg.FILE_NOT_UPLOADED.format(label=label)
    if isinstance(block, gr.Chatbot):
        return msg.CHATBOT_SHAPE.format(label=label)
    if isinstance(block, gr.Image) and isinstance(value, dict) and "path" in value:
        name = str(value.get("orig_name") or value["path"]).replace("\\", "/").rsplit("/", 1)[-1]
        return msg.NOT_AN_IMAGE.format(label=label, name=name[:80])
    if isinstance(block, FILE_COMPONENTS):
        return msg.FILE_SHAPE.format(label=label, value=short(value))
    return msg.INPUT_UNREADABLE.format(label=label, value=short(value))


def openai_messages(value: Any) -> Any:
    """A conversation sent the way OpenAI's API writes it — `{"role": "user", "content": "Hello"}`, content a plain
    string (or None for an assistant turn) — in the shape Gradio's Chatbot reads (content a list of parts); anything
    else is left for Gradio to read (or refuse with the page's message)."""
    if not isinstance(value, list):
        return value
    out = []
    for m in value:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            m = {**m, "content": [{"type": "text", "text": m["content"]}]}
        elif isinstance(m, dict) and m.get("content") is None and "role" in m:
            m = {**m, "content": []}
        out.append(m)
    return out


def event_data_problem(block_fn: Any, event_data: Any) -> str | None:
    """Why the handler cannot get the event data it takes (gr.SelectData, ...), or None when it can. The page sends
    it with each click; an API call sends none, and Gradio would fail building it with a TypeError."""
    try:
        hints = typing.get_type_hints(block_fn.fn)
    except Exception:  # noqa: BLE001 - a hint that does not resolve: Gradio does not fill it in either
        return None
    for hint in hints.values():
        if isinstance(hint, type) and issubclass(hint, gr.EventData):
            try:
                hint(getattr(event_data, "target", None), getattr(event_data, "_data", None))
            except Exception:  # noqa: BLE001 - no event data, or not of the event's shape
                return msg.EVENT_ONLY.format(action=block_fn.api_name or block_fn.name)
    return None


OPTIONAL = "studio_optional"  # set on a widget added at the end of a form: an API call may leave it out


def optional(component: Any) -> Any:
    """Mark a widget that API callers written before it existed may leave out: it then takes its default."""
    setattr(component, OPTIONAL, True)
    return component


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose events answer a value they cannot read with a message that names the widget, and whose
    events are public API endpoints only when wired with an `api_name` (Gradio would otherwise publish every helper
    event under its function's name: /refresh, /refresh_1, /show_plan_2, /lambda, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.default_config
        trigger = config.set_event_trigger

        def named_only(*a: Any, api_name: Any = None, api_visibility: str = "public", **kw: Any) -> Any:
            if api_name is None and api_visibility == "public":
                api_visibility = "private"
            return trigger(*a, api_name=api_name, api_visibility=api_visibility, **kw)

        config.set_event_trigger = named_only

    async def process_api(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        problem = event_data_problem(fn, kwargs.get("event_data"))
        if problem:
            raise gr.Error(problem)
        return await super().process_api(block_fn, inputs, *args, **kwargs)

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False):
        blocks = list(block_fn.inputs)
        name = block_fn.api_name or block_fn.name
        if len(inputs) < len(blocks) and all(
            b.get_block_name() == "state" or getattr(b, OPTIONAL, False) for b in blocks[len(inputs) :]
        ):
            # settings added at the end of a form since a script was written (llama.cpp's KV cache type on 'chat')
            # take the widget's default, as gradio_client fills them in: existing API callers keep working (a
            # session state among them is Gradio's to fill, from the session)
            inputs = [*inputs, *(None if b.get_block_name() == "state" else b.value for b in blocks[len(inputs) :])]
        if len(inputs) < len(blocks):
            # session state (gr.State) is not the caller's to send: Gradio's API fills it in
            sent = [(i, b) for i, b in enumerate(blocks) if b.get_block_name() != "state"]
            labels = ", ".join(label_of(b, i) for i, b in sent)
            raise gr.Error(msg.INPUT_COUNT.format(action=name, wanted=len(sent), got=len(inputs), labels=labels[:600]))
        props = set(getattr(block_fn, "component_prop_inputs", None) or ())
        inputs = list(inputs)
        for i, block in enumerate(blocks):
            if i in props or block.stateful:
                continue
            if state is not None and block._id in state:
                block = state[block._id]  # this session's copy: its range may have been changed by an event
            if isinstance(block, (gr.Number, gr.Slider)):
                problem = number_problem(block, inputs[i], label_of(block, i))
                if problem:
                    raise gr.Error(problem)
            elif isinstance(block, gr.Chatbot):
                inputs[i] = openai_messages(inputs[i])
            elif inputs[i] is not None:
                inputs[i] = tag_files(inputs[i])
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - Gradio could not read a value: say which and what it takes
            log.info("%s: an input could not be read: %s", name, exc)
            raise gr.Error(unreadable(block_fn, inputs, exc)) from None
