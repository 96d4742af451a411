"""Handlers read their forms by key, and one decorator turns errors into the page's message (no browser)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.errors import InputError
from studio.ui import messages as msg
from studio.ui.forms import api_order, bind


@pytest.fixture
def ctx(tmp_path):
    return build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)


def _endpoint(app, api_name):
    (fn,) = [f for f in app.fns.values() if f.api_name == api_name]
    return fn


def test_each_endpoint_sends_its_form_in_the_order_api_clients_use(ctx):
    """The API's positional order is the forms' order: moving a widget in the layout never shifts a value."""
    from studio.ui.chat_tab import ReplyForm
    from studio.ui.finetune_tab import AnalyseForm, JobForm, StartForm
    from studio.ui.image_tab import DrawForm, RestoreForm
    from studio.ui.layout import build_app
    from studio.ui.speech_tab import TranscribeForm

    app = build_app(ctx)
    tabs = app.studio_components
    widgets = {"chat": tabs["chat"], "finetune": tabs["finetune"], "image": tabs["image"], "speech": tabs["speech"]}
    cases = [
        ("chat", "chat", ReplyForm, 17),
        ("chat_regenerate", "chat", ReplyForm, 17),
        ("ft_analyse", "finetune", AnalyseForm, 14),
        ("ft_estimate", "finetune", JobForm, 23),
        ("ft_start", "finetune", StartForm, 34),
        ("image_generate", "image", DrawForm, 14),
        ("image_restore", "image", RestoreForm, 12),
        ("speech_transcribe", "speech", TranscribeForm, 11),
    ]
    for api_name, tab, form, count in cases:
        fn = _endpoint(app, api_name)
        names = api_order(form)
        assert len(names) == count, api_name
        assert [b._id for b in fn.inputs] == [widgets[tab][n]._id for n in names], api_name
    start = api_order(StartForm)
    assert (
        start[:2] == ["file", "shape"]
        and start[9:11] == ["eval_share", "model"]
        and start[-4:]
        == [
            "objective",
            "beta",
            "loss_type",
            "votes",
        ]
    )


def test_a_bound_event_builds_the_form_by_name_and_keeps_generators_streaming():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Form:
        a: int
        b: str

    seen = []

    def plain(form, request=None):
        seen.append((form, request))
        return form.a

    def stream(form, request=None, progress=None):
        yield form.b
        yield progress

    widgets = {"a": "widget-a", "b": "widget-b", "c": "unused"}
    event, inputs = bind(plain, Form, widgets)
    assert inputs == ["widget-a", "widget-b"] and event("req", 1, "x") == 1 and seen == [(Form(1, "x"), "req")]
    tracker = gr.Progress()
    event, _ = bind(stream, Form, widgets, progress=tracker)
    assert list(event("req", 2, "y", tracker)) == ["y", tracker]
    with pytest.raises(ValueError):  # a value too many or too few is a wiring mistake, never a silent shift
        list(event("req", 2, tracker))
    # the API's parameters are the form's fields by name (gradio_client shows them), the request and progress
    # found by Gradio where it looks for them
    import inspect

    signature = inspect.signature(event)
    assert list(signature.parameters) == ["request", "a", "b", "progress"]
    assert signature.parameters["progress"].default is tracker and event.__annotations__["request"] is gr.Request

    @dataclass(frozen=True)
    class Bad:
        a: int

        API_ORDER = ("a", "a")

    with pytest.raises(TypeError, match="must name each of its fields once"):
        api_order(Bad)


def test_user_errors_turns_errors_into_the_pages_message_in_plain_and_generator_handlers():
    @msg.user_errors
    def plain():
        raise InputError("Pick a model first.", "Any model will do.")

    with pytest.raises(gr.Error, match="Pick a model first. Any model will do."):
        plain()

    @msg.user_errors
    def broken():
        raise KeyError("oops")

    with pytest.raises(gr.Error, match="Something went wrong: KeyError"):
        broken()

    def kept(owner, last, text, line):
        return ("kept", last, line)

    @msg.user_errors(final=kept)
    def replies(owner):
        yield "partial"
        raise InputError("Out of tokens.", "Shorten it.")

    out = []
    with pytest.raises(gr.Error, match="Out of tokens. Shorten it."):
        for update in replies("tab"):
            out.append(update)
    assert out == ["partial", ("kept", "partial", "Out of tokens.")]  # what the run made stays on the page

    @msg.user_errors(final=kept, warn=True)
    def draws(owner):
        raise InputError("Not drawn.")
        yield  # a generator

    assert list(draws("tab")) == [("kept", None, "Not drawn.")]  # a warning, and no error: the gallery stays


def test_handlers_are_called_directly_with_a_form(ctx, tmp_path):
    from studio.ui.finetune_tab import FinetuneTab, JobForm
    from studio.ui.forms import field_names

    values = dict.fromkeys(field_names(JobForm))
    values.update(model="/no/such/base", method="lora", rank=16, alpha=32, dropout=0.05, targets="", lr=2e-4)
    values.update(schedule="cosine", warmup=0.03, epochs=1, max_steps=0, batch=1, accum=1, cutoff=256)
    values.update(packing=True, checkpointing=False, on_prompt=False, eval_every=10, seed=1, keep=1)
    owner = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={"host": "127.0.0.1:7860"})
    with pytest.raises(gr.Error, match="no such model folder"):
        FinetuneTab(ctx).estimate(JobForm(**values), request=owner)
    with pytest.raises(gr.Error, match="Remote visitors cannot plan fine-tuning"):  # before the path is looked at
        FinetuneTab(ctx).estimate(JobForm(**values), request=SimpleNamespace(client=None, headers={}))
    with pytest.raises(InputError, match="Rank must be a whole number"):
        JobForm(**{**values, "model": str(tmp_path), "rank": None}).job(ctx)
