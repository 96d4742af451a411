"""Past chats kept in the browser (studio/ui/chat_history.py): titles, add/replace/delete, the size cap, what a
browser sends back, and the page-load restore of the conversation and settings."""

from __future__ import annotations

import gradio as gr

from studio.ui import chat_history as ch
from studio.ui import messages as msg


def _chat(text: str, reply: str = "ok") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]


def test_a_title_is_the_first_question_on_one_line_and_cut_short():
    assert ch.title(_chat("  What is\n the   capital of France? ")) == "What is the capital of France?"
    long = ch.title(_chat("why " * 40))
    assert len(long) == ch.TITLE_CHARS and long.endswith("…")
    assert ch.title([{"role": "assistant", "content": "hi"}, {"role": "user", "content": " "}]) == msg.CHAT_UNTITLED


def test_conversations_are_added_replaced_as_the_newest_and_deleted():
    chats = ch.upsert([], "a", _chat("first"), now=1)
    chats = ch.upsert(chats, "b", _chat("second"), now=2)
    assert [c["id"] for c in chats] == ["b", "a"]
    chats = ch.upsert(chats, "a", _chat("first", "longer answer"), now=3)  # the same conversation, grown
    assert [c["id"] for c in chats] == ["a", "b"] and chats[0]["messages"][1]["content"] == "longer answer"
    assert ch.choices(chats) == [("first", "a"), ("second", "b")]
    assert [c["id"] for c in ch.delete(chats, "a")] == ["b"] and ch.delete(chats, "zzz") == chats


def test_the_open_conversation_is_folded_in_and_an_emptied_one_leaves():
    chats = ch.upsert([], "a", _chat("first"), now=1)
    opened = {"id": "b", "messages": _chat("second"), "updated": 5}
    assert [c["title"] for c in ch.fold(chats, opened)] == ["second", "first"]
    cleared = {"id": "a", "messages": [], "updated": 6}  # Clear on a conversation already in the list
    assert ch.fold(chats, cleared) == []


def test_the_cap_keeps_the_newest_by_count_and_by_size():
    chats = [{"id": str(i), "title": "t", "updated": 10 - i, "messages": _chat("x" * 100)} for i in range(10)]
    kept, dropped = ch.cap(chats, max_chats=4)
    assert [c["id"] for c in kept] == ["0", "1", "2", "3"] and dropped == 6
    kept, dropped = ch.cap(chats, max_bytes=500)  # each chat is ~200 bytes of JSON
    assert [c["id"] for c in kept] == ["0", "1"] and dropped == 8
    huge = [{"id": "big", "title": "t", "updated": 1, "messages": _chat("y" * 10_000)}, *chats]
    kept, dropped = ch.cap(huge, max_bytes=500)  # the newest stays, however long
    assert [c["id"] for c in kept] == ["big"] and dropped == 10
    assert ch.cap(chats) == (chats, 0)


def test_what_a_browser_sends_back_is_checked():
    assert ch.clean_messages([{"role": "system", "content": "x"}, {"role": "user", "content": 3}, "junk"]) == []
    assert ch.clean_messages(_chat("hi")) == _chat("hi")
    fresh = ch.clean_current(None)
    assert fresh["id"] and fresh["messages"] == []
    assert ch.clean_current({"id": "", "messages": _chat("x")})["messages"] == []  # no id: a new conversation
    raw = {
        "chats": [
            {"id": "old", "updated": 1, "messages": _chat("old one")},
            {"id": "new", "updated": float("nan"), "messages": _chat("nan time")},
            {"id": "empty", "updated": 9, "messages": []},
            {"id": "old", "updated": 7, "messages": _chat("duplicate id")},
            {"updated": 3, "messages": _chat("no id")},
            "junk",
        ]
    }
    assert [(c["id"], c["title"]) for c in ch.clean_archive(raw)] == [("old", "old one"), ("new", "nan time")]
    assert ch.clean_archive("junk") == [] and ch.clean_archive({"chats": "junk"}) == []


def test_a_stored_setting_is_restored_only_when_its_widget_can_show_it():
    slider = gr.Slider(0, 2, value=0.7)
    assert ch.setting_value(slider, 0.35) == 0.35
    assert ch.setting_value(slider, 5) is None and ch.setting_value(slider, "1") is None
    assert ch.setting_value(slider, True) is None
    assert ch.setting_value(gr.Number(value=1), float("inf")) is None
    assert ch.setting_value(gr.Checkbox(), False) is False and ch.setting_value(gr.Checkbox(), 1) is None
    fixed = gr.Dropdown(["auto", "fp32"], value="auto")
    assert ch.setting_value(fixed, "fp32") == "fp32" and ch.setting_value(fixed, "int3") is None
    assert ch.setting_value(gr.Dropdown(["a"], allow_custom_value=True), "/my/model") == "/my/model"
    assert ch.setting_value(gr.Textbox(), "be brief") == "be brief" and ch.setting_value(gr.Textbox(), 3) is None


