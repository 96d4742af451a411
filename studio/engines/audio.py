"""Audio for Whisper: checking a file, decoding it with ffmpeg into 16 kHz mono windows, and finding silence.

ffmpeg decodes into a pipe that is read one window at a time, so memory holds one window however long the
recording is; each window ends at the quietest 100 ms near its end, so no word is cut in two. PyAV (ffmpeg's
libraries) checks the container first, and a truncated WAV file is named as such. numpy and av are imported
inside the functions.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import InputError, StudioError

SAMPLE_RATE = 16_000  # Whisper's input rate; ffmpeg resamples everything to it
FRAME = SAMPLE_RATE // 10  # 100 ms: the unit of the silence and cut-point measurements
SILENCE_RMS = 10 ** (-60 / 20)  # a window whose loudest 100 ms stays under -60 dBFS holds no speech
CUT_LOOKBACK_S = 5.0  # a window ends at the quietest 100 ms of its last 5 s, so no word is cut in two
AUDIO_TIP = "Upload an audio file (wav, mp3, m4a, flac, ogg, webm) or a video with sound (mp4), or record one."
FFMPEG_TIP = "Install ffmpeg (`sudo apt-get install ffmpeg`, or run `bash scripts/setup.sh`), then try again."


class FfmpegMissing(StudioError):
    """ffmpeg is not installed, so no audio can be decoded."""


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about a file."""

    path: Path
    duration: float | None  # seconds; None when the container does not say (some live recordings)
    codec: str  # the audio stream's codec, e.g. "pcm_s16le", "opus"
    container: str  # e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"


def _tool_error(stderr: str, path: Path) -> str:
    """ffmpeg's most telling line (its last), without the file path it starts with."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = lines[-1] if lines else "no details"
    for prefix in (f"{path}: ", f"{path.name}: "):
        text = text.removeprefix(prefix)
    return text[:200]


def _check_wav(path: Path, name: str) -> None:
    """A WAV file whose data ends before its header says it should was cut off (an interrupted copy or upload)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return  # not RIFF/WAVE: ffmpeg decides
            size = path.stat().st_size
            rate = channels = bits = 0
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    raise InputError(f"{name} is a truncated WAV file: it ends inside its header.", AUDIO_TIP)
                kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
                if kind == b"fmt ":
                    fmt = f.read(min(length, 16))
                    channels = int.from_bytes(fmt[2:4], "little")
                    rate = int.from_bytes(fmt[4:8], "little")
                    bits = int.from_bytes(fmt[14:16], "little")
                    f.seek(length - len(fmt) + (length & 1), 1)
                elif kind == b"data":
                    have = size - f.tell()
                    streaming = length in (0, 0xFFFFFFFF)  # written by a recorder that never went back to fill it in
                    if not streaming and have < length:
                        per_s = rate * channels * max(bits // 8, 1)
                        if per_s:
                            raise InputError(
                                f"{name} is a truncated WAV file: its header promises {length / per_s:.1f} s of "
                                f"audio, but the file ends after {have / per_s:.1f} s.",
                                "The file was cut off while it was copied or uploaded; use the complete file.",
                            )
                        raise InputError(f"{name} is a truncated WAV file: it ends inside its audio data.", AUDIO_TIP)
                    return
                else:
                    f.seek(length + (length & 1), 1)
                    if f.tell() > size:
                        raise InputError(f"{name} is a truncated WAV file: it ends inside its header.", AUDIO_TIP)
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror or exc}).") from None


