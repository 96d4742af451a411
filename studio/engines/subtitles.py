"""Transcript writers: TXT, SRT, VTT and JSON, and saving all four beside each other in outputs/transcripts/.

Plain functions of a transcript's segments (as whisper's writers are), shared by the Speech tab and
/v1/audio/transcriptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import DiskFullError, InputError, StudioError, is_disk_full

if TYPE_CHECKING:
    from studio.engines.speech import Transcript
    from studio.engines.whisper_backends import Segment

EXPORT_FORMATS = ("txt", "srt", "vtt", "json")


def format_clock(seconds: float) -> str:
    """1:02:03 / 4:05 for the page."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_timestamp(seconds: float, separator: str = ",") -> str:
    """00:01:02,345 (SRT) or 00:01:02.345 (VTT, separator '.')."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _cues(segments: list[Segment]) -> list[tuple[float, float, str]]:
    """Segments as subtitle cues: one line of text each, times that never go backwards, every cue > 0 s long."""
    cues, last_end = [], 0.0
    for seg in segments:
        text = " ".join(seg.text.split()).replace("-->", "->")
        if not text:
            continue
        start = max(seg.start, last_end)
        end = max(seg.end, start + 0.001)
        cues.append((start, end, text))
        last_end = end
    return cues


def to_srt(segments: list[Segment]) -> str:
    blocks = [
        f"{i}\n{format_timestamp(a)} --> {format_timestamp(b)}\n{text}\n"
        for i, (a, b, text) in enumerate(_cues(segments), 1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[Segment]) -> str:
    blocks = [f"{format_timestamp(a, '.')} --> {format_timestamp(b, '.')}\n{text}\n" for a, b, text in _cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(segments: list[Segment]) -> str:
    return "".join(f"{line}\n" for _, _, line in _cues(segments))


def to_json(transcript: Transcript) -> str:
    return json.dumps(transcript.to_dict(), indent=2, ensure_ascii=False) + "\n"


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript in one of EXPORT_FORMATS."""
    if fmt == "txt":
        return to_txt(transcript.segments)
    if fmt == "srt":
        return to_srt(transcript.segments)
    if fmt == "vtt":
        return to_vtt(transcript.segments)
    if fmt == "json":
        return to_json(transcript)
    raise InputError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")


def safe_stem(name: str) -> str:
    """A file-name stem from an uploaded file's name: letters, digits, dot, dash, underscore."""
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem, flags=re.UNICODE).strip("._") or "audio"
    return stem[:80]


def save_transcript(transcript: Transcript, outputs: Path, *, when: float | None = None) -> dict[str, Path]:
    """Write TXT, SRT, VTT and JSON to outputs/transcripts/<date>/<name>.<ext>; returns {format: path}.

    Each file is written under a temporary name and renamed, so a file that exists is complete; a name already
    taken gets -2, -3, ... so earlier transcripts are kept. If one cannot be written, none of the four is left
    (nor a temporary file); a full disk is a DiskFullError.
    """
    stamp = time.localtime(when or time.time())
    folder = Path(outputs) / "transcripts" / time.strftime("%Y-%m-%d", stamp)
    stem = safe_stem(transcript.source)
    written: dict[str, Path] = {}
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while any((folder / f"{stem}{'' if n == 1 else f'-{n}'}.{ext}").exists() for ext in EXPORT_FORMATS):
            n += 1
        base = stem if n == 1 else f"{stem}-{n}"
        for ext in EXPORT_FORMATS:
            target = folder / f"{base}.{ext}"
            tmp = folder / f".{base}.{ext}.tmp"
            tmp.write_text(render(transcript, ext), encoding="utf-8")
            os.replace(tmp, target)
            written[ext] = target
    except OSError as exc:
        for path in (tmp, *written.values()):  # half a transcript is not kept: these four files are one result
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(
                f"The disk is full: the transcript could not be saved in {folder}.",
                "Free some space on that disk (or start the studio with --data-dir on another one), then "
                "transcribe again; the transcripts saved before are kept.",
            ) from None
        raise StudioError(
            f"Could not write the transcript to {folder} ({exc.strerror or exc}).", "Check free disk space."
        ) from None
    return written
