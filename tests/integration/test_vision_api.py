"""Images on /v1/chat/completions: a real `python launch.py` with the tiny LLaVA loaded, driven by the official
`openai` client (base64 data: URLs, streaming and not), and every bad image as a 400 in OpenAI's shape."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from studio.models.tiny import ensure_tiny_vlm
from tests.ui.conftest import openai_client, studio_with

VLM = "vlm-seed0"  # the tiny vision model's folder name: its id on /v1
TEXT = "causal-lm-seed0"
GREEDY = {"temperature": 0, "max_tokens": 6}


def png(color: str | tuple, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def image_part(data: bytes, kind: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{base64.b64encode(data).decode()}"}}


def question(*parts: dict, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


@pytest.fixture(scope="module")
def picture_server() -> Iterator[str]:
    """A local web server with one PNG at /cat.png (no network needed)."""
    body = png("orange")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path != "/cat.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    server.shutdown()


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models):
    vlm = ensure_tiny_vlm(tmp_path_factory.getbasetemp() / "tiny-models")
    data = tmp_path_factory.mktemp("vision-api")
    with studio_with(data, ("chat", vlm), ("chat", tiny_models.causal_lm), args=("--allow-image-urls",)) as s:
        yield s


@pytest.fixture(scope="module")
def client(studio) -> openai.OpenAI:
    return openai_client(studio)


def test_models_say_which_take_images(client):
    listed = {m.id: m for m in client.models.list()}
    assert listed[VLM].model_extra["input_modalities"] == ["text", "image"]
    assert listed[VLM].model_extra["kind"] == "chat"  # served by /v1/chat/completions
    assert listed[TEXT].model_extra["input_modalities"] == ["text"]


def test_a_base64_image_gets_a_reply_streaming_and_not(client):
    messages = question(image_part(png("red")))
    whole = client.chat.completions.create(model=VLM, messages=messages, **GREEDY)
    assert whole.choices[0].finish_reason in ("stop", "length")
    text_only = client.chat.completions.create(model=VLM, messages=question(), **GREEDY)
    assert whole.usage.prompt_tokens == text_only.usage.prompt_tokens + 16  # the image's 16 tokens count
    assert whole.usage.completion_tokens >= 1
    pieces = list(client.chat.completions.create(model=VLM, messages=messages, stream=True, **GREEDY))
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert streamed == whole.choices[0].message.content  # the same greedy reply


def test_several_images_in_one_message_and_the_image_reaches_the_model(client):
    def first_token_logprobs(*parts: dict) -> list[float]:
        reply = client.chat.completions.create(
            model=VLM, messages=question(*parts), temperature=0, max_tokens=1, logprobs=True, top_logprobs=5
        )
        return [t.logprob for t in reply.choices[0].logprobs.content[0].top_logprobs]

    red, blue = image_part(png("red")), image_part(png((0, 0, 255)))
    assert first_token_logprobs(red) != first_token_logprobs(blue)
    two = client.chat.completions.create(model=VLM, messages=question(red, blue), **GREEDY)
    one = client.chat.completions.create(model=VLM, messages=question(red), **GREEDY)
    assert two.usage.prompt_tokens == one.usage.prompt_tokens + 16  # one more image: 16 more tokens


def test_an_image_to_a_text_only_model_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TEXT, messages=question(image_part(png("red"))), **GREEDY)
    assert err.value.status_code == 400
    body = err.value.body
    assert body["type"] == "invalid_request_error"
    assert f"{TEXT} is a text-only model: it cannot see images" in body["message"]
    assert VLM in body["message"]  # the loaded vision model is offered


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (image_part(b"%PDF-1.4 not a picture", "application/pdf"), "is not an image the studio can read"),
        (image_part(png("red")[:70]), "is a damaged PNG file"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,####"}}, "not valid base64"),
        ({"type": "image_url", "image_url": {}}, "has no image"),
    ],
)
def test_bad_images_are_400s_that_say_what_is_wrong(client, part, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(model=VLM, messages=question(part), **GREEDY)
    assert client.chat.completions.create(model=VLM, messages=question(image_part(png("red"))), **GREEDY).choices


def test_image_urls_are_fetched_for_the_owner_only_when_allowed(client, studio, picture_server):
    url = {"type": "image_url", "image_url": {"url": picture_server}}
    fetched = client.chat.completions.create(model=VLM, messages=question(url), **GREEDY)  # --allow-image-urls
    text_only = client.chat.completions.create(model=VLM, messages=question(), **GREEDY)
    assert fetched.usage.prompt_tokens == text_only.usage.prompt_tokens + 16
    # a remote visitor (through a proxy on this machine) is never fetched for, flag or not
    body = {"model": VLM, "messages": question(url), **GREEDY}
    r = httpx.post(studio.url + "v1/chat/completions", json=body, headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 400, r.text
    assert "does not fetch images from the web" in r.json()["error"]["message"]
    missing = {"type": "image_url", "image_url": {"url": picture_server.replace("cat.png", "none")}}
    with pytest.raises(openai.BadRequestError, match="could not be fetched"):
        client.chat.completions.create(model=VLM, messages=question(missing), **GREEDY)


def test_too_many_images_for_the_context_says_the_token_count(client):
    parts = [image_part(png((i * 9, 0, 0))) for i in range(16)]
    with pytest.raises(openai.BadRequestError, match=r"\(256 of them for 16 images\)"):
        client.chat.completions.create(model=VLM, messages=question(*parts), max_tokens=900)
    assert client.models.list()  # still serving
