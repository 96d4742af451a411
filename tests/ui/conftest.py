"""A real studio process and a real Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Studio:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path


def start_studio(data_dir: Path, *args: str, timeout: float = 90.0) -> Studio:
    """`python launch.py` in a child process; returns once the page answers HTTP 200."""
    port = free_port()
    log = data_dir.parent / f"studio-{port}.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "launch.py", "--no-browser", "--port", str(port), "--data-dir", str(data_dir), *args],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return Studio(url, data_dir, proc, log)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"studio did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def gradio_call(
    studio: Studio, api_name: str, data: list, headers: dict | None = None, *, timeout: float = 60
) -> tuple[str, str]:
    """One Gradio API call over HTTP, as a page's client makes it; returns (the last SSE event, its data).
    NaN and Infinity go as Python's JSON writes them (Gradio's server reads them)."""
    import httpx

    with httpx.Client(base_url=studio.url, timeout=timeout, headers=headers or {}) as client:
        body = json.dumps({"data": data}, allow_nan=True)
        r = client.post(f"gradio_api/call/{api_name}", content=body, headers={"content-type": "application/json"})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        event, payload = "", ""
        with client.stream("GET", f"gradio_api/call/{api_name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    payload = line.split(":", 1)[1].strip()
                    if event in ("complete", "error"):
                        break
        return event, payload


def stop_studio(studio: Studio) -> None:
    studio.proc.terminate()
    try:
        studio.proc.wait(15)
    except subprocess.TimeoutExpired:
        studio.proc.kill()


@contextlib.contextmanager
def studio_with(data_dir: Path, *models: tuple[str, Path], args: tuple[str, ...] = ()) -> Iterator[Studio]:
    """A CPU studio with a 2 GB budget and `models` ((kind, folder) pairs) loaded through the Models tab's API, as a
    user's script would load them; stopped on exit."""
    from gradio_client import Client

    s = start_studio(data_dir, "--device", "cpu", "--budget-gb", "2", *args)
    try:
        if models:
            ui = Client(s.url, verbose=False)
            for kind, folder in models:
                result = ui.predict(kind, str(folder), "fp32", api_name="/models_load")
                assert " loaded: " in result, result
        yield s
    finally:
        stop_studio(s)


def openai_client(studio: Studio, timeout: float = 120):
    """The official client on the studio's /v1, as a user's tool makes it."""
    from openai import OpenAI

    return OpenAI(base_url=studio.url + "v1", api_key="not-needed", max_retries=0, timeout=timeout)


def endless_lm(folder: Path) -> Path:
    """A tiny LM with a long context whose sampled replies (top-k 5) never end by themselves, so a reply runs until
    it is stopped by hand: the end token's embedding row (tied to the output layer) is zero, so its logit is 0 while
    the five likeliest of 640 random logits are well above it. A random model otherwise ends some replies after a
    few hundred tokens, which on a fast machine is before the test's Stop."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.models.tiny import build_tiny_causal_lm

    folder = build_tiny_causal_lm(folder, max_position_embeddings=32768)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight[model.generation_config.eos_token_id].zero_()
    # its own sampling defaults are the long-reply ones too, so a late answer of the page's model-defaults step
    # (which sets the sampling fields from them) cannot shorten the reply a test set up
    model.generation_config.update(do_sample=True, temperature=1.0, top_k=5, max_new_tokens=30000)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Iterator[Studio]:
    s = start_studio(tmp_path_factory.mktemp("studio-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run `bash scripts/setup.sh --test`"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a loaded 2-core CI machine answers slower than Playwright's 5 s default
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(30_000)
    yield p
    context.close()


def assert_error_badge_beside_text(page, block: str) -> None:
    """A status line that shows a failure: Gradio's "Error" badge is visible and covers none of the text."""
    from playwright.sync_api import expect

    badge = page.locator(f"{block} [data-testid=status-tracker] .error")
    expect(badge).to_be_visible()
    b = badge.bounding_box()
    for text in page.locator(f"{block} [data-testid=markdown] p").all():
        t = text.bounding_box()
        # the paragraph's box (its text wraps inside it) and the badge's box do not meet
        apart = b["x"] >= t["x"] + t["width"] or t["x"] >= b["x"] + b["width"]
        apart = apart or b["y"] >= t["y"] + t["height"] or t["y"] >= b["y"] + b["height"]
        assert apart, (b, t)
