"""/v1/audio/transcriptions on a real `python launch.py`, through the official `openai` client; and the Speech
tab's Gradio endpoint through gradio_client."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.ui.conftest import openai_client, start_studio, stop_studio

pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

SPOKEN = ("Thank you very much for your help with the project.", "Please turn off the lights when you leave the room.")


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """Two sentences by espeak-ng with a second of silence between them, as an mp3."""
    folder = tmp_path_factory.mktemp("api-audio")
    parts = []
    for i, text in enumerate(SPOKEN):
        part = folder / f"part{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(part), text], check=True)
        parts.append(part)
    out = folder / "two sentences.mp3"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(parts[0]), "-i", str(parts[1]), "-filter_complex",
         "[0]apad=pad_dur=1[a];[a][1]concat=n=2:v=0:a=1", str(out)],
        check=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("speech-api-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


@pytest.fixture(scope="module")
def client(studio) -> OpenAI:
    return openai_client(studio)


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalpha() or c == " ").split())


def test_json_and_text(client, recording, studio):
    with open(recording, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert "thank you very much" in _words(result.text) and "turn off the lights" in _words(result.text)
    with open(recording, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-tiny.en", file=f, response_format="text")
    assert isinstance(text, str) and _words(text) == _words(result.text)
    saved = list((studio.data_dir / "outputs" / "transcripts").rglob("two_sentences*.srt"))
    assert saved, "the API writes its transcripts to the outputs folder too"


def test_srt_and_vtt_are_valid_subtitles(client, recording, tmp_path):
    import pysrt
    import webvtt

    with open(recording, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    with open(recording, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    subs = pysrt.from_string(srt, error_handling=pysrt.ERROR_RAISE)
    (tmp_path / "a.vtt").write_text(vtt, encoding="utf-8")
    cues = webvtt.read(str(tmp_path / "a.vtt"))
    assert len(subs) >= 2 and [s.text for s in subs] == [c.text for c in cues]
    assert "thank you very much" in _words(subs[0].text) and "turn off the lights" in _words(subs[-1].text)
    starts = [s.start.ordinal for s in subs]
    assert starts == sorted(starts) and all(s.end.ordinal > s.start.ordinal for s in subs)
    assert subs[-1].start.ordinal >= 3000  # the second sentence starts after the first and the pause


def test_verbose_json_has_segments_words_and_the_language(client, recording):
    with open(recording, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert verbose.language == "english" and verbose.duration == pytest.approx(7.5, abs=1.5)
    assert len(verbose.segments) >= 2 and verbose.segments[0].start < verbose.segments[-1].start
    assert "thank" in verbose.words[0].word.lower() and len(verbose.words) >= 15
    assert all(w.end >= w.start for w in verbose.words)


def test_bad_requests_say_what_is_wrong(client, studio, tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_text("meeting notes, not a recording")
    with open(notes, "rb") as f, pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert err.value.body["message"].startswith("notes.wav is not audio that ffmpeg can read")
    with open(notes, "rb") as f, pytest.raises(openai.NotFoundError) as err:
        client.audio.transcriptions.create(model="large-v9", file=f)
    assert err.value.body["code"] == "model_not_found" and "whisper-1" in err.value.body["message"]
    with open(notes, "rb") as f, pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=f, response_format="docx")  # type: ignore[arg-type]
    assert err.value.body["param"] == "response_format"
    empty = httpx.post(
        studio.url + "v1/audio/transcriptions", files={"file": ("e.wav", b"")}, data={"model": "whisper-1"}
    )
    assert empty.status_code == 400 and empty.json()["error"]["message"].startswith("e.wav is empty (0 bytes).")
    none = httpx.post(studio.url + "v1/audio/transcriptions", data={"model": "whisper-1"})
    assert none.status_code == 400 and none.json()["error"]["param"] == "file"
    assert httpx.get(studio.url).status_code == 200  # still serving


def test_the_gradio_endpoint_transcribes_too(studio, recording):
    from gradio_client import Client, handle_file

    ui = Client(studio.url, verbose=False)
    status, text, table, files = ui.predict(
        handle_file(str(recording)),
        None,  # no video
        "starter:whisper-tiny.en",
        "int8",
        "auto",
        "transcribe",
        "",
        5,
        True,
        False,
        True,
        api_name="/speech_transcribe",
    )
    assert "thank you very much" in _words(text) and "English" in status and "Saved to" in status
    assert len(table["data"]) >= 2 and sorted(Path(f).suffix for f in files) == [".json", ".srt", ".txt", ".vtt"]


def test_a_client_that_leaves_a_long_transcription_frees_the_gpu_for_the_next_request(client, recording, studio):
    """A hostile transcription (the recording 300 times over, about 35 minutes, abandoned after 3 s) must not hold the
    GPU lane: the next short transcription finishes within a fixed bound, and the long one stopped early."""
    import time

    long = recording.parent / "three hundred times.mp3"
    if not long.exists():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-stream_loop", "299", "-i", str(recording), "-c", "copy", str(long)],
            check=True,
        )
    with pytest.raises(httpx.TimeoutException):
        with open(long, "rb") as f:
            httpx.post(
                studio.url + "v1/audio/transcriptions",
                files={"file": (long.name, f, "audio/mpeg")},
                data={"model": "whisper-1"},
                timeout=httpx.Timeout(60, read=3),
            )
    t0 = time.monotonic()
    with open(recording, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    waited = time.monotonic() - t0
    assert "thank you very much" in _words(result.text)
    assert waited < 45, f"the next transcription waited {waited:.0f} s behind the abandoned one"
    for srt in (studio.data_dir / "outputs" / "transcripts").rglob("three_hundred_times*.srt"):
        assert srt.stat().st_size < 20_000  # what it heard before it stopped is kept; not the whole 35 minutes
