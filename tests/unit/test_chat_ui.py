"""Chat tab helpers that need no model: conversation building and export."""

from __future__ import annotations

import json

import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.errors import InputError
from studio.ui.chat_tab import _text, conversation, export_conversation
from tests.fakes import FakeGpuProbe


def test_conversation_keeps_roles_and_text_parts():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]
    assert conversation(" be kind ", history) == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert conversation("", history)[0]["role"] == "user"
    assert _text(None) == "" and _text({"text": "a"}) == "a"


def test_export_writes_markdown_and_json_before_offering_them(tmp_path):
    ctx = build_context(StudioConfig(data_dir=tmp_path), probe=FakeGpuProbe(), start_monitor=False)
    history = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4 — ünïcödé ✓"}]
    md, js = map(lambda p: __import__("pathlib").Path(p), export_conversation(ctx, "sys", history, "tiny"))
    assert md.parent == tmp_path.resolve() / "outputs" / "chats"
    assert "**assistant**" in md.read_text() and "ünïcödé ✓" in md.read_text()
    data = json.loads(js.read_text())
    assert data["model"] == "tiny" and data["messages"][-1]["content"] == "4 — ünïcödé ✓"
    with pytest.raises(InputError, match="empty"):
        export_conversation(ctx, "", [], "tiny")
