"""GGUF vision models through llama.cpp: a tiny random GGUF Llama and a tiny CLIP/LLaVA projector (mmproj) built in
code, run by llama-cpp-python's mtmd library under the real model manager and ChatEngine."""

from __future__ import annotations

import base64
import io
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from studio.engines import llamacpp

pytestmark = pytest.mark.skipif(
    not llamacpp.available(), reason=f"llama-cpp-python is not installed ({llamacpp.unavailable_reason()})"
)

from studio.engines.chat import ChatEngine, ChatParams  # noqa: E402
from studio.errors import InputError, ModelLoadError  # noqa: E402
from studio.models import gguf_vision  # noqa: E402
from studio.models.estimate import Workload  # noqa: E402
from studio.models.records import LOADED  # noqa: E402
from studio.models.specs import ModelSpec  # noqa: E402
from studio.models.tiny_gguf_vision import IMAGE_TOKENS, build_tiny_gguf_vlm, build_tiny_mmproj  # noqa: E402
from tests.managers import cpu_manager  # noqa: E402

GREEDY = ChatParams(temperature=0, max_new_tokens=6, repetition_penalty=1.0, ignore_eos=True, top_logprobs=0)


def data_url(color: str, size: tuple[int, int] = (40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(color: str, text: str = "What is in the picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(color)}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def file_spec(path: Path, **options: str) -> ModelSpec:
    return ModelSpec("chat", str(path), "file", backend="llama.cpp", options=tuple(options.items()))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_gguf_vlm(tmp_path_factory.mktemp("gguf-vlm"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    return ChatEngine(cpu_manager(tmp_path_factory.mktemp("gguf-vlm-manager"), budget=2 * 1024**3))


def test_the_projector_beside_the_model_is_found_and_read_from_its_header(model):
    projector = model.parent / "mmproj-tiny-vlm.gguf"
    spec = file_spec(model)
    assert gguf_vision.projector_path(spec) == projector and gguf_vision.takes_images(spec)
    assert dict(llamacpp.llamacpp_spec(spec).options)["mmproj"] == str(projector.resolve())
    info = gguf_vision.projector_info(projector)
    assert (info.projector_type, info.projection_dim, info.image_tokens) == ("mlp", 64, IMAGE_TOKENS)
    assert not gguf_vision.takes_images(replace(spec, backend=""))  # the transformers path does not run it
    # the plan before a load (a spec without options): the projector found beside the model is counted
    est, lay = llamacpp.estimate(spec, Workload()), llamacpp.layout_of_file(model)
    assert est.weights_bytes == lay.weights_bytes + info.weights_bytes > lay.weights_bytes
    text_runtime = lay.kv_bytes(512, "f16") + lay.compute_bytes(512, False)  # the tiny LM's own 512-token context
    assert est.runtime_bytes == text_runtime + info.runtime_bytes(1)  # plus one pass of the image encoder


def test_an_image_message_streams_a_reply_under_the_manager(engine, model):
    chunks = list(engine.stream(file_spec(model), ask("red"), GREEDY))
    last = chunks[-1]
    assert last.done and last.stats.new_tokens == 6 and last.stats.finish_reason == "length"
    assert "".join(c.delta for c in chunks) == last.text
    text_only = engine.complete(file_spec(model), [{"role": "user", "content": "What is in the picture?"}], GREEDY)
    assert last.stats.prompt_tokens == text_only.stats.prompt_tokens + IMAGE_TOKENS + 1  # the image, and its "\n"
    (record,) = [r for r in engine.manager.records() if r.state == LOADED]
    projector = gguf_vision.projector_info(model.parent / "mmproj-tiny-vlm.gguf")
    layout = llamacpp.layout_of_file(model)
    assert record.measured_bytes == layout.weights_bytes + projector.weights_bytes  # on the CPU both are in RAM
    assert "vision projector mmproj-tiny-vlm.gguf" in record.estimate_method
    assert f"an image costs {IMAGE_TOKENS} tokens of the context" in record.estimate_method
    assert engine.vision_models() and engine.vision_models()[0].source == str(model)


def test_two_images_give_different_logits_for_the_same_text(engine, model):
    def logits(color: str):
        spec = llamacpp.llamacpp_spec(file_spec(model))
        with engine.manager.acquire(spec) as lease:
            lm = lease.model
            ids = lm.template_ids(engine_messages(color))
            (_token, _piece, _end, row), *_ = list(
                lm.tokens(
                    ids,
                    max_new_tokens=1,
                    temperature=0,
                    top_p=1,
                    top_k=0,
                    repetition_penalty=1,
                    seed=1,
                    ignore_eos=True,
                    logits=True,
                )
            )
        return row

    red, blue, red_again = logits("red"), logits("blue"), logits("red")
    assert abs(red - red_again).max() < 1e-4  # the same image gives the same numbers ...
    assert abs(red - blue).max() > 1e-2  # ... and another image other ones: the image reaches the model


def engine_messages(color: str) -> list[dict]:
    from studio.engines.chat import check_messages

    return check_messages(ask(color))


def test_the_plans_image_tokens_match_what_mtmd_gives(engine, model):
    from studio.engines.llamacpp_vision import image_token_count

    info = gguf_vision.projector_info(model.parent / "mmproj-tiny-vlm.gguf")
    with engine.manager.acquire(llamacpp.llamacpp_spec(file_spec(model))) as lease:
        counted = [image_token_count(lease.model, w, h) for w, h in ((40, 30), (300, 900))]
    assert counted == [info.image_tokens, info.image_tokens]


def test_a_text_conversation_after_an_image_reuses_no_image_positions(engine, model):
    """The image tokens of the cache are not mistaken for text: a text question after an image question answers as
    it does on a fresh load."""
    question = [{"role": "user", "content": "Tell me about the sea."}]
    params = replace(GREEDY, max_new_tokens=4, top_logprobs=-1)
    engine.complete(file_spec(model), ask("green"), params)
    after = engine.complete(file_spec(model), question, params).text
    engine.manager.unload(llamacpp.llamacpp_spec(file_spec(model)).key)
    fresh = engine.complete(file_spec(model), question, params).text
    assert after == fresh


def test_a_gguf_without_a_projector_is_text_only(engine, model, tmp_path):
    alone = tmp_path / "alone.gguf"
    shutil.copy(model, alone)
    with pytest.raises(InputError, match=r"alone\.gguf is a text-only model: it cannot see images") as info:
        list(engine.stream(file_spec(alone), ask("red"), GREEDY))
    assert "tiny-vlm.gguf" in (info.value.tip or "")  # the loaded GGUF vision model is offered


def test_an_explicit_projector_of_another_model_is_refused_before_loading(engine, model, tmp_path):
    narrow = build_tiny_mmproj(tmp_path / "mmproj-narrow.gguf", projection_dim=32)
    spec = file_spec(model, mmproj=str(narrow))
    with pytest.raises(ModelLoadError, match=r"projects images to 32 numbers per token, but tiny-vlm\.gguf's "):
        list(engine.stream(spec, ask("red"), GREEDY))
    with pytest.raises(ModelLoadError, match=r"tiny-vlm\.gguf is not a vision projector"):
        list(engine.stream(file_spec(model, mmproj=str(model)), ask("red"), GREEDY))


def test_more_image_tokens_than_the_context_holds_is_one_clear_line(engine, model):
    many = [{"type": "image_url", "image_url": {"url": data_url(c)}} for c in ["red", "blue"] * 8]
    messages = [{"role": "user", "content": [*many, {"type": "text", "text": "Which is first?"}]}]
    small = replace(GREEDY, context_len=64, max_new_tokens=8)
    with pytest.raises(InputError, match=rf"\({16 * IMAGE_TOKENS} of them for 16 images\), but the context holds 64"):
        list(engine.stream(file_spec(model), messages, small))


def test_stop_ends_an_image_reply_within_a_few_tokens(engine, model):
    seen, asks = [], []

    def stop() -> bool:  # the engine asks once per token (and a few times before the first)
        asks.append(len(seen) >= 3)
        return asks[-1]

    long = replace(GREEDY, max_new_tokens=300, temperature=0.8, seed=3)
    for chunk in engine.stream(file_spec(model), ask("red"), long, should_stop=stop):
        seen.append(chunk)
    # chunks carry up to 40 ms of tokens each (a fast machine makes dozens of this tiny model's in that time), so
    # the count that matters is the engine's asks: it ends after the token during which Stop was first asked for
    stats = seen[-1].stats
    assert stats.finish_reason == "stopped" and stats.new_tokens <= asks.index(True) + 1 < 300


def test_a_follow_up_question_still_sees_the_image_of_an_earlier_turn(engine, model):
    def follow_up(color: str) -> list[dict]:
        return [
            *ask(color),
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": "And its colour?"},
        ]

    spec = llamacpp.llamacpp_spec(file_spec(model))
    with engine.manager.acquire(spec) as lease:
        from studio.engines.chat import check_messages

        lm = lease.model
        ids = lm.template_ids(check_messages(follow_up("red")))
        assert ids.image_tokens == IMAGE_TOKENS and ids.images == 1
        rows = []
        for color in ("red", "blue"):
            prompt = lm.template_ids(check_messages(follow_up(color)))
            (*_, row), *_ = list(
                lm.tokens(
                    prompt,
                    max_new_tokens=1,
                    temperature=0,
                    top_p=1,
                    top_k=0,
                    repetition_penalty=1,
                    seed=1,
                    logits=True,
                )
            )
            rows.append(row)
    assert abs(rows[0] - rows[1]).max() > 1e-2  # the earlier image still reaches the model


def test_a_cut_short_projector_is_one_line_and_the_studio_keeps_answering(engine, model, tmp_path):
    whole = (model.parent / "mmproj-tiny-vlm.gguf").read_bytes()
    cut = tmp_path / "mmproj-cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match=r"mmproj-cut\.gguf: the projector file is cut short"):
        list(engine.stream(file_spec(model, mmproj=str(cut)), ask("red"), GREEDY))
    reply = engine.complete(file_spec(model), [{"role": "user", "content": "Hello?"}], GREEDY)  # still serving
    assert reply.stats.new_tokens == 6
