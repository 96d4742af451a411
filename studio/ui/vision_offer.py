"""The Chat tab's offer of a vision model: a question with images sent to a text-only model is refused by the engine;
under the refusal the page names the loaded vision models (and, for the owner, the recommended ones) and one click
on "Use <model>" picks it and answers the same conversation, its images kept.

The offer shows while the conversation ends with an unanswered question, has images and the picked model cannot see
them; it hides once a reply is written, the chat is cleared or another conversation opens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.errors import InputError, StudioError
from studio.models.specs import CATALOG, PRECISIONS, CatalogEntry, ModelSpec
from studio.models.vision import vision_spec
from studio.security import require_owner
from studio.ui import chat_images
from studio.ui import messages as msg

LOADED = " (loaded)"


# ----- pure functions on plain data ---------------------------------------------------------------------------------


def wants_vision(history: list | None) -> bool:
    """Whether the conversation waits for an answer to a question (its last message) and has images in it."""
    shown = [m for m in history or [] if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    if not shown or shown[-1].get("role") != "user":
        return False
    return any(chat_images.image_paths(m.get("content")) for m in shown if m.get("role") == "user")


def offered(loaded: list[ModelSpec], catalog: tuple[CatalogEntry, ...], owner: bool) -> list[tuple[str, str]]:
    """The vision models to switch to, as (label, picker value): the loaded ones (most recently used first), then,
    for the owner (who may load models), the recommended ones not loaded yet."""
    options = [(f"{spec.name}{LOADED}", spec.source) for spec in loaded]
    if owner:
        taken = {value for _, value in options}
        options += [(e.label, e.hub_id) for e in catalog if e.kind == "chat" and e.images and e.hub_id not in taken]
    return options


def offer_text(model: str, options: list[tuple[str, str]]) -> str:
    """The offer's words: which model cannot see the images, which vision models can answer instead."""
    loaded = [label.removesuffix(LOADED) for label, _ in options if label.endswith(LOADED)]
    recommended = [label for label, _ in options if not label.endswith(LOADED)]
    parts = []
    if loaded:
        parts.append(msg.VISION_OFFER_LOADED.format(names=", ".join(loaded)))
    if recommended:
        parts.append(msg.VISION_OFFER_RECOMMENDED.format(names=", ".join(recommended)))
    return msg.VISION_OFFER.format(model=model, models="; ".join(parts))


def use_label(options: list[tuple[str, str]], value: str | None) -> str:
    """The button's words for the vision model chosen in the offer."""
    label = next((label for label, v in options if v == value), value or "")
    return msg.VISION_USE.format(model=label.removesuffix(LOADED))


# ----- handlers -----------------------------------------------------------------------------------------------------


class VisionOffer:
    """The offer's handlers. `tab` is the Chat tab's handlers (its `owned_spec` says which model a visitor may use);
    `model_choices(ctx)` the model picker's list (the vision model taken may have been loaded after the page was)."""

    def __init__(self, tab: Any, model_choices: Callable[[Any], list[tuple[str, str]]]) -> None:
        self.tab = tab
        self.ctx = tab.ctx
        self.model_choices = model_choices

    def offer(self, history: list | None, choice: str | None, precision: str, request: gr.Request = None) -> tuple:
        """(the offer's row, its words, its model list, its button): shown when the picked model cannot see the
        images of the question waiting for an answer and a vision model can."""
        hidden = (gr.Row(visible=False), gr.skip(), gr.skip(), gr.skip())
        if not wants_vision(history):
            return hidden
        try:
            spec = self.tab.owned_spec(choice, precision, request)
        except StudioError:
            return hidden  # no model picked yet, or one this visitor may not use: the reply says so
        try:
            self.ctx.chat.check_takes_images(spec)
            return hidden  # it sees images: nothing to offer
        except InputError:
            pass
        options = offered(self.ctx.chat.vision_models(), CATALOG, self.is_owner(request))
        if not options:
            return hidden
        first = options[0][1]
        return (
            gr.Row(visible=True),
            offer_text(spec.name, options),
            gr.Dropdown(choices=options, value=first),
            gr.Button(value=use_label(options, first)),
        )

    def is_owner(self, request: Any) -> bool:
        try:
            require_owner(self.ctx.security, request, "load models")
        except StudioError:
            return False
        return True

    def relabel(self, pick: str | None) -> gr.Button:
        """Another vision model chosen in the offer: the button names it."""
        options = offered(self.ctx.chat.vision_models(), CATALOG, owner=True)
        return gr.Button(value=use_label(options, pick))

    @msg.user_errors
    def use(self, pick: str | None, choice: str | None, precision: str, request: gr.Request = None) -> tuple:
        """The offer taken: the picker takes the vision model (at the precision it is loaded with, when the picked
        precision would load it again) and the offer hides; the reply that follows answers with it."""
        if not (pick or "").strip():
            raise InputError(msg.PICK_MODEL.format(what="a vision model"))
        spec = self.tab.owned_spec(pick, precision, request)
        loaded = next((s for s in self.ctx.chat.vision_models() if s.source == pick), None)
        precision_update: Any = gr.skip()
        if loaded is not None and vision_spec(spec).key != loaded.key and loaded.precision in PRECISIONS:
            precision_update = loaded.precision
        picker = gr.Dropdown(choices=self.model_choices(self.ctx), value=pick)
        return picker, precision_update, gr.Row(visible=False)


