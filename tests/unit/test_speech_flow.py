"""The speech engine's control flow on a scripted model (no weights): out-of-memory recovery, stop, progress,
and the Speech tab's small helpers."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from studio.engines.audio import SAMPLE_RATE
from studio.engines.speech import SpeechEngine, SpeechParams
from studio.errors import InputError, StudioOutOfMemory
from studio.models.estimate import Estimate
from studio.models.kinds import KindRegistry, ModelKind
from studio.models.specs import ModelSpec
from tests.managers import cpu_manager

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


class WhisperModel:
    """Looks like faster_whisper.WhisperModel to the engine: one segment per second of audio it is given.
    `fail` lists the calls (1-based) that raise an out-of-memory error first."""

    def __init__(self, fail: tuple[int, ...] = ()) -> None:
        self.model = SimpleNamespace(is_multilingual=True)
        self.fail = fail
        self.calls: list[dict] = []

    def transcribe(self, audio, **options):
        self.calls.append({"seconds": len(audio) / SAMPLE_RATE, **options})
        if len(self.calls) in self.fail:
            raise RuntimeError("CUDA failed with error out of memory")
        info = SimpleNamespace(language="de", language_probability=0.875)
        n = int(len(audio) / SAMPLE_RATE)

        def segments():
            for i in range(n):
                yield SimpleNamespace(
                    id=i, start=float(i), end=i + 0.9, text=f" word{i}", avg_logprob=-0.1, no_speech_prob=0.01,
                    compression_ratio=1.2, temperature=0.0, words=None,
                )  # fmt: skip

        return segments(), info


def _engine(model: WhisperModel, tmp_path: Path) -> tuple[SpeechEngine, ModelSpec]:
    kinds = KindRegistry()
    kinds.register(
        ModelKind(
            "speech",
            lambda spec, opts: model,
            estimate=lambda spec, workload: Estimate(1000, 1000, 10, "scripted"),
            measure=lambda m, spec: 1000,
        )
    )
    manager = cpu_manager(tmp_path, kinds=kinds)
    return SpeechEngine(manager), ModelSpec("speech", "scripted", "hub", backend="faster-whisper")


@pytest.fixture
def tone_file(tmp_path) -> Path:
    """25 s of a loud tone: not silent, so the model is asked."""
    t = np.arange(25 * SAMPLE_RATE) / SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.tobytes())
    return path


def test_windows_progress_and_language(tone_file, tmp_path):
    model = WhisperModel()
    engine, spec = _engine(model, tmp_path)
    params = SpeechParams(vad_filter=False, window_s=10, initial_prompt="Names: Ada.")
    updates = list(engine.transcribe(spec, tone_file, params))
    transcript = updates[-1].transcript
    assert [round(c["seconds"]) for c in model.calls] == [10, 10, 5]  # a steady tone: cut at the window's end
    assert model.calls[0]["initial_prompt"] == "Names: Ada." and model.calls[0]["language"] is None
    assert model.calls[1]["language"] == "de"  # detected once, then kept
    assert "word" in (model.calls[1]["initial_prompt"] or "")  # conditioned on the previous window's text
    assert transcript.language == "de" and transcript.language_probability == 0.875
    assert not transcript.language_given and transcript.duration == pytest.approx(25, abs=0.01)
    starts = [s.start for s in transcript.segments]
    assert starts == sorted(starts) and [s.id for s in transcript.segments] == list(range(len(starts)))
    done = [u.done_s for u in updates]
    assert done == sorted(done) and updates[-2].fraction == pytest.approx(1.0)
    assert "German detected (88%)" in transcript.summary()


def test_out_of_memory_evicts_retries_then_gives_a_message(tone_file, tmp_path):
    model = WhisperModel(fail=(1,))
    engine, spec = _engine(model, tmp_path)
    transcript = engine.complete(spec, tone_file, SpeechParams(vad_filter=False))
    assert len(transcript.segments) == 25 and len(model.calls) == 2  # the window was done again, once
    assert [e.kind for e in engine.manager.events.last(50) if e.kind == "oom"] == ["oom"]

    model = WhisperModel(fail=(1, 2, 3))
    engine, spec = _engine(model, tmp_path)
    with pytest.raises(StudioOutOfMemory, match="even after unloading idle models and beam size 1"):
        engine.complete(spec, tone_file, SpeechParams(vad_filter=False))
    assert [c["beam_size"] for c in model.calls] == [5, 5, 1]
    assert not engine.lane.busy()  # the lane is free again for the next request


def test_stop_keeps_what_was_transcribed(tone_file, tmp_path):
    engine, spec = _engine(WhisperModel(), tmp_path)
    seen = []
    for update in engine.transcribe(
        spec, tone_file, SpeechParams(vad_filter=False), should_stop=lambda: len(seen) >= 3
    ):
        seen.append(update)
    transcript = seen[-1].transcript
    assert transcript.stopped and len(transcript.segments) == 3 and transcript.duration == pytest.approx(2.9)
    assert transcript.summary().startswith("Stopped: ")


def test_bad_input_fails_before_the_model_is_loaded(tmp_path):
    model = WhisperModel()
    engine, spec = _engine(model, tmp_path)
    notes = tmp_path / "notes.mp3"
    notes.write_text("not audio")
    with pytest.raises(InputError, match="notes.mp3 is not audio that ffmpeg can read"):
        engine.complete(spec, notes)
    assert engine.manager.records() == [] and model.calls == []


# ----- the Speech tab's helpers (no browser) ----------------------------------------------------------------


def test_tab_helpers(tmp_path):
    import gradio as gr

    from studio.ui import speech_tab

    params = speech_tab.params_from("de", "translate", "  Ada  ", 3, False, True, False)
    assert params == SpeechParams(
        language="de", task="translate", initial_prompt="Ada", beam_size=3, temperature_fallback=False,
        word_timestamps=True, vad_filter=False,
    )  # fmt: skip
    assert speech_tab.params_from("auto", "transcribe", "", 5, True, False, True).language == ""
    with pytest.raises(InputError, match="Beam size must be between 1 and 10"):
        speech_tab.params_from("auto", "transcribe", "", 11, True, False, True)
    with pytest.raises(gr.Error, match="Nothing to send yet"):
        speech_tab.send_to_chat("  ")
    text, tabs = speech_tab.send_to_chat(" Hello. ")
    assert text == "Hello." and tabs.selected == "chat"
    codes = [code for _, code in speech_tab.language_choices()]
    assert codes[0] == "auto" and "de" in codes and len(codes) == 101


def test_a_missing_ffmpeg_is_said_in_the_page_and_on_transcribe(tone_file, tmp_path):
    from studio.engines.audio import FfmpegMissing

    engine, spec = _engine(WhisperModel(), tmp_path)
    engine.ffmpeg = "ffmpeg-not-installed"
    assert engine.tools_missing().startswith("ffmpeg-not-installed not found, so audio cannot be decoded.")
    with pytest.raises(FfmpegMissing, match="is not installed, so audio cannot be decoded"):
        engine.complete(spec, tone_file)
    assert not engine.lane.busy()


def test_precision_choices_say_what_runs_and_the_cpu_refuses_fp16(tmp_path):
    from types import SimpleNamespace

    from studio.ui import speech_tab

    cpu, gpu = SimpleNamespace(device="cpu"), SimpleNamespace(device="cuda")
    assert [v for _, v in speech_tab.precision_choices(cpu)] == ["int8", "fp32"]
    assert [v for _, v in speech_tab.precision_choices(gpu)] == ["fp16", "int8", "fp32"]
    assert "int8_float16" in dict((v, label) for label, v in speech_tab.precision_choices(gpu))["int8"]
    assert speech_tab.default_precision(cpu) in [v for _, v in speech_tab.precision_choices(cpu)]
    assert speech_tab.default_precision(gpu) in [v for _, v in speech_tab.precision_choices(gpu)]
    with pytest.raises(InputError, match="Precision fp16 needs a GPU; on the CPU Whisper runs int8 or fp32"):
        speech_tab.resolve_spec(cpu, "tiny", "fp16")
