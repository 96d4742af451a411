"""http(s) image URLs in /v1/chat/completions messages: fetched only when the owner allows it (--allow-image-urls)
and only for requests from the studio's own machine; otherwise left for the chat engine to refuse with a clear
message (studio/engines/vision.py). A fetched image becomes a data: URL, checked like any other image."""

from __future__ import annotations

import base64
from typing import Any

from studio.engines.vision import MAX_IMAGE_BYTES
from studio.errors import InputError

FETCH_TIMEOUT_S = 10


def web_image_parts(body: Any) -> list[dict]:
    """The image_url parts of the body's messages whose URL is an http(s) address (the dicts holding the URL)."""
    out = []
    messages = body.get("messages") if isinstance(body, dict) else None
    for m in messages if isinstance(messages, list) else ():
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else ():
            holder = part.get("image_url") if isinstance(part, dict) else None
            url = holder.get("url") if isinstance(holder, dict) else None
            if isinstance(url, str) and url[:8].lower().startswith(("http://", "https://")):
                out.append(holder)
    return out


def fetch_image_urls(body: Any, allowed: bool) -> None:
    """Replace the body's http(s) image URLs by data: URLs of what they point at, when `allowed` (the owner's flag,
    and a local request). Refused ones stay as they are; the engine says why."""
    if not allowed:
        return
    for holder in web_image_parts(body):
        holder["url"] = _fetch(holder["url"])


def _fetch(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as resp:  # noqa: S310 - http(s) only, checked
            data = resp.read(MAX_IMAGE_BYTES + 1)
            kind = resp.headers.get_content_type() or "application/octet-stream"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(f"The image at {url[:80]} could not be fetched ({str(reason)[:120]}).") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"The image at {url[:80]} is larger than {MAX_IMAGE_BYTES // 1024**2} MB.")
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
