"""A GGUF vision model on /v1: a real `python launch.py` with the tiny GGUF Llama and its tiny projector loaded
through llama.cpp (precision auto), driven by the official `openai` client with base64 images."""

from __future__ import annotations

import base64
import io
import shutil

import openai
import pytest
from PIL import Image

from studio.engines import llamacpp

pytestmark = pytest.mark.skipif(
    not llamacpp.available(), reason=f"llama-cpp-python is not installed ({llamacpp.unavailable_reason()})"
)

from studio.models.tiny_gguf_vision import IMAGE_TOKENS, build_tiny_gguf_vlm  # noqa: E402
from tests.ui.conftest import openai_client, start_studio, stop_studio  # noqa: E402

VLM = "tiny-vlm.gguf"  # the file's name: its id on /v1
PLAIN = "plain.gguf"  # the same model without a projector beside it
GREEDY = {"temperature": 0, "max_tokens": 4}


def image_part(color: str) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
    }


def question(*parts: dict, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from gradio_client import Client

    model = build_tiny_gguf_vlm(tmp_path_factory.mktemp("gguf-vlm-api"))
    plain = tmp_path_factory.mktemp("gguf-plain") / PLAIN
    shutil.copy(model, plain)
    s = start_studio(tmp_path_factory.mktemp("gguf-vision-api"), "--device", "cpu", "--budget-gb", "2")
    try:
        ui = Client(s.url, verbose=False)
        for path in (model, plain):
            result = ui.predict("chat", str(path), "auto", api_name="/models_load")
            assert " loaded: " in result, result
        yield s
    finally:
        stop_studio(s)


@pytest.fixture(scope="module")
def client(studio) -> openai.OpenAI:
    return openai_client(studio)


def test_models_say_the_gguf_with_a_projector_takes_images(client):
    listed = {m.id: m for m in client.models.list()}
    assert listed[VLM].model_extra["input_modalities"] == ["text", "image"]
    assert listed[VLM].model_extra["engine"] == "llama.cpp"
    assert listed[PLAIN].model_extra["input_modalities"] == ["text"]


def test_a_base64_image_gets_a_reply_streaming_and_not(client):
    reply = client.chat.completions.create(model=VLM, messages=question(image_part("red")), **GREEDY)
    text = client.chat.completions.create(model=VLM, messages=question(), **GREEDY)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
    assert reply.usage.prompt_tokens == text.usage.prompt_tokens + IMAGE_TOKENS + 1  # the image tokens and a "\n"
    stream = client.chat.completions.create(model=VLM, messages=question(image_part("blue")), stream=True, **GREEDY)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert any(c.choices[0].delta.content for c in chunks if c.choices)


def test_an_image_to_the_gguf_without_a_projector_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=PLAIN, messages=question(image_part("red")), **GREEDY)
    assert err.value.status_code == 400
    assert f"{PLAIN} is a text-only model: it cannot see images" in err.value.body["message"]
    assert VLM in err.value.body["message"]  # the loaded GGUF vision model is offered
