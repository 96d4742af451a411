"""Faults, on the CPU with the tiny models: out of memory in each engine, a full disk while saving an image or a
checkpoint, and the studio killed with SIGKILL and started again on the same data dir.

What other files already prove, and this one does not repeat:
- tests/integration/test_chat_engine.py::test_out_of_memory_mid_generation_recovers_then_explains: chat, once ->
  retried and answered; every time -> StudioOutOfMemory; then the next request works.
- tests/integration/test_image_engine.py::test_out_of_memory_degrades_then_says_so_and_the_engine_keeps_working:
  image, the degrade ladder (VAE tiling, one at a time), every time -> StudioOutOfMemory; then the next run works.
- tests/unit/test_speech_flow.py::test_out_of_memory_evicts_retries_then_gives_a_message: speech on a scripted
  model, once -> the window is redone; every time -> the message after beam size 1.
- tests/integration/test_training_runs.py::test_kill_9_then_resume_continues_from_the_last_checkpoint: the
  worker killed with SIGKILL mid-run is marked interrupted; Resume continues from its last checkpoint, every step
  once.
Here: the recovery on ONE shared manager (the other engines' idle models are evicted and come back), speech on a
real checkpoint including the request after the message, a real full disk (a small tmpfs), and a real restart.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
import wave
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.engines.chat import ChatParams
from studio.engines.image_params import ImageParams
from studio.engines.speech import SpeechParams
from studio.errors import DiskFullError, StudioOutOfMemory
from studio.models.records import LOADED
from studio.models.specs import ModelSpec
from studio.training.datasets import load_dataset
from studio.training.job import TrainJob
from studio.training.runs import RunManager
from tests.integration.test_training_runs import _job, _runs
from tests.ui.conftest import gradio_call, start_studio, stop_studio

GREEDY = ChatParams(temperature=0, max_new_tokens=8, repetition_penalty=1.0)
HELLO = [{"role": "user", "content": "hello there"}]
DRAW = ImageParams(prompt="a lighthouse at dusk", sampler="Euler a", steps=2, width=64, height=64, seed=5)
LISTEN = SpeechParams(beam_size=1, temperature_fallback=False, language="en")
ASSET = Path(__file__).resolve().parents[2] / "assets" / "datasets" / "studio-faq.jsonl"
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


# ----- out of memory: each engine on one shared manager ----------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    c = build_context(
        StudioConfig(device="cpu", data_dir=tmp_path_factory.mktemp("faults-data"), budget_gb=4), start_monitor=False
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def specs(tiny_models) -> dict[str, ModelSpec]:
    return {
        "chat": ModelSpec("chat", str(tiny_models.causal_lm), "folder", label="tiny-lm"),
        "image": ModelSpec("image", str(tiny_models.sd_pipeline), "folder", "fp32", "cpu"),
        "speech": ModelSpec("speech", str(tiny_models.whisper_pt), "file"),
    }


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    """Two seconds of a 440 Hz tone (not silence, so the speech engine runs the model on it)."""
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(2 * 16_000) / 16_000
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples.tobytes())
    return path


def request(ctx, specs, tone, kind: str):
    """One real request to an engine; returns something that shows it worked."""
    if kind == "chat":
        reply = ctx.chat.complete(specs["chat"], HELLO, GREEDY)
        assert reply.done and reply.stats.new_tokens > 0
        return reply
    if kind == "image":
        *_, last = ctx.image.generate(specs["image"], DRAW)
        assert last.report is not None and len(last.images) == 1 and last.images[0].path.is_file()
        return last
    transcript = ctx.speech.complete(specs["speech"], tone, LISTEN)
    assert transcript.backend == "openai-whisper" and transcript.duration > 1.5 and not transcript.stopped
    return transcript


def first_layer(ctx, spec: ModelSpec):
    """A module every request of this engine runs first: where the out-of-memory error is injected."""
    with ctx.manager.acquire(spec) as lease:
        model = lease.model
    if spec.kind == "chat":
        return model.model.get_input_embeddings()
    if spec.kind == "image":
        return model.unet.conv_in
    return model.encoder.conv1


def inject_oom(monkeypatch, module, times: int | None) -> list[int]:
    """Make `module` raise torch.OutOfMemoryError on its first `times` calls (None: on every call)."""
    import torch

    real, calls = module.forward, []

    def forward(*args, **kwargs):
        calls.append(1)
        if times is None or len(calls) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)
    return calls


def states(ctx) -> dict[str, str]:
    return {r.kind: r.state for r in ctx.manager.records()}


@pytest.mark.parametrize("kind", ["chat", "image", pytest.param("speech", marks=needs_ffmpeg)])
def test_out_of_memory_evicts_the_other_engines_models_retries_and_the_next_request_works(
    ctx, specs, tone, kind, monkeypatch
):
    for spec in specs.values():  # all three resident and idle: what recovery can evict
        with ctx.manager.acquire(spec):
            pass
    assert set(states(ctx).values()) == {LOADED}
    calls = inject_oom(monkeypatch, first_layer(ctx, specs[kind]), times=1)
    t0 = time.time()

    request(ctx, specs, tone, kind)  # recovered: no error reaches the caller

    assert len(calls) >= 2  # it failed once and ran again
    events = ctx.manager.events.since(t0)
    assert [e.kind for e in events if e.kind == "oom"] == ["oom"]
    evicted = {e.model for e in events if e.kind in ("evict", "park", "unload")}
    after = states(ctx)
    others = [k for k in ("chat", "image", "speech") if k != kind]
    assert after[kind] == LOADED and all(after[k] != LOADED for k in others), (after, evicted)
    monkeypatch.undo()
    request(ctx, specs, tone, kind)  # the next request works
    request(ctx, specs, tone, others[0])  # and an evicted model comes back on demand


@needs_ffmpeg
def test_speech_out_of_memory_every_time_gives_a_message_and_the_next_request_works(ctx, specs, tone, monkeypatch):
    inject_oom(monkeypatch, first_layer(ctx, specs["speech"]), times=None)
    with pytest.raises(StudioOutOfMemory, match="Out of memory while whisper-tiny.pt was transcribing, even after"):
        request(ctx, specs, tone, "speech")
    monkeypatch.undo()
    request(ctx, specs, tone, "speech")


# ----- a full disk -------------------------------------------------------------------------------------------


class SmallDisk:
    """A real, small filesystem (tmpfs) that a test fills up and frees again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"  # what "another program" wrote

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free

    def fill(self, leave: int = 0) -> None:
        """Take all the free space but `leave` bytes (whole 4 KiB pages)."""
        for _ in range(20):  # another writer (a download, a worker) may take space between asking and taking
            try:
                with open(self.filler, "wb") as f:
                    if (size := self.free_bytes() - leave) > 0:
                        os.posix_fallocate(f.fileno(), 0, size)
                break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        assert self.free_bytes() <= leave

    def free_up(self) -> None:
        self.filler.unlink()


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """Mount a tmpfs of `size` at `path` for the duration; None when this machine does not let us mount."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        why = mounted.stderr.strip() or f"mount exited with {mounted.returncode}" if mounted.returncode else ""
    except OSError as exc:  # no mount command
        why = str(exc)
    if why:
        yield None, why
        return
    try:
        yield SmallDisk(path), ""
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def png_ok(path: Path) -> str:
    """The parameters text of a complete, readable PNG."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.info["parameters"]