def probe_audio(path: str | Path, *, ffmpeg: str = "ffmpeg") -> AudioInfo:
    """Check that `path` holds audio ffmpeg can decode, and that ffmpeg is there; say precisely what is wrong.

    The container is opened with PyAV (ffmpeg's libraries, which faster-whisper brings): a millisecond in
    process instead of an ffprobe child process, which costs more than decoding a short clip.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise InputError(f"{name}: no such file.", AUDIO_TIP)
    if path.stat().st_size == 0:
        raise InputError(f"{name} is empty (0 bytes).", AUDIO_TIP)
    _check_wav(path, name)
    if shutil.which(ffmpeg) is None:
        raise FfmpegMissing(f"{ffmpeg} is not installed, so audio cannot be decoded.", FFMPEG_TIP)
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:  # read everything before it closes
            kinds = sorted({str(s.type) for s in container.streams})
            audio = [s.codec_context.name for s in container.streams if s.type == "audio"]
            duration = container.duration / 1_000_000 if container.duration else None
            fmt = str(container.format.name)
    except av.FFmpegError as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{name} is not audio that ffmpeg can read ({why}).", AUDIO_TIP) from None
    if not audio:
        raise InputError(f"{name} has no audio track (it has {', '.join(kinds) or 'no streams at all'}).", AUDIO_TIP)
    codec = str(audio[0])
    return AudioInfo(path, duration, codec, fmt)


def _frame_rms(audio):
    import numpy as np

    usable = len(audio) // FRAME * FRAME
    if not usable:
        return np.sqrt(np.mean(np.square(audio, dtype=np.float64))) if len(audio) else np.zeros(0)
    frames = audio[:usable].reshape(-1, FRAME)
    return np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))


def is_silent(audio) -> bool:
    """True when no 100 ms of `audio` is louder than -60 dBFS (digital silence, a muted microphone)."""
    import numpy as np

    rms = np.atleast_1d(_frame_rms(audio))
    return not len(audio) or float(rms.max()) < SILENCE_RMS


def quietest_cut(audio, lookback_s: float = CUT_LOOKBACK_S) -> int:
    """Index of the middle of the quietest 100 ms within the last `lookback_s` seconds of `audio`."""
    import numpy as np

    n = len(audio)
    start = max(0, n - int(lookback_s * SAMPLE_RATE))
    tail = audio[start : start + (n - start) // FRAME * FRAME]
    if len(tail) < FRAME:
        return n
    rms = _frame_rms(tail)[::-1]  # reversed: of equally quiet frames the latest wins, so windows stay long
    return start + (len(rms) - 1 - int(np.argmin(rms))) * FRAME + FRAME // 2


def decode_windows(
    path: str | Path, window_s: float, *, ffmpeg: str = "ffmpeg", lookback_s: float = CUT_LOOKBACK_S
) -> Iterator[tuple[float, Any]]:
    """Yield (offset in seconds, float32 mono 16 kHz samples) windows of about `window_s` seconds.

    ffmpeg decodes into a pipe that is read one window at a time, so memory holds one window (plus the short
    tail carried into the next), however long the recording is. Each window but the last ends at the quietest
    100 ms of its last `lookback_s` seconds, so a word is not cut between two windows.
    """
    import numpy as np

    path = Path(path)
    window = int(window_s * SAMPLE_RATE)
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1",
               "-ar", str(SAMPLE_RATE), "-f", "s16le", "-acodec", "pcm_s16le", "-"]  # fmt: skip
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise FfmpegMissing("ffmpeg is not installed, so audio cannot be decoded.", FFMPEG_TIP) from None
        try:
            carry = np.zeros(0, dtype=np.float32)
            offset = 0.0
            ended = False
            while not ended:
                want = max(0, window - len(carry)) * 2
                raw = proc.stdout.read(want) if want else b""
                ended = len(raw) < want
                raw = raw[: len(raw) // 2 * 2]
                block = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
                audio = np.concatenate([carry, block]) if len(carry) else block
                if ended:
                    if proc.wait() != 0:
                        errors.seek(0)
                        why = _tool_error(errors.read().decode("utf-8", "replace"), path)
                        raise InputError(f"{path.name}: ffmpeg could not decode it ({why}).", AUDIO_TIP)
                    if len(audio):
                        yield offset, audio
                    return
                cut = quietest_cut(audio, lookback_s)
                yield offset, audio[:cut]
                carry = audio[cut:].copy()
                offset += cut / SAMPLE_RATE
                del audio, block, raw
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


def decode_audio(path: str | Path, *, ffmpeg: str = "ffmpeg"):
    """The whole recording as one float32 array (short clips, tests)."""
    import numpy as np

    parts = [audio for _, audio in decode_windows(path, 3600, ffmpeg=ffmpeg)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
