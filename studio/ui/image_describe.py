"""The Image tab's Describe (AUTOMATIC1111's Interrogate: the loaded vision model writes a prompt for an image) and
Ask in Chat (the image goes to the Chat tab's images, the Chat tab opens).

Thin handlers: an image file -> an image message -> ctx.chat.complete() -> the prompt box. No torch here.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.engines.chat import ChatParams
from studio.errors import InputError
from studio.ui import messages as msg

# a prompt is short (CLIP reads 77 tokens); a fixed seed, so Describe twice gives the same prompt
DESCRIBE_PARAMS = ChatParams(max_new_tokens=77, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=0)


def chosen_image(dropped: str | None, selected: str | None) -> str | None:
    """The image to describe or ask about: the one dropped into the box, else the one clicked in the gallery."""
    for path in (dropped, selected):
        if path and str(path).strip():
            return str(path)
    return None


def describe_messages(image: bytes) -> list[dict]:
    """The question Describe asks: the image, then the request for a Stable Diffusion prompt."""
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": msg.DESCRIBE_ASK}]}
    ]


def prompt_from_reply(text: str) -> str:
    """The reply as a prompt: its first non-empty line, without control characters, and without quotes or a
    "Prompt:" label around it."""
    printable = "".join(c for c in (text or "").replace("\r", "\n") if c == "\n" or unicodedata.category(c) != "Cc")
    line = next((ln.strip() for ln in printable.split("\n") if ln.strip()), "")
    if line.lower().startswith("prompt:"):
        line = line[len("prompt:") :].strip()
    return line.strip("\"'` ").strip()


class Describer:
    """Describe's handler (one per page build)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    @msg.user_errors
    def describe(self, dropped: str | None, selected: str | None) -> tuple[str, str]:
        models = self.ctx.chat.vision_models()  # loaded or parked; the most recently used first
        if not models:
            raise InputError(msg.DESCRIBE_NO_VISION, msg.DESCRIBE_NO_VISION_TIP)
        path = chosen_image(dropped, selected)
        if path is None:
            raise InputError(msg.DESCRIBE_NO_IMAGE)
        spec = models[0]
        try:
            image = Path(path).read_bytes()
        except OSError:
            image = b""  # the engine names it: "Message 1's image 1 is empty (0 bytes)."
        reply = self.ctx.chat.complete(spec, describe_messages(image), DESCRIBE_PARAMS)
        prompt = prompt_from_reply(reply.text)
        if not prompt:
            raise InputError(msg.DESCRIBE_EMPTY.format(model=spec.name))
        return prompt, msg.DESCRIBED.format(model=spec.name)


def ask_in_chat(dropped: str | None, selected: str | None) -> tuple:
    """The image into the Chat tab's images box, and the Chat tab opened."""
    path = chosen_image(dropped, selected)
    if path is None:
        raise gr.Error(msg.ASK_NO_IMAGE)
    return [path], gr.Tabs(selected="chat")


def layout(w: dict[str, Any]) -> None:
    """Below the gallery: an image box (or the gallery's selected image) with Describe and Ask in Chat."""
    w["describe_image"] = gr.Image(
        type="filepath",
        label="Image to describe or ask about (drop one, or click one in the gallery)",
        height=200,
        elem_id="image-describe-source",
    )
    with gr.Row():
        w["describe"] = gr.Button("Describe (prompt from the image)", elem_id="image-describe")
        w["ask_in_chat"] = gr.Button("Ask in Chat", elem_id="image-ask-in-chat")


def wire(ctx: AppContext, w: dict[str, Any]) -> None:
    describer = Describer(ctx)
    w["describe"].click(
        describer.describe,
        [w["describe_image"], w["selected_path"]],
        [w["prompt"], w["status"]],
        api_name="image_describe",
        show_progress_on=[w["status"]],
        concurrency_id="gpu",
        concurrency_limit=1,
    )
    w["describer"] = describer


def wire_ask_in_chat(image: dict[str, Any], chat_images: gr.components.Component, tabs: gr.Tabs) -> None:
    """Called by the layout once every tab exists."""
    image["ask_in_chat"].click(
        ask_in_chat,
        [image["describe_image"], image["selected_path"]],
        [chat_images, tabs],
        api_name="image_ask_in_chat",
        concurrency_id="ui",
        concurrency_limit=None,
        show_progress="hidden",
    )