def test_a_full_disk_while_saving_an_image_says_where_keeps_earlier_images_and_leaves_no_partial_file(
    tmp_path, specs, monkeypatch
):
    with small_disk(tmp_path / "disk", "8m") as (disk, why):
        data_dir = (disk.path if disk else tmp_path) / "studio-data"
        c = build_context(StudioConfig(device="cpu", data_dir=data_dir, budget_gb=4), start_monitor=False)
        try:
            *_, first = c.image.generate(specs["image"], replace(DRAW, seed=1, batch_size=2))
            earlier = {s.path: s.path.read_bytes() for s in first.images}
            day = first.images[0].path.parent
            if disk is not None:  # one page left, less than a PNG (about 10 KB): the write starts, then fails
                assert min(len(b) for b in earlier.values()) > 2 * 4096
                disk.fill(leave=4096)
            else:  # fallback where tmpfs cannot be mounted: the PNG writer fails as on a full disk, half-way
                from PIL import Image

                def half_then_full(self, fp, *args, **kwargs):
                    Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

                monkeypatch.setattr(Image.Image, "save", half_then_full)
                warnings.warn(f"tmpfs could not be mounted ({why}): ENOSPC injected into the PNG writer", stacklevel=1)

            with pytest.raises(DiskFullError) as err:
                list(c.image.generate(specs["image"], replace(DRAW, seed=7)))
            assert err.value.message == f"The disk is full: 00003-7.png could not be saved in {day}."
            assert "Free some space on that disk" in err.value.tip and "images saved before are kept" in err.value.tip
            assert sorted(day.iterdir()) == sorted(earlier)  # no partial, zero-byte or hidden temporary file
            for path, data in earlier.items():
                assert path.read_bytes() == data and "Seed: " in png_ok(path)
            assert c.image.gallery() == sorted(earlier, reverse=True)

            if disk is not None:
                disk.free_up()
            else:
                monkeypatch.undo()
            *_, again = c.image.generate(specs["image"], replace(DRAW, seed=7))  # and after freeing space, it works
            assert again.images[0].path == day / "00003-7.png" and "Seed: 7" in png_ok(again.images[0].path)
        finally:
            c.close()