def test_the_page_load_restores_the_conversation_the_list_and_the_settings(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.chat_tab import NO_ADAPTER
    from studio.ui.layout import build_app

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)
    chat = build_app(ctx).studio_components["chat"]
    past = chat["past_chats"]
    current = {"id": "c1", "messages": _chat("open one"), "updated": 5}
    archive = {"chats": [{"id": "c0", "updated": 1, "messages": _chat("older one")}]}
    settings = {"temperature": 0.35, "precision": "no-such", "use_adapter": "poems", "system": "be brief"}
    out = past.restore(current, archive, settings)
    messages, restored, signature, listed, *values = out
    assert messages == _chat("open one") and restored["id"] == "c1" and signature == "c1\nopen one"
    assert listed.choices == [("open one", "c1"), ("older one", "c0")] and listed.value == "c1"
    by_name = dict(zip(ch.SETTINGS, values, strict=True))
    assert by_name["temperature"] == 0.35 and by_name["system"] == "be brief"
    assert isinstance(by_name["precision"], type(gr.skip()))  # a value its widget does not offer is left out
    assert by_name["use_adapter"].value == "poems"  # the refresh after it keeps it while it is attached
    assert [v for _, v in by_name["use_adapter"].choices] == [NO_ADAPTER, "poems"]
    # a browser that kept nothing: a new empty conversation, nothing listed, the page's own settings
    messages, restored, signature, listed, *values = past.restore(None, None, None)
    assert messages == [] and restored["id"] and signature == "" and listed.choices == []
    assert all(isinstance(v, type(gr.skip())) for v in values)


def test_new_chat_keeps_the_open_one_and_delete_removes_it(tmp_path):
    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.layout import build_app

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)
    past = build_app(ctx).studio_components["chat"]["past_chats"]
    current = {"id": "c1", "messages": _chat("cats"), "updated": 5}
    archive, new, chatbot, side, stats, listed = past.new_chat(current, None)
    assert [c["id"] for c in archive["chats"]] == ["c1"] and new["id"] != "c1" and new["messages"] == []
    assert chatbot == [] and listed.value is None and listed.choices == [("cats", "c1")]
    opened = {"id": new["id"], "messages": _chat("dogs"), "updated": 6}
    archive, now_open, chatbot, *_rest, listed = past.open_chat("c1", opened, archive)
    assert now_open["id"] == "c1" and chatbot == _chat("cats") and listed.value == "c1"
    assert [t for t, _ in listed.choices] == ["dogs", "cats"]
    archive, after, chatbot, *_rest, listed = past.delete_chat(now_open, archive)
    assert chatbot == [] and listed.choices == [("dogs", new["id"])] and after["id"] != "c1"
    try:
        past.open_chat("gone", after, archive)
    except gr.Error as exc:
        assert "no longer in this browser" in str(exc)
    else:
        raise AssertionError("opening a deleted conversation must say so")


def test_the_browser_key_is_kept_in_the_data_dir(tmp_path):
    first = ch.browser_secret(tmp_path)
    assert first == ch.browser_secret(tmp_path) and len(first) >= 24  # the same after a restart
    assert (tmp_path / "browser-state.key").stat().st_mode & 0o077 == 0


def test_an_image_message_keeps_its_images_by_name_and_shows_them_again(tmp_path):
    from PIL import Image

    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.ui.chat_images import keep, store
    from studio.ui.layout import build_app

    ctx = build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)
    past = build_app(ctx).studio_components["chat"]["past_chats"]
    Image.new("RGB", (8, 6), "red").save(tmp_path / "red.png")
    (kept,) = keep([tmp_path / "red.png"], store(ctx.paths.outputs))
    name = kept.rsplit("/", 1)[-1]
    stored = [
        {"role": "user", "content": "what colour?", "images": [name, "/etc/passwd", "../red.png"]},
        {"role": "assistant", "content": "red", "images": [name]},  # a reply has no images
    ]
    cleaned = ch.clean_messages(stored)
    assert cleaned == [
        {"role": "user", "content": "what colour?", "images": [name]},
        {"role": "assistant", "content": "red"},
    ]
    assert ch.clean_messages([{"role": "user", "content": "hi", "images": "junk"}]) == [
        {"role": "user", "content": "hi"}
    ]
    image_message = {"role": "user", "content": [{"path": kept}, "what colour?"]}
    assert ch.shown(cleaned, store(ctx.paths.outputs)) == [image_message, {"role": "assistant", "content": "red"}]
    gone = [{"role": "user", "content": "and this?", "images": ["0123456789abcdef-gone.png"]}]
    assert ch.shown(gone, store(ctx.paths.outputs)) == [{"role": "user", "content": "and this?"}]

    # a reload shows the open conversation's images; a reopened past one shows its own
    current = {"id": "c1", "messages": stored, "updated": 5}
    messages, restored, signature, *_ = past.restore(current, None, None)
    assert messages == [image_message, {"role": "assistant", "content": "red"}]
    assert restored["messages"] == cleaned and signature == "c1\nwhat colour?"
    archive, new, chatbot, *_ = past.new_chat(current, None)
    assert archive["chats"][0]["messages"] == cleaned and chatbot == []
    _archive, opened, chatbot, *_ = past.open_chat("c1", new, archive)
    assert opened["messages"] == cleaned and chatbot[0] == image_message