def hide() -> gr.Row:
    return gr.Row(visible=False)


# ----- layout and wiring --------------------------------------------------------------------------------------------


def layout(w: dict[str, Any]) -> None:
    """The offer's row (hidden until a text-only model is sent images), under the stats line."""
    with gr.Row(visible=False, equal_height=True, elem_id="chat-vision-offer") as w["vision_offer"]:
        w["vision_offer_text"] = gr.Markdown(elem_id="chat-vision-offer-text")
        w["vision_pick"] = gr.Dropdown(choices=[], label="Vision model", elem_id="chat-vision-pick", scale=1)
        w["vision_use"] = gr.Button("Use", variant="primary", elem_id="chat-vision-use", scale=0)


LIGHT = {"queue": False, "show_progress": "hidden"}
QUICK = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}


def wire(tab: Any, w: dict[str, Any], replies: list[Any], model_choices: Callable[[Any], list]) -> VisionOffer:
    """The offer's events. `replies` are the tab's reply events (Send, Enter, Regenerate); `w` holds the tab's reply
    step (`reply`) and its button hold and release (`hold`, `release`)."""
    offer = VisionOffer(tab, model_choices)
    row = [w["vision_offer"], w["vision_offer_text"], w["vision_pick"], w["vision_use"]]
    inputs = [w["chatbot"], w["model"], w["precision"]]
    shown = {"fn": offer.offer, "inputs": inputs, "outputs": row, "api_visibility": "private", **LIGHT}
    for reply in replies:  # after a reply, written or refused
        reply.then(**shown)
        reply.failure(**shown)
    w["model"].change(**shown)  # a model that sees images hides it; a text-only one with a question waiting shows it
    for trigger in (w["clear"].click, w["new_chat"].click, w["past"].input, w["delete_chat"].click):
        trigger(hide, None, [w["vision_offer"]], api_visibility="private", **LIGHT)
    w["vision_pick"].input(
        offer.relabel,
        [w["vision_pick"]],
        [w["vision_use"]],
        api_visibility="private",
        **LIGHT,
    )
    # one click: the vision model is picked, then the question waiting is answered as Regenerate answers it
    used = w["vision_use"].click(
        offer.use,
        [w["vision_pick"], w["model"], w["precision"]],
        [w["model"], w["precision"], w["vision_offer"]],
        api_name="chat_use_vision_model",
        **QUICK,
    )
    dropped = used.success(
        tab.redo, [w["chatbot"]], [w["chatbot"], w["asked_after"]], api_visibility="private", **QUICK
    )
    dropped.success(**w["hold"])
    answered = dropped.success(**w["reply"], api_visibility="private")
    answered.then(**w["release"])
    answered.failure(**w["release"])
    answered.then(**shown)
    answered.failure(**shown)
    return offer
