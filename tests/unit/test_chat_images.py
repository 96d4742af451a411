"""Images in the page without a model: the Chat tab's image messages (as the Chatbot shows them, as the engine reads
them, exported beside the Markdown) and the Image tab's Describe helpers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gradio as gr
from PIL import Image

from studio.config import StudioConfig
from studio.context import build_context
from studio.ui.chat_images import (
    STORED_NAME,
    clean_names,
    engine_content,
    export_images,
    image_paths,
    keep,
    stored_paths,
    user_message,
)
from studio.ui.chat_tab import NOT_ASKED, ChatTab, conversation, export_conversation, local_chat_models
from studio.ui.image_describe import chosen_image, describe_messages, prompt_from_reply
from tests.fakes import FakeGpuProbe


def _png(folder: Path, name: str = "red.png") -> Path:
    path = folder / name
    Image.new("RGB", (8, 6), "red").save(path)
    return path


def _as_the_chatbot_hands_it_back(path: Path, text: str) -> dict:
    """A user message with an image after a round trip through the page (Gradio's normalized content parts)."""
    return {
        "role": "user",
        "content": [
            {"type": "file", "file": {"path": str(path), "mime_type": "image/png"}},
            {"type": "text", "text": text},
        ],
    }


def test_a_message_with_images_puts_them_before_its_text_and_a_plain_one_stays_text(tmp_path):
    png = _png(tmp_path)
    assert user_message("hi", None) == {"role": "user", "content": "hi"}
    assert user_message("what is it?", [str(png)]) == {"role": "user", "content": [{"path": str(png)}, "what is it?"]}
    assert user_message("  ", [{"path": str(png)}])["content"] == [{"path": str(png)}]  # an image alone
    assert image_paths(_as_the_chatbot_hands_it_back(png, "x")["content"]) == [str(png)]
    assert image_paths("just text") == [] and image_paths([{"type": "text", "text": "t"}]) == []


def test_the_engine_gets_the_image_bytes_and_the_text_and_the_export_text_only(tmp_path):
    png = _png(tmp_path)
    history = [_as_the_chatbot_hands_it_back(png, "what colour?"), {"role": "assistant", "content": "red"}]
    msgs = conversation("", history, images=True)
    assert msgs[0]["content"] == [
        {"type": "image", "image": png.read_bytes()},
        {"type": "text", "text": "what colour?"},
    ]
    assert msgs[1] == {"role": "assistant", "content": "red"}
    assert conversation("", history) == [  # what the export writes: text only
        {"role": "user", "content": "what colour?"},
        {"role": "assistant", "content": "red"},
    ]
    gone = engine_content("t", [str(tmp_path / "missing.png")])  # the engine names an empty image
    assert gone[0] == {"type": "image", "image": b""}


def test_the_export_keeps_the_images_beside_the_markdown(tmp_path):
    ctx = build_context(StudioConfig(data_dir=tmp_path / "data"), probe=FakeGpuProbe(), start_monitor=False)
    png = _png(tmp_path)
    history = [_as_the_chatbot_hands_it_back(png, "what colour?"), {"role": "assistant", "content": "red"}]
    files = [Path(p) for p in export_conversation(ctx, "be brief", history, "tiny-vlm")]
    md, js, image = files
    text = md.read_text(encoding="utf-8")
    assert f"![image]({image.parent.name}/{image.name})" in text
    assert text.index("![image]") < text.index("what colour?")
    assert image.parent.parent == md.parent and image.read_bytes() == png.read_bytes()
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["messages"][1]["images"] == [f"{image.parent.name}/{image.name}"]
    assert export_images([{"role": "user", "content": "no images"}], tmp_path, "x") == [[]]


def test_images_join_the_question_just_asked_and_not_one_a_clear_overtook(tmp_path):
    ctx = build_context(StudioConfig(data_dir=tmp_path / "data"), probe=FakeGpuProbe(), start_monitor=False)
    tab, png = ChatTab(ctx), _png(tmp_path)
    history, box = tab.add_images([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], [str(png)], 0)
    kept = ctx.paths.outputs / "chat-images" / f"{hashlib.sha256(png.read_bytes()).hexdigest()[:16]}-red.png"
    assert history == [{"role": "user", "content": [{"path": str(kept)}, "hi"]}] and box is None
    assert kept.read_bytes() == png.read_bytes()  # kept on the server, for Past chats and a reload
    skipped = gr.skip()
    assert tab.add_images([{"role": "user", "content": "hi"}], [str(png)], NOT_ASKED) == (skipped, skipped)
    assert tab.add_images([{"role": "user", "content": "hi"}], None, 0) == (skipped, skipped)


def test_images_are_kept_once_by_content_under_a_plain_name(tmp_path):
    store = tmp_path / "chat-images"
    png, same = _png(tmp_path), _png(tmp_path / "..", "red copy (1).png")
    other = tmp_path / "blue.png"
    Image.new("RGB", (8, 6), "blue").save(other)
    kept = keep([str(png), {"path": str(same)}, str(other)], store)
    names = [Path(p).name for p in kept]
    assert all(Path(p).parent == store and STORED_NAME.fullmatch(n) for p, n in zip(kept, names, strict=True))
    assert names[0].endswith("-red.png") and names[1].endswith("-red_copy_1.png") and names[2].endswith("-blue.png")
    assert names[0][:16] == names[1][:16] != names[2][:16]  # named by content
    assert Path(kept[0]).read_bytes() == png.read_bytes()
    assert keep(kept[:1], store) == kept[:1]  # an image kept already stays as it is
    assert sorted(p.name for p in store.iterdir()) == sorted(names)  # no partial files left behind
    missing = str(tmp_path / "gone.png")
    assert keep([missing], store) == [missing]  # the engine names it when it reads the message


def test_a_browser_names_kept_images_only(tmp_path):
    store = tmp_path / "chat-images"
    (kept,) = keep([_png(tmp_path)], store)
    name = Path(kept).name
    (tmp_path / "secret.txt").write_text("no")
    (store / "0123456789abcdef-link.png").symlink_to(tmp_path / "secret.txt")
    raw = [name, "../secret.txt", "/etc/passwd", str(kept), "0123456789abcdef-../x", 7, None, "red.png"]
    assert clean_names(raw) == [name]
    assert clean_names("junk") == [] and len(clean_names([name] * 40)) == 16
    assert stored_paths(store, [name, "0123456789abcdef-link.png", "fedcba9876543210-gone.png"]) == [kept]


def test_describe_helpers():
    assert chosen_image(None, "/a.png") == "/a.png" and chosen_image("/b.png", "/a.png") == "/b.png"
    assert chosen_image("", "") is None
    parts = describe_messages(b"png")[0]["content"]
    assert parts[0] == {"type": "image", "image": b"png"} and "Stable Diffusion prompt" in parts[1]["text"]
    assert prompt_from_reply('\n\n Prompt: "a red fox, oil painting" \nmore') == "a red fox, oil painting"
    assert prompt_from_reply("a\x03b\x1dc") == "abc"  # control characters never reach the prompt box
    assert prompt_from_reply("\n\n") == ""


def test_the_picker_marks_vision_model_folders_as_taking_images(tmp_path):
    for name, config in {
        "my-vlm": {"architectures": ["LlavaForConditionalGeneration"], "vision_config": {"model_type": "clip"}},
        "my-lm": {"architectures": ["LlamaForCausalLM"]},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert local_chat_models(tmp_path) == [
        ("my-lm (folder)", str(tmp_path / "my-lm")),
        ("my-vlm (folder) · takes images", str(tmp_path / "my-vlm")),
    ]
