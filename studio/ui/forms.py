"""Forms read by key: a tab's event gets its widgets' values as one frozen dataclass whose fields are named after
the widgets, never as a dozen positional values (LLaMA-Factory's runner reads its form the same way).

`bind(handler, Form, widgets)` returns the function Gradio calls and the input list in the form's field order
(or its `API_ORDER`: the order API clients send values in). The handler is a plain function or method taking the form,
the request and, when asked for, a gr.Progress; tests call it directly with a form they build.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

import gradio as gr

from studio.errors import InputError

F = TypeVar("F")


def field_names(form: type) -> list[str]:
    return [f.name for f in fields(form)]


def api_order(form: type) -> list[str]:
    """The order Gradio sends a form's widgets in: its `API_ORDER` when it has one (a form made of other forms),
    else its fields' order. Every field exactly once."""
    names = list(getattr(form, "API_ORDER", None) or field_names(form))
    if sorted(names) != sorted(field_names(form)):
        raise TypeError(f"{form.__name__}.API_ORDER must name each of its fields once")
    return names


def bind(
    handler: Callable[..., Any], form: type[F], widgets: Mapping[str, Any], *, progress: gr.Progress | None = None
) -> tuple[Callable[..., Any], list[Any]]:
    """(event function, inputs): Gradio sends the widgets named by `form`'s fields in that order, the event builds
    the form by name and calls `handler(form, request=..., [progress=...])`. Generators stay generators."""
    names = api_order(form)
    inputs = [widgets[name] for name in names]

    def make(values: tuple[Any, ...]) -> F:
        return form(**dict(zip(names, values, strict=True)))

    generator = inspect.isgeneratorfunction(handler)
    count = len(names)

    def split(args: tuple[Any, ...]) -> tuple[Any, F, dict[str, Any]]:
        if len(args) != 1 + count + (progress is not None):  # a wiring mistake, never a silent shift
            raise ValueError(
                f"{handler.__name__} takes the request, {count} values and its progress: {len(args)} sent"
            )
        extra = {"progress": args[1 + count]} if progress is not None else {}
        return args[0], make(args[1 : 1 + count]), extra

    if generator:

        def event(*args: Any) -> Any:
            request, form_values, extra = split(args)
            yield from handler(form_values, request=request, **extra)

    else:

        def event(*args: Any) -> Any:
            request, form_values, extra = split(args)
            return handler(form_values, request=request, **extra)

    # what Gradio reads: the request by its annotation, a gr.Progress by its default (a download then shows), and
    # the form's field names, which become the API's parameter names (gradio_client shows them, and takes them by
    # keyword) instead of param_0 ... param_29
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("request", kind, annotation=gr.Request)]
    params += [inspect.Parameter(name, kind) for name in names]
    if progress is not None:
        params.append(inspect.Parameter("progress", kind, default=progress))
    event.__signature__ = inspect.Signature(params)
    event.__annotations__ = {"request": gr.Request}
    event.__name__ = event.__qualname__ = getattr(handler, "__name__", "event")
    return event, inputs


def whole(value: Any, name: str) -> int:
    """A widget's whole number, or an InputError naming the widget."""
    if value is None or value == "":
        raise InputError(f"{name} must be a whole number.")
    number = float(value)
    if number != int(number):
        raise InputError(f"{name} must be a whole number, not {number:g}.")
    return int(number)


def number(value: Any, name: str) -> float:
    """A widget's number, or an InputError naming the widget."""
    if value is None or value == "":
        raise InputError(f"{name} must be a number.")
    return float(value)