@needs_ffmpeg
def test_a_full_disk_while_saving_a_transcript_answers_507_disk_full_and_leaves_no_file(
    tmp_path, specs, tone, monkeypatch
):
    """As for images: the API says the studio's disk is full (not the request's fault), and no empty or temporary
    file is left beside the transcripts saved before."""
    import fastapi
    from fastapi.testclient import TestClient

    from studio.api import audio

    with small_disk(tmp_path / "disk", "8m") as (disk, why):
        data_dir = (disk.path if disk else tmp_path) / "studio-data"
        c = build_context(StudioConfig(device="cpu", data_dir=data_dir, budget_gb=4), start_monitor=False)
        app = fastapi.FastAPI()
        audio.register(app, c)
        c.speech.load(specs["speech"])  # held: the API serves it by name
        form = {"model": specs["speech"].name, "response_format": "text", "temperature": "0.2"}  # no fallbacks
        try:
            with TestClient(app) as http:

                def transcribe():
                    return http.post(
                        "/v1/audio/transcriptions", data=form, files={"file": ("tone.wav", tone.read_bytes())}
                    )

                first = transcribe()
                assert first.status_code == 200 and first.text.strip(), first.text
                (folder,) = (data_dir / "outputs" / "transcripts").iterdir()
                earlier = {p: p.read_bytes() for p in folder.iterdir()}
                assert sorted(p.name for p in earlier) == ["tone.json", "tone.srt", "tone.txt", "tone.vtt"]
                if disk is not None:
                    disk.fill(leave=0)
                else:  # fallback where tmpfs cannot be mounted: writing a transcript fails as on a full disk
                    real = Path.write_text

                    def full(self, *args, **kwargs):
                        if self.parent != folder:
                            return real(self, *args, **kwargs)
                        self.write_bytes(b"")  # created, then nothing fits
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

                    monkeypatch.setattr(Path, "write_text", full)
                    warnings.warn(f"tmpfs could not be mounted ({why}): ENOSPC injected into the writer", stacklevel=1)

                r = transcribe()
                assert r.status_code == 507, r.text
                error = r.json()["error"]
                assert error["code"] == "disk_full" and error["type"] == "server_error", error
                assert error["message"].startswith(f"The disk is full: the transcript could not be saved in {folder}")
                assert "transcripts saved before are kept" in error["message"]
                assert {p: p.read_bytes() for p in folder.iterdir()} == earlier  # no 0-byte, partial or .tmp file

                if disk is not None:
                    disk.free_up()
                else:
                    monkeypatch.undo()
                again = transcribe()  # and after freeing space, it works
                assert again.status_code == 200, again.text
                assert sorted(p.name for p in folder.iterdir() if p not in earlier) == [
                    "tone-2.json",
                    "tone-2.srt",
                    "tone-2.txt",
                    "tone-2.vtt",
                ]
        finally:
            c.close()


