"""In Chromium: upload a recording, see the transcript and its segments, download the SRT, send it to Chat; a file
that is not audio gets a message and the page keeps working."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from playwright.sync_api import expect

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

SPOKEN = (  # SSML: a pause of 1.5 s between the sentences, so they are two segments
    "<speak>Thank you very much for your help with the project. <break time='1500ms'/> "
    "Please turn off the lights when you leave the room.</speak>"
)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui-audio") / "thanks.wav"
    subprocess.run(["espeak-ng", "-m", "-v", "en-us", "-s", "140", "-w", str(path), SPOKEN], check=True)
    return path


def _upload(page, path) -> None:
    page.locator("#speech-audio input[type=file]").set_input_files(str(path))


def test_upload_transcribe_download_and_send_to_chat(page, studio, recording, tmp_path):
    import pysrt

    page.goto(studio.url)
    page.get_by_role("tab", name="Speech").click()
    expect(page.locator("#speech-model input")).to_have_value("Whisper tiny.en (starter) — offline, faster-whisper")

    # a text file renamed .wav: a message that says what is wrong; the page keeps working
    notes = tmp_path / "notes.wav"
    notes.write_text("meeting notes, not a recording\n")
    _upload(page, notes)
    page.locator("#speech-run").click()
    expect(page.get_by_text("notes.wav is not audio that ffmpeg can read").first).to_be_visible()

    page.locator("#speech-audio button[aria-label='Clear']").first.click()
    _upload(page, recording)
    page.locator("#speech-run").click()
    expect(page.locator("#speech-status")).to_contain_text("Saved to", timeout=60_000)
    expect(page.locator("#speech-status")).to_contain_text("English")
    transcript = page.locator("#speech-text textarea").input_value()
    assert "thank you very much" in transcript.lower() and "lights" in transcript.lower()
    rows = page.locator("#speech-segments [role=row][data-index]")  # the table is virtual: rows are divs
    expect(rows.first).to_contain_text("00:00:00.000")
    assert rows.count() >= 2
    expect(page.locator("#speech-segments")).to_contain_text("Please turn off the lights")

    with page.expect_download() as download:
        page.locator("#speech-files a[download='thanks.srt']").click()
    srt = tmp_path / "downloaded.srt"
    download.value.save_as(srt)
    subs = pysrt.open(str(srt), encoding="utf-8", error_handling=pysrt.ERROR_RAISE)
    assert len(subs) == rows.count() and "Thank you very much" in subs[0].text
    assert (studio.data_dir / "outputs" / "transcripts").is_dir()

    # a video: its sound track is transcribed (the audio widget takes audio files only)
    video = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(recording), "-f", "lavfi", "-i", "color=c=black:s=64x64:d=9",
         "-shortest", str(video)],
        check=True,
    )  # fmt: skip
    page.locator("#speech-video input[type=file]").set_input_files(str(video))
    page.locator("#speech-run").click()
    expect(page.locator("#speech-status")).to_contain_text("as clip.txt", timeout=60_000)
    transcript = page.locator("#speech-text textarea").input_value()
    assert "thank you very much" in transcript.lower()

    page.locator("#speech-send-to-chat").click()
    expect(page.locator("#chat-input textarea")).to_have_value(transcript)
    expect(page.locator("#tab-chat")).to_be_visible()
    page.screenshot(path=str(studio.data_dir.parent / "speech-tab.png"), full_page=True)
