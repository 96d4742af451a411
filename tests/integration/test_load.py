"""Fair use under load: eight clients at once for a minute, mixed chat, image and speech, through the page's
Gradio API (gradio_client) and the OpenAI-compatible API (the official `openai` client).

The studio runs in this process (`studio.app.start(..., block=False)`, the same code `python launch.py` runs), so
the test can watch the model manager while the clients hammer it: every request completes or is told the studio
is busy, no model is loaded twice, what the manager accounts for never exceeds the budget, and the memory bar
answers in under a second throughout. `--max-queue 2` keeps the line short, so "busy" is part of the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from studio.ui.chat_tab import NO_ADAPTER
from tests.integration.load_clients import is_busy
from tests.ui.conftest import ROOT, free_port

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


KINDS = (
    "page-chat",
    "page-image",
    "page-speech",
    "api-chat",
    "api-chat-stream",
    "api-chat",
    "api-image",
    "api-speech",
)


def test_eight_clients_for_a_minute(served, tiny_models, clip, tmp_path):
    """Eight visitors, each a process of its own (tests/integration/load_clients.py), for a minute; this process
    serves them and watches the manager and the memory bar."""
    ctx, url = served
    manager = ctx.manager
    t_start = time.time()
    go = tmp_path / "go"  # the visitors prepare (imports, connecting), then all begin together when it appears
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.load_clients",
                kind,
                url,
                str(tiny_models.causal_lm),
                str(clip),
                str(go),
                str(SECONDS),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for kind in KINDS
    ]
    try:
        for kind, proc in zip(KINDS, clients, strict=True):
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                raise AssertionError(f"{kind} client did not start: {line!r}\n{proc.stderr.read()[-3000:]}")
    except BaseException:
        for proc in clients:
            proc.kill()
        raise
    # the observer connects (and each route answers once) before the visitors begin: what is measured is the page's
    # polling under load, not a first connection made while eight visitors start at once
    http = httpx.Client(base_url=url, timeout=10)
    http.post("gradio_api/run/memory_bar", json={"data": []})
    http.post("gradio_api/run/models_list", json={"data": [None, ""]})
    go.write_text("go")
    failures: list[str] = []
    over_budget: list[str] = []
    bar_latency: list[float] = []
    models_latency: list[float] = []
    stop = threading.Event()

    def observe() -> None:  # the memory bar and the Models tab as the page asks: direct calls, never queued
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = http.post("gradio_api/run/memory_bar", json={"data": []})
                bar_latency.append(time.perf_counter() - t0)
                html = r.json()["data"][0] if r.status_code == 200 else r.text
                if "budget" not in html.lower():
                    failures.append(f"memory bar: {html[:300]}")
                t0 = time.perf_counter()
                r = http.post("gradio_api/run/models_list", json={"data": [None, ""]})
                models_latency.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures.append(f"models tab: {r.status_code} {r.text[:300]}")
                time.sleep(0.25)
        finally:
            http.close()

    def books() -> None:
        while not stop.is_set():
            accounted, budget = manager.accounted_bytes(), manager.budget_bytes()
            if accounted > budget:
                over_budget.append(f"{accounted} > {budget}")
            time.sleep(0.05)

    observers = [threading.Thread(target=observe, daemon=True), threading.Thread(target=books, daemon=True)]
    for t in observers:
        t.start()
    results: dict[str, dict] = {}
    try:
        for i, (kind, proc) in enumerate(zip(KINDS, clients, strict=True)):
            out, err = proc.communicate(timeout=SECONDS + 300)
            assert proc.returncode == 0, f"{kind} client failed:\n{err[-3000:]}"
            results[f"{kind}-{i}"] = json.loads(out.strip().splitlines()[-1])
    finally:
        stop.set()
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
    for t in observers:
        t.join(30)

    done = {name: r["done"] for name, r in results.items()}
    busy = {name: r["busy"] for name, r in results.items()}
    failures += [f for r in results.values() for f in r["failures"]]
    assert not failures, "\n".join(failures[:10])
    for kind in ("chat", "image", "speech"):  # every kind of work got through, on both APIs
        for door in ("page", "api"):
            assert sum(n for name, n in done.items() if kind in name and name.startswith(door)) >= 1, (done, busy)
    assert not over_budget, over_budget[:5]
    events = ctx.events.since(t_start)
    assert not [e for e in events if e.kind in ("evict", "unload", "oom")], events
    loads = Counter(e.model for e in events if e.kind == "load")
    assert loads and all(n == 1 for n in loads.values()), f"a model was loaded twice: {loads}"
    assert len(bar_latency) >= SECONDS, len(bar_latency)
    # never queued behind GPU work: that would hold most polls for seconds while eight visitors keep the lane busy.
    # One slow poll alone is the 2-core machine starved by the test run beside this one, not a queue.
    for name, latency in (("memory bar", bar_latency), ("Models tab", models_latency)):
        ranked = sorted(latency)
        p95, median = ranked[int(len(ranked) * 0.95)], ranked[len(ranked) // 2]
        assert p95 < 1.0 and ranked[-1] < 3.0, (
            f"the {name} took {ranked[-1]:.2f} s at most, {p95:.2f} s at the 95th percentile (median {median:.3f})"
        )
    print(
        f"done {done}; busy {busy}; loads {dict(loads)}; memory bar max {max(bar_latency) * 1000:.0f} ms;"
        f" Models tab max {max(models_latency) * 1000:.0f} ms"
    )


def _in_line(job, place: int | None, lane) -> bool:
    """The job waits for the GPU (place None: in the lane) or in Gradio's queue at `place`; a job that ended
    instead (say, turned away) fails the test with what it heard."""
    from gradio_client.utils import Status

    st = job.status()
    if st.code == Status.FINISHED:
        raise AssertionError(f"the visitor's request ended instead of waiting: {job.exception(timeout=1)!r}")
    if place is None:
        return lane.waiting() == 1
    return st.code == Status.IN_QUEUE and st.rank == place


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_full_line_says_busy_and_visitors_see_their_place(served, tiny_models):
    """The GPU held by a long job: waiting page requests are told their place, one more is turned away at once
    with "busy, try again" (OpenAI's 503 with Retry-After; Gradio's queue-full), and all is well afterwards."""
    import openai
    from gradio_client import Client

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
        # the page's line: the first job waits for the GPU, the next two wait in Gradio's queue with their place.
        # One at a time, so that Gradio's bounded queue never sees two joins before it has moved the first on.
        jobs = []
        for place in (None, 0, 1):
            jobs.append(ui.submit(history, [], lm, *settings, api_name="/chat"))
            _until(
                lambda place=place, job=jobs[-1]: _in_line(job, place, lane),
                20,
                f"visitor {len(jobs)} to be told its place ({place})",
            )
        extra = ui.submit(history, [], lm, *settings, api_name="/chat")
        with pytest.raises(Exception) as full:
            extra.result(timeout=15)
        assert is_busy(full.value), full.value

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
