"""Chat tab helpers that need no model: conversation building and export."""

from __future__ import annotations

import json
from types import SimpleNamespace

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


def _ctx(tmp_path):
    return build_context(StudioConfig(data_dir=tmp_path, device="cpu"), start_monitor=False)


def _adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_page_load_offers_adapters_made_after_the_page_was_built(tmp_path):
    from studio.ui.chat_tab import NO_ADAPTER, ChatTab, resolve_spec
    from studio.ui.layout import build_app

    ctx = _ctx(tmp_path)
    lm = tmp_path / "lm"
    lm.mkdir()
    app = build_app(ctx)
    (wired,) = [f for f in app.fns.values() if f.api_name == "chat_refresh"]
    # runs on every page load, once the browser's kept conversation and settings are back (studio/ui/chat_history.py)
    restored = app.fns[wired.trigger_after]
    assert "load" in [t[1] for t in restored.targets] and restored.fn.__name__ == "restore"
    assert wired.fn.__name__ == "refresh"
    load = SimpleNamespace(fn=ChatTab(ctx).refresh)
    folder = _adapter(ctx.paths.runs / "run-1" / "adapter")  # trained after the page was built
    ctx.chat.adapters[resolve_spec(ctx, str(lm), "fp32").key] = {"run-1": str(folder)}  # attached on the server
    models, folders, answer_with = load.fn(str(lm), "fp32", NO_ADAPTER)
    assert folders.choices == [(str(folder), str(folder))]
    assert [v for _, v in answer_with.choices] == [NO_ADAPTER, "run-1"] and answer_with.value == NO_ADAPTER
    assert models.choices  # the model list is rebuilt too (models loaded since then appear)
    # another base model has its own adapters; a half-typed choice offers the base model only
    assert [v for _, v in load.fn(str(tmp_path), "fp32", "run-1")[2].choices] == [NO_ADAPTER]
    assert load.fn("/no/such/model", "fp32", "run-1")[2].value == NO_ADAPTER


def test_answer_with_keeps_the_current_pick_while_it_is_attached(tmp_path):
    from studio.ui.chat_tab import NO_ADAPTER, answer_with_update, resolve_spec

    ctx = _ctx(tmp_path)
    ctx.chat.adapters[resolve_spec(ctx, str(tmp_path), "fp32").key] = {"a": "x", "b": "y"}
    assert answer_with_update(ctx, str(tmp_path), "fp32", "b").value == "b"
    assert answer_with_update(ctx, str(tmp_path), "fp16", "b").value == NO_ADAPTER  # another precision, another base


def test_a_failed_reply_leaves_no_empty_bubble_but_keeps_a_partial_one():
    from studio.ui.chat_tab import drop_empty_reply

    user = [{"role": "user", "content": "hi"}]
    assert drop_empty_reply(user + [{"role": "assistant", "content": ""}], added=True) == user
    assert drop_empty_reply(user + [{"role": "assistant", "content": [{"type": "text", "text": " "}]}], True) == user
    partial = user + [{"role": "assistant", "content": "Hel"}]
    assert drop_empty_reply(partial, added=True) == partial
    assert drop_empty_reply(user, added=False) == user and drop_empty_reply(None, added=True) == []


def test_a_runs_adapter_folder_is_named_after_its_run():
    from studio.ui.chat_tab import adapter_name

    assert adapter_name("/data/runs/poems/adapter") == "poems"
    assert adapter_name("/somewhere/purple") == "purple"


def test_causal_lm_folders_and_gguf_files_in_models_are_offered(tmp_path):
    from studio.ui.chat_tab import local_chat_models, model_choices

    ctx = build_context(StudioConfig(data_dir=tmp_path), probe=FakeGpuProbe(), start_monitor=False)
    models = ctx.paths.models
    (models / "my-llama").mkdir()
    (models / "my-llama" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (models / "a-vae").mkdir()
    (models / "a-vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not json")
    (models / "phi.Q4_K_M.gguf").write_bytes(b"GGUF")
    assert local_chat_models(models) == [
        ("my-llama (folder)", str(models / "my-llama")),
        ("phi.Q4_K_M.gguf (single file)", str(models / "phi.Q4_K_M.gguf")),
    ]
    values = [v for _label, v in model_choices(ctx)]
    assert str(models / "my-llama") in values and str(models / "a-vae") not in values


def test_gguf_files_in_models_dir_folders_are_offered(tmp_path):
    """The picker also offers what studio.models.discover finds (here in a --models-dir folder), by its name."""
    from studio.ui.chat_tab import model_choices

    llms = tmp_path / "llms"
    (llms / "phi").mkdir(parents=True)
    (llms / "phi" / "phi.Q4_K_M.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    config = StudioConfig(data_dir=tmp_path / "data", models_dir=(llms,))
    ctx = build_context(config, probe=FakeGpuProbe(), start_monitor=False)
    labels = dict((value, label) for label, value in model_choices(ctx))
    label = labels[str(llms / "phi" / "phi.Q4_K_M.gguf")]
    assert label.startswith(f"phi/phi.Q4_K_M.gguf (in {llms}) · ")  # then the engine that runs it


def test_a_message_sent_just_before_a_clear_is_not_answered_and_its_text_stays(tmp_path):
    """The race of the page test's Clear-while-streaming: Enter is pressed, then Clear, and the message's handler runs
    only once Clear is already waiting for the running reply to end. The Clear wins."""
    import threading

    from studio.ui.chat_tab import NOT_ASKED, ChatTab

    tab = ChatTab(_ctx(tmp_path))
    history = [{"role": "user", "content": "tell me a story"}, {"role": "assistant", "content": "Once"}]
    assert tab.add_user("next", history)[2] == 0  # no Clear yet: asked after 0 Clears
    reply_ends, clear_done = threading.Event(), threading.Event()

    def reply():  # the streaming reply: Clear waits for it
        with tab.flags.running("local"):
            reply_ends.wait(10)

    threading.Thread(target=reply).start()
    while tab.flags.wait_idle("local", 0):  # until the reply runs
        pass
    threading.Thread(target=lambda: (tab.clear_chat(), clear_done.set())).start()
    while not tab.flags.clearing("local"):
        pass
    text, shown, asked = tab.add_user("asked meanwhile", history)
    kept, _ = tab.drop_last_reply(history)
    assert (
        asked == NOT_ASKED and not isinstance(text, str) and not isinstance(shown, list) and not isinstance(kept, list)
    )
    reply_ends.set()
    assert clear_done.wait(10) and not tab.flags.clearing("local")
    assert tab.add_user("after the clear", [])[1:] == ([{"role": "user", "content": "after the clear"}], 1)
