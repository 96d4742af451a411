"""Conversations that survive a reload: the open conversation, past conversations to reopen and the chat settings,
kept in the visitor's own browser (gr.BrowserState, i.e. local storage), never on the server, so a shared studio's
visitors never see each other's chats.

A message's images are kept on the server (outputs/chat-images/, by content: chat_images.keep) and named in the
browser's stores, so that a reopened or reloaded conversation shows them and sends them to a vision model again.

Three stores per browser: `current` (the open conversation, rewritten in the page on every change of the chat, by a
small script, so a streaming reply costs no server call), `archive` (past conversations, rewritten only by New chat,
reopen and Delete, capped in size) and `settings` (the tab's settings). What the Past chats list shows is always the
archive with the open conversation folded in (`fold`): an emptied conversation (Clear) leaves the list.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import InputError
from studio.ui import chat_images
from studio.ui import messages as msg

STORAGE_PREFIX = "ml-studio-chat-"  # local storage keys: ml-studio-chat-current, -archive, -settings
MAX_CHATS = 100  # past conversations kept per browser (the oldest go first)
MAX_BYTES = 2_000_000  # past conversations' JSON size per browser (local storage holds about 5 MB per site)
TITLE_CHARS = 60
# the tab's settings kept per browser, by widget name; use_adapter's choices are filled by the server after a load
SETTINGS = (
    "model",
    "precision",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "rep",
    "max_new",
    "seed",
    "context",
    "kv_type",
    "flash_attn",
    "use_adapter",
    "side_by_side",
)
FILLED_AFTER_LOAD = {"use_adapter"}

# Until the page-load restore has run, the signature reads NOT_RESTORED and nothing is written: the widgets' first
# values (an empty chat, the default settings) must not overwrite what the browser kept.
NOT_RESTORED = "(not restored yet)"
# The open conversation as the page holds it, written to `current` on every change of the chat (in the browser, no
# server call), and a short signature (its id and first question) whose change refreshes the Past chats list.
SAVE_CURRENT_JS = """
(messages, current, signature) => {
  if (signature === NOT_RESTORED) return [current, signature];
  const text = (c) => typeof c === "string" ? c : Array.isArray(c) ? c.map(text).join("")
    : c && typeof c === "object" ? String(c.text ?? c.content ?? "") : "";
  // a user message's images by name only (they are kept on the server, in outputs/chat-images/)
  const images = (c) => Array.isArray(c) ? c.flatMap(images)
    : c && typeof c === "object" && c.type === "file" && c.file
      ? [String(c.file.path || "").split(/[\\\\/]/).pop()].filter((n) => STORED_NAME.test(n)) : [];
  const kept = (messages || []).filter((m) => m && (m.role === "user" || m.role === "assistant"))
    .map((m) => {
      const names = m.role === "user" ? images(m.content) : [];
      return names.length ? {role: m.role, content: text(m.content), images: names}
        : {role: m.role, content: text(m.content)};
    });
  const id = (current && current.id) || Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  const first = kept.find((m) => m.role === "user");
  return [{id, messages: kept, updated: Date.now() / 1000}, first ? id + "\\n" + first.content : ""];
}
""".replace("NOT_RESTORED", json.dumps(NOT_RESTORED)).replace("STORED_NAME", f"/^{chat_images.STORED_NAME.pattern}$/")
SAVE_SETTINGS_JS = """
(signature, settings, ...values) => signature === NOT_RESTORED ? settings
  : Object.fromEntries(NAMES.map((name, i) => [name, values[i]]))
""".replace("NOT_RESTORED", json.dumps(NOT_RESTORED)).replace("NAMES", json.dumps(SETTINGS))


# ----- pure functions on plain data ---------------------------------------------------------------------------------


def new_id() -> str:
    return secrets.token_hex(6)


def clean_messages(raw: Any) -> list[dict[str, Any]]:
    """The user and assistant turns of a stored conversation, as text, a user message with the names of its kept
    images (what a browser sends back is not trusted: a name is only ever a kept image's, never a path)."""
    kept = []
    for m in raw if isinstance(raw, list) else []:
        if isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str):
            entry = {"role": m["role"], "content": m["content"]}
            names = chat_images.clean_names(m.get("images")) if m["role"] == "user" else []
            if names:
                entry["images"] = names
            kept.append(entry)
    return kept


