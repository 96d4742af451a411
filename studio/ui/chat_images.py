"""Images in the Chat tab: a user message with images as the Chatbot shows it, the same message as the chat engine
reads it (OpenAI-style content parts with the image bytes), the images of an exported conversation, and the store
that keeps a message's images on the server (outputs/chat-images/) so that Past chats and a reload show them again:
the browser keeps only their names.

No torch and no image decoding here: the engine checks each image (not an image, damaged, too big, too many) and
its message reaches the page as the reply's error, with the conversation kept.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

STORE = "chat-images"  # the folder under outputs/ where chat messages' images are kept
# a kept image's name: the first 16 hex digits of its SHA-256, then its own name (in the characters Gradio keeps)
STORED_NAME = re.compile(r"[0-9a-f]{16}-[A-Za-z0-9._-]{1,80}")
MAX_KEPT = 16  # images per message a browser may name back (the engine takes at most 16 per request)


def user_message(text: str | None, files: list | None) -> dict:
    """The Chatbot message for a question: the images first (as the engine puts them in the prompt), then the text;
    a plain text message when there are no images."""
    paths = [p for p in (file_path(f) for f in files or ()) if p]
    if not paths:
        return {"role": "user", "content": text or ""}
    parts: list[Any] = [{"path": p} for p in paths]
    if text and text.strip():
        parts.append(text)
    return {"role": "user", "content": parts}


def file_path(item: Any) -> str | None:
    """The path of an uploaded file as gr.File or the Chatbot hands it over (a path, or a dict with "path")."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        inner = item.get("file") if isinstance(item.get("file"), dict) else item
        path = inner.get("path")
        return str(path) if path else None
    path = getattr(item, "path", None) or getattr(item, "name", None)
    return str(path) if path else None


def image_paths(content: Any) -> list[str]:
    """The files of a Chatbot message's content (its file parts), in order."""
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, (list, tuple)):
        return []
    found = []
    for part in content:
        if isinstance(part, dict) and (part.get("type") == "file" or "path" in part or "file" in part):
            path = file_path(part)
            if path:
                found.append(path)
    return found


def engine_content(text: str, paths: list[str]) -> str | list[dict]:
    """A user message's content for the chat engine: the text alone, or image parts (the files' bytes, which the
    engine decodes and checks) before the text part."""
    if not paths:
        return text
    parts: list[dict] = [{"type": "image", "image": _read(p)} for p in paths]
    parts.append({"type": "text", "text": text})
    return parts


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""  # the engine names it: "Message 1's image 1 is empty (0 bytes)."


def export_images(history: list[dict], folder: Path, stem: str) -> list[list[str]]:
    """Copy each message's images beside the exported Markdown, into folder/<stem>-images/; returns, per message of
    `history`, the copied files' paths relative to `folder` (for the Markdown's image links)."""
    copied: list[list[str]] = []
    images = folder / f"{stem}-images"
    n = 0
    for m in history:
        names = []
        for path in image_paths(m.get("content")) if isinstance(m, dict) else ():
            src = Path(path)
            if not src.is_file():
                continue
            n += 1
            images.mkdir(parents=True, exist_ok=True)
            dest = images / f"{n:02d}-{src.name}"
            shutil.copyfile(src, dest)
            names.append(f"{images.name}/{dest.name}")
        copied.append(names)
    return copied


def store(outputs: Path) -> Path:
    """The folder that keeps chat messages' images (served, as all of outputs/ is)."""
    return Path(outputs) / STORE


def keep(files: list | None, folder: Path) -> list[str]:
    """Copy uploaded files into the store under their content's name (the same image is kept once); returns the kept
    paths, in order. A file that cannot be read stays where it is (the engine names it when it reads the message)."""
    kept = []
    for path in (file_path(f) for f in files or ()):
        if not path:
            continue
        src = Path(path)
        try:
            data = src.read_bytes()
        except OSError:
            kept.append(path)
            continue
        digest = hashlib.sha256(data).hexdigest()[:16]
        kept_already = src.name.startswith(f"{digest}-") and STORED_NAME.fullmatch(src.name)  # Gradio's copy of one
        dest = Path(folder) / (src.name if kept_already else f"{digest}-{_safe_name(src.name)}")
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(f".{dest.name}.partial")
            partial.write_bytes(data)
            partial.replace(dest)  # never a half-written image under the kept name
        kept.append(str(dest))
    return kept


def _safe_name(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:60] or "image"
    suffix = re.sub(r"[^A-Za-z0-9]+", "", suffix)[:10]
    return f"{stem}.{suffix}" if suffix else stem


def clean_names(raw: Any) -> list[str]:
    """The image names a browser sent back that can be kept images' (nothing else: no paths, no other files)."""
    if not isinstance(raw, list):
        return []
    return [n for n in raw if isinstance(n, str) and STORED_NAME.fullmatch(n)][:MAX_KEPT]


def stored_paths(folder: Path, names: list[str]) -> list[str]:
    """The store's files for `names` (checked again: only plain names, only files there); gone ones are left out."""
    found = []
    for name in clean_names(names):
        path = Path(folder) / name
        if path.is_file() and not path.is_symlink():
            found.append(str(path))
    return found


# An image pasted into the message box goes into the images box (as if dropped there); pasted text is left alone.
PASTE_JS = """
() => {
  document.addEventListener("paste", (event) => {
    if (!event.target.closest || !event.target.closest("#chat-input")) return;
    const images = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    const box = document.querySelector("#chat-images input[type=file]");
    if (!images.length || !box) return;
    event.preventDefault();
    const files = new DataTransfer();
    images.forEach((f, i) => files.items.add(new File([f], f.name || `pasted-${i + 1}.png`, {type: f.type})));
    box.files = files.files;
    box.dispatchEvent(new Event("change", {bubbles: true}));
  });
}
"""


def connect_paste(app: Any) -> None:
    """Once per page load: pasting an image into the Chat tab's message box adds it to the images box."""
    app.load(None, None, None, js=PASTE_JS, api_visibility="private", queue=False, show_progress="hidden")