def _tiny_job(tiny_models, **overrides) -> TrainJob:
    """The training tests' tiny job, without evaluation, checkpointing every 4 steps."""
    return _job(tiny_models, **{"eval_every": 0, "save_every": 4, **overrides})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_while_saving_a_checkpoint_fails_clearly_keeps_earlier_checkpoints_and_resumes(
    tmp_path, tiny_models
):
    # the checks before a start want 200 MB to spare, so the disk fills up while the run is under way
    with small_disk(tmp_path / "disk", "256m") as (disk, why):
        if disk is None:
            pytest.skip(f"needs a tmpfs to fill while the worker runs, and mount failed: {why}")
        runs = _runs(disk.path)
        run = runs.create(_tiny_job(tiny_models, max_steps=10), load_dataset(ASSET))
        pid = runs.start(run)
        try:
            _fill_the_disk_during_a_checkpoint(disk, runs, run, pid, tiny_models)
        finally:
            if runs.is_running(run):  # a failed assertion must not leave a paused worker behind
                os.kill(runs.pid(run) or pid, signal.SIGKILL)
                runs.wait(run, 30)


def _fill_the_disk_during_a_checkpoint(disk: SmallDisk, runs: RunManager, run, pid: int, tiny_models) -> None:
    """Pause the worker right after its step-4 checkpoint, fill the disk, let it run into the step-8 checkpoint."""
    from studio.training.dist import Dist
    from studio.training.worker import Trainer

    deadline = time.monotonic() + 120
    while not run.checkpoint_steps():  # step 4 is on disk: pause the worker there, then fill the disk
        assert time.monotonic() < deadline and runs.is_running(run), run.log_file.read_text()[-3000:]
        time.sleep(0.005)
    os.kill(pid, signal.SIGSTOP)
    assert run.checkpoint_steps() == [4], "the worker got past step 8 before it could be paused"
    step4 = run.checkpoints / "step-4"
    saved = _files(step4)
    disk.fill(leave=96 * 1024)  # room for status and metrics lines, not for the next checkpoint (~440 KB)
    os.kill(pid, signal.SIGCONT)

    assert runs.wait(run, 120) == 1
    status = runs.state(run)
    message = f"The disk is full: the checkpoint at step 8 could not be saved in {run.checkpoints} "
    assert status["state"] == "failed" and status["message"].startswith(message), status
    assert "then press Resume to continue from step 4; what was saved before is intact." in status["message"]
    assert f"error: {message}" in run.log_file.read_text()  # worker.log says it too, in one line
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-4"]  # no partial checkpoint left
    assert _files(step4) == saved  # the earlier checkpoint is untouched...

    disk.free_up()
    runs.start(run)  # ...and loadable: Resume continues from it once there is room
    assert runs.wait(run, 120) == 0, run.log_file.read_text()[-3000:]
    status = runs.state(run)
    assert status["state"] == "done" and status["step"] == 10
    assert [m["step"] for m in run.metrics() if m.get("event") == "resume"] == [4]
    assert [m["step"] for m in run.metrics() if "loss" in m] == list(range(1, 11))

    # the adapter: saving it onto a full disk keeps the one already there
    trainer = Trainer(run, run.job(), Dist())
    trainer.peft_model = _peft_model(tiny_models.causal_lm, run.adapter)
    adapter = _files(run.adapter)
    disk.fill(leave=0)
    with pytest.raises(
        DiskFullError, match=re.escape(f"The disk is full: the adapter could not be saved in {run.path} (")
    ):
        trainer.save_adapter()
    assert _files(run.adapter) == adapter and not (run.path / ".adapter.tmp").exists()
    disk.free_up()


