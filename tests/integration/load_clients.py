"""One visitor of the load test (tests/integration/test_load.py), in a process of its own as a real visitor is:
`python -m tests.integration.load_clients KIND URL LM CLIP GO SECONDS` prepares (imports, connects), prints "ready",
waits for the file GO to appear, then sends KIND requests for SECONDS and prints {"done", "busy", "failures"} as
JSON. The test starts all visitors together once all are ready, however long a busy machine takes to prepare them. Busy answers are part of fair use; any other
failure is reported."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

NO_ADAPTER = "(none: base model)"  # studio.ui.chat_tab.NO_ADAPTER (not imported: it would pull in all of Gradio)


def is_busy(exc: BaseException) -> bool:
    """The two ways a full line answers: OpenAI's 503 with code "busy", and Gradio's full queue."""
    text = str(exc)
    return ("busy" in text and "Try again" in text) or "Queue is full" in text or "currently busy" in text


def api(url: str):
    import openai

    return openai.OpenAI(base_url=url + "v1", api_key="not-needed", max_retries=0, timeout=120)


def caller(kind: str, url: str, lm: str, clip: Path) -> Callable[[], None]:
    """The request KIND makes, again and again."""
    from gradio_client import Client, handle_file

    lm_id = Path(lm).name
    if kind == "page-chat":
        ui = Client(url, verbose=False)
        history = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
        settings = ("fp32", "", 0.7, 0.95, 40, 1.0, 12, -1, 0, NO_ADAPTER, False)

        def call():
            hist, _side, stats = ui.predict(history, [], lm, *settings, api_name="/chat")
            assert hist[-1]["role"] == "assistant" and "tok/s" in stats, stats

    elif kind == "page-image":
        ui = Client(url, verbose=False)
        drawing = ("tiny-sd", "fp32", "a red fox", "", "Euler", 2, 7, 64, 64, -1, 1, 1, None, 0.75)

        def call():
            gallery, status = ui.predict(*drawing, api_name="/image_generate")
            assert gallery and Path(gallery[0]["image"]).suffix == ".png", status

    elif kind == "page-speech":
        ui = Client(url, verbose=False)
        options = ("starter:whisper-tiny.en", "int8", "auto", "transcribe", "", 1, False, False, True)

        def call():
            status, text, _table, files = ui.predict(
                handle_file(str(clip)), None, *options, api_name="/speech_transcribe"
            )
            assert "hello" in text.lower() and files, status

    elif kind in ("api-chat", "api-chat-stream"):
        client = api(url)
        ask = {"model": lm_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}

        def call():
            if kind == "api-chat-stream":
                chunks = client.chat.completions.create(stream=True, **ask)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                text = client.chat.completions.create(**ask).choices[0].message.content
            assert isinstance(text, str)

    elif kind == "api-image":
        client = api(url)

        def call():
            out = client.images.generate(
                model="tiny-sd", prompt="a lighthouse", size="64x64", n=1, response_format="b64_json",
                extra_body={"steps": 2},
            )  # fmt: skip
            assert out.data[0].b64_json

    elif kind == "api-speech":
        client = api(url)

        def call():
            with clip.open("rb") as fh:
                text = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="text")
            assert "hello" in str(text).lower()

    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return call


def run(kind: str, url: str, lm: str, clip: Path, go: Path, seconds: float) -> dict:
    call = caller(kind, url, lm, clip)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.02)
    end = time.time() + seconds
    if kind.startswith("api-chat"):  # the page's chat loads the LM; the API serves loaded models only
        client, lm_id = api(url), Path(lm).name
        while time.time() < end and lm_id not in {m.id for m in client.models.list().data}:
            time.sleep(0.2)
    done, busy, failures = 0, 0, []
    while time.time() < end:
        try:
            call()
            done += 1
        except Exception as exc:  # noqa: BLE001 - busy is fair use; anything else is reported
            if is_busy(exc):
                busy += 1
                time.sleep(0.3)
            else:
                failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:500])
                time.sleep(0.5)
    return {"done": done, "busy": busy, "failures": failures}


if __name__ == "__main__":
    kind, url, lm, clip, go, seconds = sys.argv[1:7]
    print(json.dumps(run(kind, url, lm, Path(clip), Path(go), float(seconds))), flush=True)