def shown(messages: list[dict[str, Any]], images: Path) -> list[dict[str, Any]]:
    """A stored conversation as the Chatbot shows it: a message's kept images (from the `images` store) before its
    text; an image no longer in the store is left out."""
    return [
        chat_images.user_message(m["content"], chat_images.stored_paths(images, m["images"]))
        if m.get("images")
        else {"role": m["role"], "content": m["content"]}
        for m in messages
    ]


def _updated(raw: Any) -> float:
    value = raw.get("updated") if isinstance(raw, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def clean_current(raw: Any) -> dict[str, Any]:
    """The open conversation: {"id", "messages", "updated"}; a new empty one when the browser holds none."""
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        return {"id": new_id(), "messages": [], "updated": time.time()}
    return {"id": raw["id"], "messages": clean_messages(raw.get("messages")), "updated": _updated(raw)}


def clean_archive(raw: Any) -> list[dict[str, Any]]:
    """Past conversations, newest first, each {"id", "title", "updated", "messages"}; empty or malformed ones go."""
    chats = raw.get("chats") if isinstance(raw, dict) else None
    kept: dict[str, dict[str, Any]] = {}
    for chat in chats if isinstance(chats, list) else []:
        if not isinstance(chat, dict) or not isinstance(chat.get("id"), str) or chat["id"] in kept:
            continue
        messages = clean_messages(chat.get("messages"))
        if messages:
            kept[chat["id"]] = {
                "id": chat["id"],
                "title": title(messages),
                "updated": _updated(chat),
                "messages": messages,
            }
    return sorted(kept.values(), key=lambda c: c["updated"], reverse=True)


def title(messages: list[dict[str, str]]) -> str:
    """A conversation's name: its first question on one line, cut to TITLE_CHARS characters."""
    first = next((m["content"] for m in messages if m["role"] == "user" and m["content"].strip()), "")
    line = " ".join(first.split())
    if not line:
        return msg.CHAT_UNTITLED
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def upsert(chats: list[dict[str, Any]], chat_id: str, messages: list[dict[str, str]], now: float) -> list[dict]:
    """The archive with conversation `chat_id` added, or replaced, as the newest."""
    entry = {"id": chat_id, "title": title(messages), "updated": now, "messages": messages}
    return [entry, *(c for c in chats if c["id"] != chat_id)]


def delete(chats: list[dict[str, Any]], chat_id: str) -> list[dict[str, Any]]:
    return [c for c in chats if c["id"] != chat_id]


def fold(chats: list[dict[str, Any]], current: dict[str, Any]) -> list[dict[str, Any]]:
    """The archive with the open conversation in it: replaced (as the newest) while it has messages, gone once it is
    emptied (Clear)."""
    if current["messages"]:
        return upsert(chats, current["id"], current["messages"], current["updated"] or time.time())
    return delete(chats, current["id"])


def cap(chats: list[dict[str, Any]], max_chats: int = MAX_CHATS, max_bytes: int = MAX_BYTES) -> tuple[list, int]:
    """(the newest conversations that fit in `max_chats` and `max_bytes` of JSON, how many older ones were dropped).
    The newest is always kept, however long, so the conversation just saved is never the one lost."""
    kept, size = [], 0
    for chat in chats:
        size += len(json.dumps(chat, ensure_ascii=False).encode("utf-8"))
        if kept and (len(kept) >= max_chats or size > max_bytes):
            break
        kept.append(chat)
    return kept, len(chats) - len(kept)


def signature(current: dict[str, Any]) -> str:
    """What SAVE_CURRENT_JS writes beside the open conversation: its id and first question ("" while it is empty)."""
    first = next((m["content"] for m in current["messages"] if m["role"] == "user"), None)
    return "" if first is None else current["id"] + "\n" + first


def choices(chats: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The Past chats list: (title, id), newest first."""
    return [(c["title"], c["id"]) for c in chats]


def setting_value(component: Any, value: Any) -> Any:
    """A stored setting if `component` can show it, else None (a value from an older studio, or edited by hand)."""
    if isinstance(component, gr.Checkbox):
        return value if isinstance(value, bool) else None
    if isinstance(component, (gr.Slider, gr.Number)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
        if (low is not None and value < low) or (high is not None and value > high):
            return None
        return value
    if isinstance(component, gr.Dropdown):
        if not isinstance(value, str):
            return None
        offered = [v for _, v in component.choices]
        return value if component.allow_custom_value or value in offered else None
    return value if isinstance(value, str) else None


def browser_secret(data_dir: Path) -> str:
    """The key the page encrypts its stores with in local storage: kept in the data dir, so that conversations also
    survive a restart of the studio (Gradio's default is a new key per start)."""
    path = Path(data_dir) / "browser-state.key"
    try:
        return path.read_text(encoding="utf-8").strip() or _new_secret(path)
    except FileNotFoundError:
        return _new_secret(path)


def _new_secret(path: Path) -> str:
    secret = secrets.token_urlsafe(24)
    path.write_text(secret, encoding="utf-8")
    path.chmod(0o600)
    return secret


# ----- handlers -----------------------------------------------------------------------------------------------------


class PastChats:
    """The Past chats handlers. `tab` is the Chat tab's handlers (its Clear stops a reply being written); `widgets`
    the tab's widgets by name (the settings are read back into them)."""

    def __init__(self, tab: Any, widgets: dict[str, Any]) -> None:
        self.tab = tab
        self.widgets = widgets
        self.images = chat_images.store(tab.ctx.paths.outputs)  # where the messages' images are kept

    def restore(self, current: Any, archive: Any, settings: Any) -> tuple:
        """On every page load: the open conversation, the Past chats list and the settings, as this browser left
        them (before the tab refreshes its model and adapter lists, which keep an adapter still attached)."""
        current = clean_current(current)
        chats = fold(clean_archive(archive), current)
        stored = settings if isinstance(settings, dict) else {}
        values = []
        for name in SETTINGS:
            component = self.widgets[name]
            value = stored.get(name)
            if name in FILLED_AFTER_LOAD and isinstance(value, str) and value:
                values.append(gr.Dropdown(choices=[*(v for _, v in component.choices), value], value=value))
                continue
            value = setting_value(component, value)
            values.append(gr.skip() if value is None else value)
        shown_now = shown(current["messages"], self.images)
        return shown_now, current, signature(current), self.listed(chats, current), *values

    def list_changed(self, current: Any, archive: Any) -> gr.Dropdown:
        """The open conversation got its first question, or was emptied: the list says so."""
        current = clean_current(current)
        return self.listed(fold(clean_archive(archive), current), current)

    @staticmethod
    def listed(chats: list[dict[str, Any]], current: dict[str, Any]) -> gr.Dropdown:
        return gr.Dropdown(choices=choices(chats), value=current["id"] if current["messages"] else None)

    @msg.user_errors
    def new_chat(self, current: Any, archive: Any, request: gr.Request = None) -> tuple:
        """New chat: the open conversation stays in the list (a reply being written stops first, as Clear does)."""
        return self._switch(current, archive, None, request)

    @msg.user_errors
    def open_chat(self, chosen: str | None, current: Any, archive: Any, request: gr.Request = None) -> tuple:
        """A past conversation picked in the list: it opens, the one open before stays in the list."""
        if not chosen:
            return (gr.skip(),) * 6
        return self._switch(current, archive, chosen, request)

    @msg.user_errors
    def delete_chat(self, current: Any, archive: Any, request: gr.Request = None) -> tuple:
        """Delete: the open conversation leaves this browser; an empty one opens."""
        current = clean_current(current)
        if not current["messages"]:
            raise InputError(msg.CHAT_NOTHING_TO_DELETE)
        chats = delete(clean_archive(archive), current["id"])
        return self._switch(current | {"messages": []}, {"chats": chats}, None, request)

    def _switch(self, current: Any, archive: Any, chosen: str | None, request: Any) -> tuple:
        """(archive, current, chatbot, side, stats, list) with `chosen` open (None: a new, empty conversation)."""
        chats = fold(clean_archive(archive), clean_current(current))
        opened = next((c for c in chats if c["id"] == chosen), None)
        if chosen is not None and opened is None:
            raise InputError(msg.CHAT_NOT_FOUND)
        self.tab.clear_chat(request)  # as Clear does: a reply being written ends (its last message comes first)
        chats, dropped = cap(chats)
        if dropped:
            gr.Warning(msg.CHATS_DROPPED.format(count=dropped))
        if opened:
            new = {"id": opened["id"], "messages": opened["messages"], "updated": opened["updated"]}
        else:
            new = {"id": new_id(), "messages": [], "updated": time.time()}
        return {"chats": chats}, new, shown(new["messages"], self.images), [], "", self.listed(chats, new)


# ----- layout and wiring --------------------------------------------------------------------------------------------


def layout(w: dict[str, Any], data_dir: Path) -> None:
    """The Past chats row (above the conversation) and the browser's stores."""
    secret = browser_secret(data_dir)
    for name in ("current", "archive", "settings"):
        w[f"saved_{name}"] = gr.BrowserState(None, storage_key=STORAGE_PREFIX + name, secret=secret)
    # changes when the open conversation's id or first question does: then the list is refreshed
    w["saved_signature"] = gr.Textbox(NOT_RESTORED, visible="hidden", elem_id="chat-saved-signature")
    with gr.Row(equal_height=True):
        w["past"] = gr.Dropdown(
            choices=[], value=None, label="Past chats (kept in this browser)", elem_id="chat-past", scale=4
        )
        w["new_chat"] = gr.Button("New chat", elem_id="chat-new", scale=1)
        w["delete_chat"] = gr.Button("Delete", elem_id="chat-delete", scale=1)


QUICK = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
IN_PAGE = {"queue": False, "show_progress": "hidden"}


def wire(tab: Any, w: dict[str, Any]) -> PastChats:
    """Past chats' events; the settings and the open conversation are written to the browser as they change."""
    past = PastChats(tab, w)
    w["past_chats"] = past
    saved = [w["saved_current"], w["saved_archive"]]
    switched = [w["saved_archive"], w["saved_current"], w["chatbot"], w["side"], w["stats"], w["past"]]
    w["chatbot"].change(
        None,
        [w["chatbot"], w["saved_current"], w["saved_signature"]],
        [w["saved_current"], w["saved_signature"]],
        js=SAVE_CURRENT_JS,
        **IN_PAGE,
    )
    w["saved_signature"].change(past.list_changed, saved, [w["past"]], **IN_PAGE)
    gr.on(
        [w[name].change for name in SETTINGS],
        None,
        [w["saved_signature"], w["saved_settings"], *(w[name] for name in SETTINGS)],
        [w["saved_settings"]],
        js=SAVE_SETTINGS_JS,
        **IN_PAGE,
    )
    w["new_chat"].click(past.new_chat, saved, switched, api_name="chat_new", **QUICK)
    w["past"].input(past.open_chat, [w["past"], *saved], switched, api_name="chat_open", **QUICK)
    w["delete_chat"].click(past.delete_chat, saved, switched, api_name="chat_delete", **QUICK)
    return past


def connect_page_load(app: gr.Blocks, w: dict[str, Any]) -> Any:
    """On every page load, the browser's own conversation and settings; returns the event, for what must follow it."""
    return app.load(
        w["past_chats"].restore,
        [w["saved_current"], w["saved_archive"], w["saved_settings"]],
        [w["chatbot"], w["saved_current"], w["saved_signature"], w["past"], *(w[name] for name in SETTINGS)],
        api_visibility="private",
        **IN_PAGE,
    )