def _peft_model(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter), is_trainable=True)


# ----- the studio killed and started again -----------------------------------------------------------------


def _call(studio, api_name: str, data: list) -> list:
    """One Gradio API call over HTTP (127.0.0.1 only); the outputs, or AssertionError with the page's error."""
    event, payload = gradio_call(studio, api_name, data, timeout=120)
    assert event == "complete", f"{api_name}: {event} {payload}"
    return json.loads(payload)


def _page(studio) -> dict[str, dict]:
    """What the page shows when it opens: each component's props by elem_id (GET /config)."""
    config = httpx.get(studio.url + "config", timeout=30).json()
    return {c["props"]["elem_id"]: c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}


def test_killed_with_sigkill_and_restarted_the_studio_finds_its_images_runs_and_adapters(tmp_path, tiny_models):
    data_dir = tmp_path / "studio-data"
    runs = RunManager(_runs(tmp_path).manager, data_dir / "runs")  # a finished run in the studio's runs/
    run = runs.create(_tiny_job(tiny_models, max_steps=2, save_every=0), load_dataset(ASSET))
    runs.start(run)  # trains (headless, its own process) while the studio starts
    first = start_studio(data_dir, "--device", "cpu", "--budget-gb", "2")
    try:
        gallery, status = _call(
            first,
            "image_generate",
            ["tiny-sd", "fp32", "a red fox", "", "Euler a", 2, 7, 64, 64, 77, 1, 1, None, 0.75],
        )
        assert "seed 77" in status, status
        image = next((data_dir / "outputs" / "images").glob("*/*-77.png"))
        assert gallery[0]["image"]["orig_name"] == image.name
        runs.wait(run, 120)  # None when it has already ended
        assert runs.state(run)["state"] == "done", run.log_file.read_text()[-3000:]
        assert (run.adapter / "adapter_config.json").is_file()
    finally:
        first.proc.send_signal(signal.SIGKILL)  # no shutdown, no cleanup
        first.proc.wait(30)
    assert first.proc.returncode == -signal.SIGKILL

    second = start_studio(data_dir, "--device", "cpu", "--budget-gb", "2")
    try:
        page = _page(second)
        # the Image tab: the gallery opens with the image, and serves its bytes
        caption = f"{image.parent.name} #{image.name[:5]} · seed 77"
        assert [item["caption"] for item in page["image-gallery"]["value"]] == [caption]
        (item,) = _call(second, "image_gallery", [])[0]
        assert item["caption"] == caption and item["image"]["orig_name"] == image.name
        assert httpx.get(item["image"]["url"], timeout=30).content == image.read_bytes()
        # the Fine-tune tab: the run is listed, done, and opens
        assert [value for _label, value in page["ft-runs"]["choices"]] == [run.name]
        assert "done 2/2" in page["ft-runs"]["choices"][0][0]
        outputs = _call(second, "ft_select", [run.name])
        progress = next(o for o in outputs if isinstance(o, str) and o.startswith(f"**{run.name}**"))
        assert "done · step 2 / 2" in progress and f"The adapter is in {run.adapter}" in progress, progress
        # the Chat tab: the run's adapter is offered, and attaches to its base model
        assert [value for _label, value in page["chat-adapter-path"]["choices"]] == [str(run.adapter)]
        _answer_with, note = _call(second, "chat_attach", [str(tiny_models.causal_lm), "fp32", str(run.adapter)])
        assert "Attached" in note, note
    finally:
        stop_studio(second)
