"""Images in chat: reading the images of a message (PIL images, bytes, data: URLs) with concise errors, and the
prompt of a vision-language model (its processor's chat template, image tokens and image tensors).

No gradio here. The chat engine calls `image_from_part` while it checks messages, and `vision_prompt` in place of
the tokenizer's chat template when the model has a processor.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from studio.errors import InputError

MAX_IMAGE_PIXELS = 64_000_000  # decoded size at most (8000 x 8000); larger ones are refused before decoding
MAX_IMAGE_BYTES = 32 * 1024**2  # encoded bytes of one image at most
MAX_SIDE = 2048  # longer sides are downscaled to this first (keeping the aspect): no model's processor uses more
MAX_IMAGES = 16  # images in one request at most
IMAGE_PART_TYPES = ("image_url", "image", "input_image")
URL_TIP = (
    "Send the image itself as a data: URL (base64). The owner can let the studio fetch image URLs for local "
    "requests with --allow-image-urls."
)


class PromptIds(list):
    """Token ids of a vision model's prompt, carrying the processor's other inputs (pixel_values, image sizes or
    grids) for `generate`, and how many of the ids are image tokens."""

    def __init__(self, ids: list[int], inputs: dict[str, Any], image_tokens: int, images: int) -> None:
        super().__init__(ids)
        self.inputs = inputs
        self.image_tokens = image_tokens
        self.images = images


def is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES


def image_from_part(part: dict, what: str) -> Any:
    """The PIL image (RGB, at most MAX_SIDE on its longer side) of an OpenAI image part: {"type": "image_url",
    "image_url": {"url": "data:image/png;base64,..."}} (or the url as a plain string), or the studio's own
    {"type": "image", "image": PIL image | bytes | data: URL}. `what` names it in errors ("Message 2's image 1")."""
    if part.get("type") == "image":
        value = part.get("image")
    else:
        value = part.get("image_url")
        if isinstance(value, dict):
            value = value.get("url")
    if value is None:
        raise InputError(f"{what} has no image: send a data: URL in image_url.url.")
    from PIL import Image

    if isinstance(value, Image.Image):
        return _fit(_checked(value, what))
    if isinstance(value, (bytes, bytearray)):
        return decode_image(bytes(value), what)
    if not isinstance(value, str):
        raise InputError(f"{what} must be a data: URL (text), not {type(value).__name__}.")
    return decode_image(data_url_bytes(value, what), what)


def data_url_bytes(url: str, what: str) -> bytes:
    """The bytes of a base64 data: URL; a web address or anything else is refused with what to send instead."""
    head = url[:12].lower()
    if head.startswith(("http://", "https://")):
        shown = url if len(url) <= 80 else url[:77] + "..."
        raise InputError(f"{what} is a web address ({shown}); the studio does not fetch images from the web.", URL_TIP)
    if not head.startswith("data:"):
        raise InputError(f"{what} is not a data: URL (data:image/png;base64,...).", URL_TIP)
    meta, sep, payload = url.partition(",")
    if not sep or not meta.lower().endswith(";base64"):
        raise InputError(f"{what} is a data: URL without base64 data (data:image/png;base64,...).")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InputError(f"{what} is larger than {MAX_IMAGE_BYTES // 1024**2} MB; send a smaller image.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}'s data: URL is not valid base64.") from None


def decode_image(data: bytes, what: str) -> Any:
    """A PIL image from encoded bytes, refusing what is not an image, what is damaged and what is too big (the size
    is read from the header before any pixel is decoded, so a decompression bomb costs nothing)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(f"{what} is empty (0 bytes).")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{what} is larger than {MAX_IMAGE_BYTES // 1024**2} MB; send a smaller image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(f"{what} is not an image the studio can read (PNG, JPEG, WebP, GIF or BMP).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(_too_big(what, None)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{what} is a damaged image ({_first_line(exc)}).") from None
    _checked(img, what)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # cut short, bad CRC or bad compressed data
        fmt = img.format or "image"
        raise InputError(f"{what} is a damaged {fmt} file: {_first_line(exc)}.", "Save or export it again.") from None
    return _fit(img)


def _checked(img: Any, what: str) -> Any:
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError(f"{what} has no pixels ({width}x{height}).")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(_too_big(what, (width, height)))
    return img


def _too_big(what: str, size: tuple[int, int] | None) -> str:
    limit = MAX_IMAGE_PIXELS // 1_000_000
    if size is None:
        return f"{what} is larger than {limit} megapixels; the studio takes images up to {limit} megapixels."
    w, h = size
    return (
        f"{what} is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); the studio takes images up to {limit} megapixels."
    )


def _fit(img: Any) -> Any:
    """RGB, the longer side at most MAX_SIDE (a copy: the caller's image is not changed)."""
    out = img.convert("RGB") if img.mode != "RGB" else img.copy()
    if max(out.size) > MAX_SIDE:
        out.thumbnail((MAX_SIDE, MAX_SIDE))
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def vision_prompt(lm: Any, messages: list[dict], model_name: str) -> PromptIds:
    """The conversation through the processor's chat template, each image of a message before its text, and the
    processor's inputs for the images of `messages`."""
    processor = lm.processor
    images = [img for m in messages for img in m.get("images") or ()]
    turns = []
    for m in messages:
        parts: list[dict] = [{"type": "image"} for _ in m.get("images") or ()]
        parts.append({"type": "text", "text": m["content"]})
        turns.append({**{k: v for k, v in m.items() if k != "images"}, "content": parts})
    try:
        text = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        out = processor(text=[text], images=images or None, return_tensors="pt")
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"{model_name}'s processor refused the message: {_first_line(exc)}",
            "Leave the model's image placeholders (such as <image>) out of the text.",
        ) from None
    ids = out["input_ids"][0].tolist()
    inputs = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    image_id = getattr(processor, "image_token_id", None)
    if image_id is None:
        image_id = getattr(lm.model.config, "image_token_id", None)
    count = sum(1 for t in ids if t == image_id) if image_id is not None else 0
    return PromptIds(ids, inputs, count, len(images))


def image_token_count(lm: Any, width: int, height: int) -> int:
    """Context tokens the loaded model's processor gives one width x height image."""
    data = lm.processor._get_num_multimodal_tokens(image_sizes=[(height, width)])  # vLLM uses it the same way
    return int(data.num_image_tokens[0])
