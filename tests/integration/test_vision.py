"""Vision in chat: the tiny random LLaVA through the real loaders, the manager and the ChatEngine."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from studio.engines.chat import ChatEngine, ChatParams
from studio.errors import InputError
from studio.models.estimate import Workload
from studio.models.specs import CATALOG, ModelSpec
from studio.models.tiny import ensure_tiny_vlm
from studio.models.vision import image_tokens, is_vision_source, vision_spec
from tests.managers import cpu_manager

GREEDY = ChatParams(temperature=0, max_new_tokens=6, repetition_penalty=1.0)


def png(color: str | tuple, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def ask(url: str, text: str = "What is in the picture?") -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with one tiny compressed row: what a decompression bomb looks like
    before it is decoded (a real 20000x20000 image would take a gigabyte to build here)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return ensure_tiny_vlm(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    return ChatEngine(cpu_manager(tmp_path_factory.mktemp("vision")))


@pytest.fixture(scope="module")
def spec(vlm) -> ModelSpec:
    return ModelSpec("chat", str(vlm), "folder", label="tiny-vlm")  # as the Chat tab's picker makes it


def first_logprobs(engine: ChatEngine, spec: ModelSpec, messages: list[dict]) -> list[float]:
    params = ChatParams(temperature=0, max_new_tokens=1, repetition_penalty=1.0, top_logprobs=5)
    chunks = list(engine.stream(spec, messages, params))
    tokens = [t for c in chunks for t in c.tokens]
    return [lp for _, _, lp in tokens[0].top]


def test_an_image_message_streams_a_reply_from_a_vision_model_the_manager_holds(engine, spec):
    chunks = list(engine.stream(spec, ask(data_url(png("red"))), GREEDY))
    last = chunks[-1]
    assert last.done and last.stats.new_tokens >= 1 and last.stats.finish_reason in ("stop", "length")
    assert len(chunks) >= 2  # streamed: at least one update before the last chunk
    text_only = engine.complete(spec, [{"role": "user", "content": "What is in the picture?"}], GREEDY)
    assert last.stats.prompt_tokens == text_only.stats.prompt_tokens + 16  # the image's 16 tokens
    held = engine.manager.models("vision")
    assert [s.name for _, s in held] == ["tiny-vlm"]  # loaded as kind "vision" through the registry's loader
    assert engine.is_loaded(spec)
    assert engine.vision_models()[0].kind == "vision"


def test_two_images_give_different_logits_for_the_same_text(engine, spec):
    red = first_logprobs(engine, spec, ask(data_url(png("red"))))
    blue = first_logprobs(engine, spec, ask(data_url(png((0, 0, 255)))))
    again = first_logprobs(engine, spec, ask(data_url(png("red"))))
    assert red == again  # the same image: the same logits (greedy, no sampling)
    assert red != blue  # a different image changes what the model sees


def test_the_plans_image_token_count_matches_the_processors(engine, spec, vlm):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm)
    held = vision_spec(spec)
    counted = processor._get_num_multimodal_tokens(image_sizes=[(48, 64)]).num_image_tokens[0]
    assert image_tokens(held, 64, 48) == counted == 16
    if engine.manager.is_loaded(held.key):
        engine.manager.unload(held.key)
    plan = engine.manager.plan(held, Workload(context_len=512))  # after a load: from the calibrated figures
    shown = re.search(r"An image costs (\d+) tokens of the context", plan.message)
    assert shown and int(shown.group(1)) == counted
    from studio.models.vision import estimate_vision

    assert f"an image costs {counted} tokens" in estimate_vision(held, Workload(context_len=512)).method
    # and the prompt really holds that many image tokens
    inputs = processor(
        text=[
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                add_generation_prompt=True,
            )
        ],
        images=[Image.open(io.BytesIO(png("red")))],
        return_tensors="pt",
    )
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == counted


def test_the_vision_estimate_counts_the_tower_the_projector_the_lm_and_the_kv_cache(spec):
    from studio.models.estimate import estimate, tensor_bytes
    from studio.models.loading import load_vision_lm
    from studio.models.vision import estimate_vision

    held = vision_spec(spec)
    est = estimate_vision(held, Workload(context_len=512))
    text_only = estimate(spec, Workload(context_len=512))
    lm = load_vision_lm(held)
    tower = sum(p.numel() * 4 for name, p in lm.model.named_parameters() if "language_model" not in name)
    assert tower > 0.2 * est.weights_bytes  # the tiny model's vision tower and projector are a good part of it
    # every weight, the vision tower and the projector too (the loaded model adds small buffers: position ids)
    assert est.weights_bytes == pytest.approx(tensor_bytes(lm), rel=0.01)
    assert est.runtime_bytes > text_only.runtime_bytes  # the vision tower's pass on top of the LM's KV cache
    longer = estimate_vision(held, Workload(context_len=1024))
    assert longer.runtime_bytes > est.runtime_bytes  # the KV cache grows with the context images share


def test_vision_models_are_detected_from_their_files_and_the_catalog(spec, tiny_models):
    assert is_vision_source(spec)
    assert not is_vision_source(ModelSpec("chat", str(tiny_models.causal_lm), "folder"))
    recommended = [e for e in CATALOG if e.images]
    assert {e.hub_id for e in recommended} >= {"Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"}
    for e in recommended:
        assert e.kind == "chat" and e.default_precision in ("nf4", "bf16")
        assert is_vision_source(ModelSpec("chat", e.hub_id, "hub"))


def test_an_image_to_a_text_only_model_names_it_and_the_loaded_vision_models(engine, spec, tiny_models):
    list(engine.stream(spec, ask(data_url(png("red"))), GREEDY))  # the vision model is loaded
    text_lm = ModelSpec("chat", str(tiny_models.causal_lm), "folder", label="tiny-lm")
    with pytest.raises(InputError, match=r"tiny-lm is a text-only model: it cannot see images") as err:
        list(engine.stream(text_lm, ask(data_url(png("red"))), GREEDY))
    assert "tiny-vlm" in str(err.value)  # offered instead
    assert engine.complete(text_lm, [{"role": "user", "content": "hello"}], GREEDY).done  # text still works


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (data_url(b"just some text, not a picture", "text/plain"), r"Message 1's image 1 is not an image"),
        (data_url(png("red")[:60]), r"Message 1's image 1 is a damaged PNG file"),
        (data_url(png_header_only(20000, 20000)), r"larger than 64 megapixels|400 megapixels"),
        (data_url(png_header_only(9000, 9000)), r"is 9000x9000 pixels \(81 megapixels\)"),
        ("https://example.com/cat.png", r"is a web address .*does not fetch images"),
        ("data:image/png;base64,@@@not-base64", r"not valid base64"),
        ("not a url at all", r"not a data: URL"),
    ],
)
def test_bad_images_get_specific_messages_and_the_engine_keeps_answering(engine, spec, payload, message):
    with pytest.raises(InputError, match=message):
        list(engine.stream(spec, ask(payload), GREEDY))
    assert engine.complete(spec, ask(data_url(png("green"))), GREEDY).done  # the next request is answered


def test_a_large_image_is_downscaled_not_refused(engine, spec):
    big = png("red", (4000, 3000))
    last = engine.complete(spec, ask(data_url(big)), GREEDY)
    assert last.done and last.stats.new_tokens >= 1
    from studio.engines.vision import MAX_SIDE, decode_image

    assert max(decode_image(big, "it").size) == MAX_SIDE


def test_too_many_images_for_the_context_says_how_many_tokens_they_take(engine, spec):
    parts = [{"type": "image_url", "image_url": {"url": data_url(png((i * 15, 0, 0)))}} for i in range(12)]
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "compare them"}]}]
    params = ChatParams(temperature=0, max_new_tokens=8, context_len=128)
    with pytest.raises(InputError, match=r"\(192 of them for 12 images\).*context holds 128 tokens"):
        list(engine.stream(spec, messages, params))
    many = [{"type": "image_url", "image_url": {"url": data_url(png("red"))}}] * 17
    with pytest.raises(InputError, match=r"more than 16 images"):
        list(engine.stream(spec, [{"role": "user", "content": many}], GREEDY))


def test_images_only_in_user_messages(engine, spec):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_url(png("red"))}}]},
        {"role": "user", "content": "and now?"},
    ]
    with pytest.raises(InputError, match=r"only user messages may hold images, not assistant ones"):
        list(engine.stream(spec, messages, GREEDY))


def test_checked_messages_keep_their_images_when_checked_again(engine, spec):
    from studio.engines.chat import check_messages

    once = check_messages(ask(data_url(png("red"))))  # as the API checks them before handing them on
    assert len(once[0]["images"]) == 1
    assert len(check_messages(once)[0]["images"]) == 1
    assert first_logprobs(engine, spec, once) == first_logprobs(engine, spec, ask(data_url(png("red"))))


def test_a_pil_image_part_and_an_image_without_text(engine, spec):
    image = Image.new("RGBA", (20, 30), (0, 255, 0, 128))
    last = engine.complete(spec, [{"role": "user", "content": [{"type": "image", "image": image}]}], GREEDY)
    assert last.done and image.mode == "RGBA"  # the caller's image is not changed


def test_a_vision_model_parks_and_comes_back_like_any_other(engine, spec):
    from studio.models.records import PARKED

    held = vision_spec(spec)
    before = first_logprobs(engine, spec, ask(data_url(png("red"))))
    engine.manager.park(held.key)
    assert engine.manager.record(held.key).state == PARKED
    assert first_logprobs(engine, spec, ask(data_url(png("red")))) == before  # unparked, the same model
    report = engine.manager.unload(held.key)  # freed and checked with a weakref like the others
    assert report is not None and not engine.manager.is_loaded(held.key)
    assert engine.complete(spec, ask(data_url(png("red"))), GREEDY).done  # loads again on the next question


def test_tools_are_refused_on_a_vision_model_not_dropped(engine, spec):
    tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object", "properties": {}}}}
    params = ChatParams(temperature=0, max_new_tokens=4, tools=(tool,))
    with pytest.raises(InputError, match="does not give tools to vision models yet"):
        list(engine.stream(spec, ask(data_url(png("red"))), params))


@pytest.mark.parametrize("size", [(64, 48), (448, 336), (1920, 1080), (5000, 300)])
def test_qwen2_vl_image_tokens_match_its_image_processor(tmp_path, size):
    """Qwen2-VL's count depends on the image's size: the studio's rule against the real image processor's."""
    import json

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    processor.save_pretrained(tmp_path)  # preprocessor_config.json, as Qwen's Hub folders have
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "vision_config": {"patch_size": 14}}))
    spec = ModelSpec("vision", str(tmp_path), "folder")
    width, height = size
    expected = processor.get_number_of_image_patches(height, width, {}) // processor.merge_size**2
    assert image_tokens(spec, width, height) == expected
