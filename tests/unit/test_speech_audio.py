"""Speech without a model: decoding through ffmpeg, bad files, windows, subtitles and exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from studio.engines.audio import SAMPLE_RATE, FfmpegMissing, decode_audio, decode_windows, is_silent, probe_audio
from studio.engines.speech import SpeechParams, Transcript, check_speech_source, language_code
from studio.engines.subtitles import format_timestamp, save_transcript, to_srt, to_txt, to_vtt
from studio.engines.whisper_backends import Segment
from studio.errors import InputError, ModelLoadError
from studio.models.specs import ModelSpec

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tone(seconds: float, freq: float = 440.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """3 s of tone, 1 s of silence, 3 s of tone."""
    folder = tmp_path_factory.mktemp("audio")
    return write_wav(folder / "clip.wav", np.concatenate([tone(3), silence(1), tone(3, 660)]))


# ----- bad files ------------------------------------------------------------------------------------------


def test_an_empty_file_is_refused(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"^empty.wav is empty \(0 bytes\)\."):
        probe_audio(empty)


def test_a_text_file_renamed_wav_is_not_audio(tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are my meeting notes, not a recording\n")
    with pytest.raises(InputError, match=r"^notes.wav is not audio that ffmpeg can read \(Invalid data"):
        probe_audio(fake)


def test_a_truncated_wav_says_how_much_is_missing(clip, tmp_path):
    cut = tmp_path / "cut.wav"
    cut.write_bytes(clip.read_bytes()[: 44 + SAMPLE_RATE * 2])  # the header and 1 s of the 7 s
    with pytest.raises(InputError) as err:
        probe_audio(cut)
    assert err.value.message == (
        "cut.wav is a truncated WAV file: its header promises 7.0 s of audio, but the file ends after 1.0 s."
    )
    cut.write_bytes(clip.read_bytes()[:30])
    with pytest.raises(InputError, match="truncated WAV file: it ends inside its header"):
        probe_audio(cut)


def test_a_video_without_sound_has_no_audio_track(tmp_path):
    video = tmp_path / "silent-film.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1", str(video)], check=True)
    with pytest.raises(InputError, match=r"^silent-film.mp4 has no audio track \(it has video\)"):
        probe_audio(video)


def test_a_missing_ffmpeg_is_named(clip):
    with pytest.raises(FfmpegMissing, match="^ffmpeg-not-installed is not installed") as err:
        probe_audio(clip, ffmpeg="ffmpeg-not-installed")
    assert "apt-get install ffmpeg" in err.value.tip
    with pytest.raises(FfmpegMissing, match="^ffmpeg is not installed"):
        list(decode_windows(clip, 30, ffmpeg="ffmpeg-not-installed"))


def test_zero_length_audio_decodes_to_nothing(tmp_path):
    zero = write_wav(tmp_path / "zero.wav", silence(0))
    assert probe_audio(zero).duration in (None, 0.0)
    assert list(decode_windows(zero, 30)) == []


# ----- decoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["mp3", "m4a", "flac", "ogg", "webm", "mp4"])
def test_every_container_decodes_to_16khz_mono(clip, tmp_path, ext):
    out = tmp_path / f"clip.{ext}"
    extra = ["-f", "lavfi", "-i", "color=c=black:s=32x32:d=7", "-shortest"] if ext == "mp4" else []
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), *extra, str(out)], check=True)
    info = probe_audio(out)
    audio = decode_audio(out)
    assert abs(len(audio) / SAMPLE_RATE - 7.0) < 0.15 and abs(info.duration - 7.0) < 0.15
    assert audio.dtype == np.float32 and 0.2 < np.abs(audio).max() <= 1.0


def test_windows_end_in_silence_and_add_up_to_the_whole(tmp_path):
    # 10 x (2.5 s of tone + 0.5 s of silence) = 30 s; 8 s windows must each end inside a silent gap
    unit = np.concatenate([tone(2.5), silence(0.5)])
    path = write_wav(tmp_path / "pulses.wav", np.tile(unit, 10))
    windows = list(decode_windows(path, 8.0, lookback_s=3.0))
    whole = decode_audio(path)
    assert len(windows) >= 4
    assert np.array_equal(np.concatenate([a for _, a in windows]), whole)
    offsets = [o for o, _ in windows]
    for (offset, audio), next_offset in zip(windows, offsets[1:] + [None], strict=True):
        assert len(audio) <= 8.0 * SAMPLE_RATE
        if next_offset is not None:
            assert next_offset == pytest.approx(offset + len(audio) / SAMPLE_RATE)
            assert 2.5 <= next_offset % 3.0 <= 3.0  # the cut falls in a gap, not in a tone


def test_silence_is_recognised():
    assert is_silent(silence(2)) and is_silent(silence(0))
    assert is_silent(tone(1, level=0.0005))  # -66 dBFS: a muted microphone
    assert not is_silent(np.concatenate([silence(5), tone(0.2)]))


# ----- parameters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "summarise"}, "Task must be transcribe or translate, not 'summarise'."),
        ({"beam_size": 0}, "Beam size must be between 1 and 10, not 0."),
        ({"temperature": 1.5}, "Temperature must be between 0 and 1, not 1.5."),
        ({"language": "klingon"}, "Unknown language 'klingon'."),
        ({"window_s": 2}, "The window must be between 10 and 3600 s (or 0 for the default), not 2."),
    ],
)
def test_bad_params_say_what_is_wrong(fields, message):
    with pytest.raises(InputError) as err:
        SpeechParams(**fields).check_inputs()
    assert err.value.message == message


def test_languages_and_temperatures():
    assert language_code("German") == "de" and language_code("EN") == "en" and language_code("auto") == ""
    assert SpeechParams().temperatures == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert SpeechParams(temperature=0.5, temperature_fallback=False).temperatures == (0.5,)


def test_a_folder_that_is_not_a_whisper_model_is_refused(tmp_path):
    chat_model = tmp_path / "some-chat-model"
    chat_model.mkdir()
    (chat_model / "config.json").write_text('{"model_type": "llama"}')
    (chat_model / "model.safetensors").write_bytes(b"\0" * 16)
    spec = ModelSpec("speech", str(chat_model), "folder", backend="faster-whisper")
    with pytest.raises(ModelLoadError) as err:
        check_speech_source(spec)
    assert err.value.message == (
        "some-chat-model is not a Whisper model: a CTranslate2 Whisper folder holds model.bin and config.json "
        "(this one has config.json, model.safetensors)."
    )
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(ModelLoadError, match="weights.txt is not a Whisper checkpoint"):
        check_speech_source(ModelSpec("speech", str(text), "file"))


# ----- subtitles and exports ------------------------------------------------------------------------------

SEGMENTS = [
    Segment(0, 0.0, 2.5, "Hello there."),
    Segment(1, 2.4, 5.0, "Overlapping --> start,\nand a second line."),  # overlaps the first; has an arrow
    Segment(2, 5.0, 5.0, "Zero length."),
    Segment(3, 3725.5, 3727.25, "An hour later."),
    Segment(4, 3728.0, 3729.0, "   "),  # nothing to show: skipped
]


def test_timestamps():
    assert format_timestamp(3725.5) == "01:02:05,500" and format_timestamp(0.0004, ".") == "00:00:00.000"
    assert format_timestamp(59.9996) == "00:01:00,000"


def test_srt_and_vtt_parse_with_third_party_parsers(tmp_path):
    import pysrt
    import webvtt

    srt_path, vtt_path = tmp_path / "a.srt", tmp_path / "a.vtt"
    srt_path.write_text(to_srt(SEGMENTS), encoding="utf-8")
    vtt_path.write_text(to_vtt(SEGMENTS), encoding="utf-8")
    subs = pysrt.open(str(srt_path), encoding="utf-8", error_handling=pysrt.ERROR_RAISE)
    cues = webvtt.read(str(vtt_path))
    texts = ["Hello there.", "Overlapping -> start, and a second line.", "Zero length.", "An hour later."]
    assert [s.text for s in subs] == texts and [c.text for c in cues] == texts
    assert [s.index for s in subs] == [1, 2, 3, 4]
    starts = [s.start.ordinal for s in subs]
    ends = [s.end.ordinal for s in subs]
    assert all(a < b for a, b in zip(starts, ends, strict=True))  # every cue lasts
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # and never goes back in time
    assert cues[3].start == "01:02:05.500" and subs[3].end.ordinal == 3727250
    assert to_txt(SEGMENTS).splitlines() == texts


def test_exports_are_written_before_they_are_shown_and_never_overwrite(tmp_path):
    transcript = Transcript("my talk (final).mp3", "tiny", "faster-whisper", "transcribe", "en", 0.98, False, 6.0)
    transcript.segments = SEGMENTS[:2]
    first = save_transcript(transcript, tmp_path)
    second = save_transcript(transcript, tmp_path)
    assert sorted(first) == ["json", "srt", "txt", "vtt"]
    assert first["srt"].parent.parent == tmp_path / "transcripts" and first["srt"].name == "my_talk_final.srt"
    assert second["srt"].name == "my_talk_final-2.srt"
    data = json.loads(first["json"].read_text())
    assert data["text"] == "Hello there. Overlapping --> start,\nand a second line." and data["language"] == "en"
    assert data["segments"][1]["start"] == 2.4
    assert not list(first["srt"].parent.glob(".*"))  # no temporary files left behind
