"""Fair use under load: eight clients at once for a minute, mixed chat, image and speech, through the page's
Gradio API (gradio_client) and the OpenAI-compatible API (the official `openai` client).

The studio runs in this process (`studio.app.start(..., block=False)`, the same code `python launch.py` runs), so
the test can watch the model manager while the clients hammer it: every request completes or is told the studio
is busy, no model is loaded twice, what the manager accounts for never exceeds the budget, and the memory bar
answers in under a second throughout. `--max-queue 2` keeps the line short, so "busy" is part of the run.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from studio.ui.chat_tab import NO_ADAPTER
from tests.ui.conftest import free_port

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("STUDIO_LOAD_SECONDS", "60"))  # the issue asks for one minute
MAX_QUEUE = 2


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Two seconds of speech (espeak-ng)."""
    wav = tmp_path_factory.mktemp("load-audio") / "hello.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), "hello there, how are you"], check=True)
    return wav


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A studio in this process; yields (ctx, url)."""
    from studio.app import start
    from studio.config import load_config

    port = free_port()
    data = tmp_path_factory.mktemp("load-data")
    config = load_config(
        [
            "--no-browser",
            "--device",
            "cpu",
            "--budget-gb",
            "3",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--max-queue",
            str(MAX_QUEUE),
        ],
        environ={},
    )
    ctx, blocks = start(config, block=False)
    yield ctx, f"http://127.0.0.1:{port}/"
    blocks.close()
    ctx.close()


def _is_busy(exc: BaseException) -> bool:
    """The two ways a full line answers: OpenAI's 503 with code "busy", and Gradio's full queue."""
    text = str(exc)
    return ("busy" in text and "Try again" in text) or "Queue is full" in text or "currently busy" in text


def test_eight_clients_for_a_minute(served, tiny_models, clip):
    import openai
    from gradio_client import Client, handle_file

    ctx, url = served
    manager = ctx.manager
    lm = str(tiny_models.causal_lm)
    lm_id = Path(lm).name
    t_start = time.time()
    deadline = time.monotonic() + SECONDS
    done: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    failures: list[str] = []
    over_budget: list[str] = []
    bar_latency: list[float] = []
    models_latency: list[float] = []
    stop = threading.Event()

    def api() -> openai.OpenAI:
        return openai.OpenAI(base_url=url + "v1", api_key="not-needed", max_retries=0, timeout=120)

    def loop(name: str, call) -> None:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                call()
                done[name] += 1
            except Exception as exc:  # noqa: BLE001 - sorted below: busy is fine, anything else fails the test
                if _is_busy(exc):
                    busy[name] += 1
                    time.sleep(0.3)
                else:
                    failures.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
                    time.sleep(0.5)

    # --- the page's API (gradio_client) -------------------------------------------------------------------
    def page_chat():
        ui = Client(url, verbose=False)
        history = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
        settings = ("fp32", "", 0.7, 0.95, 40, 1.0, 12, -1, 0, NO_ADAPTER, False)

        def call():
            hist, _side, stats = ui.predict(history, [], lm, *settings, api_name="/chat")
            assert hist[-1]["role"] == "assistant" and "tok/s" in stats, stats

        loop("page chat", call)

    def page_image():
        ui = Client(url, verbose=False)

        def call():
            gallery, status = ui.predict(
                "tiny-sd",
                "fp32",
                "a red fox",
                "",
                "Euler",
                2,
                7,
                64,
                64,
                -1,
                1,
                1,
                None,
                0.75,
                api_name="/image_generate",
            )
            assert gallery and Path(gallery[0]["image"]).suffix == ".png", status

        loop("page image", call)

    def page_speech():
        ui = Client(url, verbose=False)

        def call():
            status, text, _table, files = ui.predict(
                handle_file(str(clip)),
                None,
                "starter:whisper-tiny.en",
                "int8",
                "auto",
                "transcribe",
                "",
                1,
                False,
                False,
                True,
                api_name="/speech_transcribe",
            )
            assert "hello" in text.lower() and files, status

        loop("page speech", call)

    # --- the OpenAI-compatible API --------------------------------------------------------------------------
    def wait_for_model(client) -> None:  # the page's chat loads the LM; the API serves loaded models only
        while time.monotonic() < deadline and lm_id not in {m.id for m in client.models.list().data}:
            time.sleep(0.2)

    def api_chat(stream: bool):
        client = api()

        def call():
            kwargs = {"model": lm_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
            if stream:
                text = "".join(
                    c.choices[0].delta.content or ""
                    for c in client.chat.completions.create(stream=True, **kwargs)
                    if c.choices
                )
            else:
                text = client.chat.completions.create(**kwargs).choices[0].message.content
            assert isinstance(text, str)

        wait_for_model(client)
        loop("api chat stream" if stream else "api chat", call)

    def api_image():
        client = api()

        def call():
            out = client.images.generate(
                model="tiny-sd",
                prompt="a lighthouse",
                size="64x64",
                n=1,
                response_format="b64_json",
                extra_body={"steps": 2},
            )
            assert out.data[0].b64_json

        loop("api image", call)

    def api_speech():
        client = api()

        def call():
            with clip.open("rb") as fh:
                text = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="text")
            assert "hello" in str(text).lower()

        loop("api speech", call)

    # --- observers: the memory bar's answer time and the manager's books ----------------------------------------
    def memory_bar():
        with httpx.Client(base_url=url, timeout=10) as http:  # as the page asks: a direct call, never queued
            while not stop.is_set():
                t0 = time.perf_counter()
                r = http.post("gradio_api/run/memory_bar", json={"data": []})
                bar_latency.append(time.perf_counter() - t0)
                html = r.json()["data"][0] if r.status_code == 200 else r.text
                if "budget" not in html.lower():
                    failures.append(f"memory bar: {html[:300]}")
                t0 = time.perf_counter()  # the Models tab's table too
                r = http.post("gradio_api/run/models_list", json={"data": [None, ""]})
                models_latency.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures.append(f"models tab: {r.status_code} {r.text[:300]}")
                time.sleep(0.25)

    def books():
        while not stop.is_set():
            accounted, budget = manager.accounted_bytes(), manager.budget_bytes()
            if accounted > budget:
                over_budget.append(f"{accounted} > {budget}")
            time.sleep(0.05)

    clients = [
        threading.Thread(target=page_chat),
        threading.Thread(target=page_image),
        threading.Thread(target=page_speech),
        threading.Thread(target=api_chat, args=(False,)),
        threading.Thread(target=api_chat, args=(True,)),
        threading.Thread(target=api_chat, args=(False,)),
        threading.Thread(target=api_image),
        threading.Thread(target=api_speech),
    ]
    observers = [threading.Thread(target=memory_bar, daemon=True), threading.Thread(target=books, daemon=True)]
    for t in observers + clients:
        t.start()
    for t in clients:
        t.join(SECONDS + 240)
    stop.set()
    for t in observers:
        t.join(30)
    assert not any(t.is_alive() for t in clients), "a client hung"

    assert not failures, "\n".join(failures[:10])
    for kind in ("chat", "image", "speech"):  # every kind of work got through, on both APIs
        assert sum(n for name, n in done.items() if kind in name and "page" in name) >= 1, (done, busy)
        assert sum(n for name, n in done.items() if kind in name and "api" in name) >= 1, (done, busy)
    assert not over_budget, over_budget[:5]
    events = [e for e in ctx.events.since(t_start)]
    assert not [e for e in events if e.kind in ("evict", "unload", "oom")], events
    loads = Counter(e.model for e in events if e.kind == "load")
    assert loads and all(n == 1 for n in loads.values()), f"a model was loaded twice: {loads}"
    assert len(bar_latency) >= SECONDS, len(bar_latency)
    assert max(bar_latency) < 1.0, (
        f"the memory bar took {max(bar_latency):.2f} s (median {sorted(bar_latency)[len(bar_latency) // 2]:.3f})"
    )
    assert max(models_latency) < 1.0, f"the Models tab took {max(models_latency):.2f} s"
    print(
        f"done {dict(done)}; busy {dict(busy)}; loads {dict(loads)}; memory bar max {max(bar_latency) * 1000:.0f} ms;"
        f" Models tab max {max(models_latency) * 1000:.0f} ms"
    )


def test_a_full_line_says_busy_and_visitors_see_their_place(served, tiny_models):
    """The GPU held by a long job: waiting page requests are told their place, one more is turned away at once
    with "busy, try again" (OpenAI's 503 with Retry-After; Gradio's queue-full), and all is well afterwards."""
    import openai
    from gradio_client import Client
    from gradio_client.utils import Status

    ctx, url = served
    lane = ctx.chat.lane
    assert lane is ctx.image.lane is ctx.speech.lane  # one lane for all GPU work
    lm = str(tiny_models.causal_lm)
    ui = Client(url, verbose=False)
    history = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    settings = ("fp32", "", 0.0, 0.95, 40, 1.0, 4, 1, 0, NO_ADAPTER, False)
    ui.predict(history, [], lm, *settings, api_name="/chat")  # loaded, so the API serves it
    lm_id = Path(lm).name
    client = openai.OpenAI(base_url=url + "v1", api_key="not-needed", max_retries=0, timeout=60)

    assert lane.wait()  # a long job holds the GPU
    results: dict[int, str] = {}
    try:
        # the page's line: the first job waits for the GPU, the next two wait in Gradio's queue with their place
        jobs = [ui.submit(history, [], lm, *settings, api_name="/chat") for _ in range(3)]
        deadline = time.monotonic() + 20
        ranks: dict[int, int] = {}
        while (len(ranks) < 2 or lane.waiting() < 1) and time.monotonic() < deadline:
            for i, job in enumerate(jobs):
                st = job.status()
                if st.code == Status.IN_QUEUE and st.rank is not None:
                    ranks[i] = st.rank
            time.sleep(0.1)
        assert lane.waiting() == 1 and len(ranks) >= 2, (lane.waiting(), ranks)  # visitors are told their place
        extra = ui.submit(history, [], lm, *settings, api_name="/chat")
        with pytest.raises(Exception) as full:
            extra.result(timeout=15)
        assert _is_busy(full.value), full.value

        # the API's line: one more caller waits for the GPU, and the next is turned away at once
        def ask(i: int) -> None:
            r = client.chat.completions.create(
                model=lm_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
            )
            results[i] = r.choices[0].message.content

        waiter = threading.Thread(target=ask, args=(0,))
        waiter.start()
        deadline = time.monotonic() + 10
        while lane.waiting() < MAX_QUEUE:
            assert time.monotonic() < deadline, lane.waiting()
            time.sleep(0.02)
        t0 = time.monotonic()
        r = httpx.post(
            url + "v1/chat/completions",
            json={"model": lm_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=10,
        )
        assert r.status_code == 503 and time.monotonic() - t0 < 2, r.text
        assert r.json()["error"]["code"] == "busy" and "Try again" in r.json()["error"]["message"]
        assert r.headers["Retry-After"].isdigit()
    finally:
        lane.release()
    waiter.join(60)
    assert list(results) == [0]  # the one that waited got its answer
    for job in jobs:  # and so did every visitor in the line
        hist, _side, _stats = job.result(timeout=60)
        assert hist[-1]["role"] == "assistant" and hist[-1]["content"]
