"""Speech: Whisper speech-to-text on the shared model manager, from anything ffmpeg can decode.

Two backends behind one engine: faster-whisper (CTranslate2 folders, among them the offline starter) and
openai-whisper (names tiny ... turbo and local .pt checkpoints). Audio is decoded by an ffmpeg child process and
read in windows (5 minutes for faster-whisper, 30 s for openai-whisper), each cut at the quietest moment near its
end, so memory does not grow with the length of the recording. A transcription is a generator: progress in
seconds of audio, and a cooperative stop checked after every segment (faster-whisper) or window (openai-whisper).

No gradio here. The Speech tab and /v1/audio/transcriptions both call `SpeechEngine.transcribe()`; the subtitle
writers (TXT, SRT, VTT, JSON) are plain functions.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.engines.lane import GpuLane
from studio.errors import InputError, ModelLoadError, StudioError
from studio.memory.reclaim import trim_host_heap
from studio.models.estimate import Workload
from studio.models.manager import ModelManager
from studio.models.records import ModelRecord
from studio.models.specs import ModelSpec
from studio.text import invalid_text

SAMPLE_RATE = 16_000  # Whisper's input rate; ffmpeg resamples everything to it
FRAME = SAMPLE_RATE // 10  # 100 ms: the unit of the silence and cut-point measurements
SILENCE_RMS = 10 ** (-60 / 20)  # a window whose loudest 100 ms stays under -60 dBFS holds no speech
CUT_LOOKBACK_S = 5.0  # a window ends at the quietest 100 ms of its last 5 s, so no word is cut in two
WINDOW_S = {"faster-whisper": 300.0, "openai-whisper": 30.0}  # seconds of audio decoded and held at once
PROMPT_WORDS = 40  # words of the previous window passed as the next window's prompt (Whisper's own conditioning)
MAX_PROMPT_CHARS = 1000
AUDIO_TIP = "Upload an audio file (wav, mp3, m4a, flac, ogg, webm) or a video with sound (mp4), or record one."
FFMPEG_TIP = "Install ffmpeg (`sudo apt-get install ffmpeg`, or run `bash scripts/setup.sh`), then try again."
EXPORT_FORMATS = ("txt", "srt", "vtt", "json")

# Whisper's languages: ISO code -> English name (openai-whisper's whisper/tokenizer.py, in its order).
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}  # fmt: skip


class FfmpegMissing(StudioError):
    """ffmpeg is not installed, so no audio can be decoded."""


def language_code(value: str | None) -> str:
    """A language code from a code or an English name ("en", "English"); "" (or "auto") means detect it."""
    text = (value or "").strip().lower()
    if text in ("", "auto", "auto-detect", "detect"):
        return ""
    if text in LANGUAGES:
        return text
    for code, name in LANGUAGES.items():
        if name == text:
            return code
    raise InputError(
        f"Unknown language {value!r}.", "Use a code such as en, de or fr, a name such as German, or auto-detect."
    )


def language_name(code: str) -> str:
    """'en' -> 'English' (unknown codes are returned as they are)."""
    return LANGUAGES.get(code, code).title() if code else ""


# ----- parameters and results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechParams:
    """How to transcribe one recording (the knobs of whisper's `transcribe` that users reach for)."""

    language: str = ""  # ISO code ("en") or English name; "" = detect it from the first 30 s with speech
    task: str = "transcribe"  # "transcribe" (in the spoken language) or "translate" (into English)
    initial_prompt: str = ""  # text that precedes the audio: names, spellings, a style to follow
    beam_size: int = 5  # beams searched at temperature 0 (1 = greedy, faster)
    temperature: float = 0.0  # sampling temperature of the first attempt
    temperature_fallback: bool = True  # retry at higher temperatures (+0.2 up to 1.0) when a window fails the checks
    word_timestamps: bool = False  # start/end time of every word (slower)
    vad_filter: bool = True  # faster-whisper: skip silence with the Silero voice-activity detector first
    window_s: float = 0.0  # seconds of audio held at once (0 = the backend's default: 300 s / 30 s)

    def check_inputs(self) -> None:
        """Raise InputError naming the first setting that cannot work."""
        language_code(self.language)
        if self.task not in ("transcribe", "translate"):
            raise InputError(f"Task must be transcribe or translate, not {self.task!r}.")
        if not 1 <= self.beam_size <= 10:
            raise InputError(f"Beam size must be between 1 and 10, not {self.beam_size}.")
        if not 0 <= self.temperature <= 1:
            raise InputError(f"Temperature must be between 0 and 1, not {self.temperature:g}.")
        if len(self.initial_prompt) > MAX_PROMPT_CHARS:
            raise InputError(
                f"The initial prompt is {len(self.initial_prompt)} characters; Whisper reads at most about "
                f"{MAX_PROMPT_CHARS}.",
                "Keep it to names, spellings and a sentence of style.",
            )
        reason = invalid_text(self.initial_prompt, "The initial prompt")
        if reason:
            raise InputError(reason)
        if self.window_s and not 10 <= self.window_s <= 3600:
            raise InputError(
                f"The window must be between 10 and 3600 s (or 0 for the default), not {self.window_s:g}."
            )

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The temperatures tried in turn."""
        if not self.temperature_fallback:
            return (self.temperature,)
        temps, t = [], self.temperature
        while t <= 1.0 + 1e-9:
            temps.append(round(t, 2))
            t += 0.2
        return tuple(temps)


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the start of the recording
    end: float
    word: str  # with its leading space, as Whisper writes it
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds from the start of the recording
    end: float
    text: str  # stripped
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass
class Transcript:
    """A finished (or stopped) transcription."""

    source: str  # the audio file's name
    model: str  # the model's display name
    backend: str  # "faster-whisper" or "openai-whisper"
    task: str
    language: str  # ISO code; "" when nothing was heard
    language_probability: float  # 1.0 when the language was given or the model is English-only
    language_given: bool  # chosen by the user (or fixed by an English-only model), not detected
    duration: float  # seconds of audio decoded
    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0  # processing time, seconds
    stopped: bool = False  # the user stopped it; the segments so far are kept
    notice: str = ""

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    @property
    def no_speech(self) -> bool:
        return not self.text

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio per second of processing."""
        return self.duration / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the page: language, length, speed."""
        if self.no_speech:
            if self.stopped:
                return f"Stopped at {format_clock(self.duration)} of {self.source}, before any speech was transcribed."
            return no_speech_message(self.source, self.duration)
        lang = language_name(self.language)
        how = lang if self.language_given else f"{lang} detected ({self.language_probability:.0%})"
        parts = [
            how,
            f"{format_clock(self.duration)} of audio",
            f"{len(self.segments)} segments",
            f"{self.seconds:.1f} s ({self.realtime_factor:.1f}x real time)",
            self.model,
        ]
        if self.task == "translate":
            parts.insert(1, "translated to English")
        head = "Stopped: " if self.stopped else ""
        return head + " · ".join(parts) + (f". {self.notice}" if self.notice else "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["text"] = self.text
        return data


@dataclass
class SpeechUpdate:
    """One step of a transcription: progress, the segments so far, and on the last step the transcript."""

    done_s: float  # seconds of audio processed
    total_s: float | None  # length of the recording (None when the file does not say)
    segments: list[Segment]  # every segment so far
    language: str = ""
    language_probability: float = 0.0
    transcript: Transcript | None = None  # set on the last update only

    @property
    def fraction(self) -> float | None:
        if not self.total_s:
            return None
        return min(1.0, self.done_s / self.total_s)


def no_speech_message(source: str, duration: float) -> str:
    if duration <= 0:
        return f"No speech found: {source} holds no audio (0 s)."
    return f"No speech found in {source} ({format_clock(duration)} of audio): nothing was transcribed."


# ----- decoding audio with ffmpeg -----------------------------------------------------------------------------


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


# ----- subtitles and exports ----------------------------------------------------------------------------------


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
    taken gets -2, -3, ... so earlier transcripts are kept.
    """
    stamp = time.localtime(when or time.time())
    folder = Path(outputs) / "transcripts" / time.strftime("%Y-%m-%d", stamp)
    stem = safe_stem(transcript.source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        n = 1
        while any((folder / f"{stem}{'' if n == 1 else f'-{n}'}.{ext}").exists() for ext in EXPORT_FORMATS):
            n += 1
        base = stem if n == 1 else f"{stem}-{n}"
        written: dict[str, Path] = {}
        for ext in EXPORT_FORMATS:
            target = folder / f"{base}.{ext}"
            tmp = folder / f".{base}.{ext}.tmp"
            tmp.write_text(render(transcript, ext), encoding="utf-8")
            os.replace(tmp, target)
            written[ext] = target
    except OSError as exc:
        raise StudioError(
            f"Could not write the transcript to {folder} ({exc.strerror or exc}).", "Check free disk space."
        ) from None
    return written


# ----- the backends -------------------------------------------------------------------------------------------


def backend_of(model: Any) -> str:
    """Which library a loaded model belongs to."""
    return "faster-whisper" if type(model).__name__ == "WhisperModel" else "openai-whisper"


def is_multilingual(model: Any) -> bool:
    if backend_of(model) == "faster-whisper":
        return bool(model.model.is_multilingual)
    return bool(model.is_multilingual)


def check_speech_source(spec: ModelSpec) -> None:
    """Refuse, before any load, a local path that cannot be a Whisper model."""
    if spec.kind != "speech":
        raise ModelLoadError(f"{spec.name} is a {spec.kind} model, not a speech model.")
    path = spec.path
    if path is None or not path.exists():
        return  # names are checked by the loader; a missing path gets the loader's message
    tip = "Pick a faster-whisper (CTranslate2) folder, an openai-whisper .pt file, or a name (tiny ... turbo)."
    if path.is_dir():
        if not (path / "model.bin").is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
            raise ModelLoadError(
                f"{path.name} is not a Whisper model: a CTranslate2 Whisper folder holds model.bin and config.json "
                f"(this one has {found}).",
                tip,
            )
    elif path.suffix.lower() not in (".pt", ".pth"):
        raise ModelLoadError(f"{path.name} is not a Whisper checkpoint (an openai-whisper .pt file).", tip)


def speech_spans(audio) -> list[tuple[int, int]]:
    """(start, end) sample ranges where the Silero voice-activity detector hears a voice (gaps under 2 s bridged).

    Each span is decoded on its own. faster-whisper's own `vad_filter` glues the spans together and decodes the
    glued audio, so one segment can straddle minutes of silence and its timestamps then span the gap.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return [(span["start"], span["end"]) for span in get_speech_timestamps(audio, VadOptions())]


class _Window:
    """Runs one window of audio through a loaded model; yields Segments with times in the window."""

    def __init__(self, model: Any, params: SpeechParams, language: str, prompt: str) -> None:
        self.model = model
        self.params = params
        self.language = language  # "" = detect
        self.prompt = prompt
        self.detected: tuple[str, float] | None = None  # (language, probability) once known

    def run(self, audio) -> Iterator[Segment]:
        if backend_of(self.model) == "faster-whisper":
            return self._faster(audio)
        return iter(self._openai(audio))

    def _faster(self, audio) -> Iterator[Segment]:
        spans = speech_spans(audio) if self.params.vad_filter else [(0, len(audio))]
        for start, end in spans:  # none when the detector heard no voice: nothing to transcribe, nothing invented
            offset = start / SAMPLE_RATE
            text = []
            for seg in self._faster_clip(audio[start:end]):
                text.append(seg.text)
                yield _shift(seg, offset, seg.id, (end) / SAMPLE_RATE)
            if text:  # the next span is conditioned on this one, as Whisper does between its 30 s windows
                self.prompt = " ".join(" ".join(text).split()[-PROMPT_WORDS:])

    def _faster_clip(self, audio) -> Iterator[Segment]:
        p = self.params
        segments, info = self.model.transcribe(
            audio,
            language=self.language or None,
            task=p.task,
            beam_size=p.beam_size,
            best_of=p.beam_size,
            temperature=list(p.temperatures),
            initial_prompt=self.prompt or None,
            word_timestamps=p.word_timestamps,
            vad_filter=False,
            condition_on_previous_text=True,
        )
        if self.detected is None:
            self.detected = (info.language, float(info.language_probability))
            self.language = self.language or info.language  # the rest of the recording keeps this language
        for s in segments:
            words = tuple(Word(w.start, w.end, w.word, float(w.probability)) for w in (s.words or ()))
            yield Segment(
                id=s.id,
                start=s.start,
                end=s.end,
                text=s.text.strip(),
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                compression_ratio=float(s.compression_ratio),
                temperature=float(s.temperature or 0.0),
                words=words,
            )

    def _openai(self, audio) -> list[Segment]:
        import torch
        import whisper

        p = self.params
        language = self.language
        if not language:
            if not self.model.is_multilingual:
                language, prob = "en", 1.0
            else:
                mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), self.model.dims.n_mels)
                mel = mel.to(self.model.device, dtype=next(self.model.parameters()).dtype)
                with torch.inference_mode():
                    _, probs = self.model.detect_language(mel)
                finite = {code: float(p) for code, p in probs.items() if math.isfinite(p)}
                language = max(finite, key=finite.get) if finite else "en"
                prob = finite.get(language, 0.0)
            self.detected = (language, prob)
        else:
            self.detected = (language, 1.0)
        fp16 = next(self.model.parameters()).dtype == torch.float16
        result = whisper.transcribe(
            self.model,
            audio,
            verbose=None,
            temperature=p.temperatures,
            initial_prompt=self.prompt or None,
            word_timestamps=p.word_timestamps,
            condition_on_previous_text=True,
            fp16=fp16,
            language=language,
            task=p.task,
            beam_size=p.beam_size,
            best_of=p.beam_size,
        )
        out = []
        for s in result["segments"]:
            words = tuple(
                Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"]))
                for w in s.get("words") or ()
            )
            out.append(
                Segment(
                    id=int(s["id"]),
                    start=float(s["start"]),
                    end=float(s["end"]),
                    text=s["text"].strip(),
                    avg_logprob=float(s["avg_logprob"]),
                    no_speech_prob=float(s["no_speech_prob"]),
                    compression_ratio=float(s["compression_ratio"]),
                    temperature=float(s["temperature"]),
                    words=words,
                )
            )
        return out


def _shift(seg: Segment, offset: float, index: int, limit: float) -> Segment:
    """A window's segment in recording time, clipped to the window (whisper may overshoot the padded end)."""
    start = min(offset + seg.start, limit)
    end = min(max(offset + seg.end, start), limit)
    words = tuple(replace(w, start=min(offset + w.start, limit), end=min(offset + w.end, limit)) for w in seg.words)
    return replace(seg, id=index, start=round(start, 3), end=round(end, 3), words=words)


# ----- the engine ---------------------------------------------------------------------------------------------


@dataclass
class SpeechEngine:
    """Transcribes recordings with models leased from the manager, one recording at a time."""

    manager: ModelManager
    ffmpeg: str = "ffmpeg"
    lane: GpuLane = field(default_factory=GpuLane, repr=False)  # shared with the other engines in a studio

    def tools_missing(self) -> str:
        """A message when ffmpeg is not installed, else "" (the page shows it at once)."""
        if shutil.which(self.ffmpeg) is None:
            return f"{self.ffmpeg} not found, so audio cannot be decoded. {FFMPEG_TIP}"
        return ""

    def load(self, spec: ModelSpec, workload: Workload | None = None) -> ModelRecord:
        """Load the model and leave it loaded; its record afterwards."""
        check_speech_source(spec)
        return self.manager.load(spec, workload)

    def is_loaded(self, spec: ModelSpec) -> bool:
        return self.manager.is_loaded(spec.key)

    def transcribe(
        self,
        spec: ModelSpec,
        path: str | Path,
        params: SpeechParams | None = None,
        *,
        source_name: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[SpeechUpdate]:
        """Transcribe the recording at `path`. Yields progress; the last update carries the Transcript.

        Bad input raises InputError (before any model is loaded); a file with nothing audible ends with a
        transcript without segments (`no_speech`), never with invented text.
        """
        params = params or SpeechParams()
        params.check_inputs()
        check_speech_source(spec)
        info = probe_audio(path, ffmpeg=self.ffmpeg)
        name = source_name or Path(path).name
        t0 = time.perf_counter()
        if not self.lane.wait(should_stop):
            yield self._final(spec, name, params, info.duration or 0.0, [], ("", 0.0, False), t0, True, "")
            return
        try:
            yield from self._transcribe_locked(spec, info, name, params, should_stop, t0)
        finally:
            self.lane.release()

    def complete(self, spec: ModelSpec, path: str | Path, params: SpeechParams | None = None, **kwargs) -> Transcript:
        """The whole transcript at once (API, benchmarks, tests)."""
        transcript = None
        for update in self.transcribe(spec, path, params, **kwargs):
            transcript = update.transcript or transcript
        assert transcript is not None
        return transcript

    def _transcribe_locked(
        self,
        spec: ModelSpec,
        info: AudioInfo,
        name: str,
        params: SpeechParams,
        should_stop: Callable[[], bool],
        t0: float,
    ) -> Iterator[SpeechUpdate]:
        with self.manager.acquire(spec, Workload(batch=params.beam_size)) as lease:
            model = lease.model
            t0 = time.perf_counter()  # processing time, without waiting for the lane or loading the model
            backend = backend_of(model)
            language = language_code(params.language)
            if not is_multilingual(model):
                if language not in ("", "en"):
                    raise InputError(
                        f"{spec.name} understands English only, not {language_name(language)}.",
                        "Pick a multilingual model (a name without .en), or set the language to English.",
                    )
                if params.task == "translate":
                    raise InputError(
                        f"{spec.name} understands English only, so it cannot translate.",
                        "Pick a multilingual model (tiny, base, small, medium, large-v3) to translate into English.",
                    )
                language = "en"
            given = bool(language)
            if backend != "faster-whisper" and params.vad_filter:
                params = replace(params, vad_filter=False)  # openai-whisper has no VAD; silent windows are skipped
            window_s = params.window_s or WINDOW_S[backend]
            segments: list[Segment] = []
            detected: tuple[str, float] = (language, 1.0) if given else ("", 0.0)
            total = info.duration
            done = 0.0
            stopped = False
            prompt = params.initial_prompt
            with self.manager.track_peak(spec, Workload(batch=params.beam_size)):
                for offset, audio in decode_windows(info.path, window_s, ffmpeg=self.ffmpeg):
                    end = offset + len(audio) / SAMPLE_RATE
                    if should_stop():
                        stopped = True
                        break
                    if not is_silent(audio):
                        window = _Window(model, params, detected[0], prompt)
                        new, stopped = yield from self._run_window(
                            spec, window, audio, offset, end, segments, total, detected, should_stop
                        )
                        if window.detected and not detected[0]:
                            detected = window.detected
                        segments += new
                        if new:
                            prompt = " ".join(" ".join(s.text for s in segments[-20:]).split()[-PROMPT_WORDS:])
                        if stopped:
                            done = max(done, new[-1].end if new else offset)
                            break
                    done = end
                    yield SpeechUpdate(done, total, list(segments), *detected)
                    del audio
                    trim_host_heap()  # hand the window's buffers back to the OS, so RSS follows what is live
            duration = done if stopped else max(done, 0.0)
            if not stopped:
                total = duration
            notice = f"Stopped at {format_clock(done)} of {format_clock(info.duration or done)}." if stopped else ""
            lang = detected if segments else ("", 0.0)
            yield self._final(spec, name, params, duration, segments, (*lang, given), t0, stopped, notice, backend)

    def _run_window(
        self,
        spec: ModelSpec,
        window: _Window,
        audio,
        offset: float,
        end: float,
        before: list[Segment],
        total: float | None,
        detected: tuple[str, float],
        should_stop: Callable[[], bool],
    ) -> Iterator[SpeechUpdate]:
        """Transcribe one window, streaming its segments. Out of memory: evict idle models and redo the window,
        then redo it once more with beam size 1; finally a StudioOutOfMemory with tips. Returns (segments, stopped)."""
        prompt, language = window.prompt, window.language

        def beam_size_1() -> None:
            window.params = replace(window.params, beam_size=1)

        attempts = self.manager.oom_attempts(
            spec.name,
            exclude=spec.key,
            degrade=[("beam size 1", beam_size_1)],
            message=f"Out of memory while {spec.name} was transcribing, even after unloading idle models and "
            "beam size 1.",
            tip="Unload other models in the Models tab, or pick a smaller Whisper model or int8 precision.",
        )
        for attempt in attempts:
            window.prompt, window.language = prompt, language  # a retry starts the window afresh
            new: list[Segment] = []
            with attempt:
                for seg in window.run(audio):
                    if not seg.text:
                        continue
                    new.append(_shift(seg, offset, len(before) + len(new), end))
                    lang = window.detected or detected
                    yield SpeechUpdate(new[-1].end, total, before + new, *lang)
                    if should_stop():
                        return new, True
        return new, False  # the attempts end after the one that succeeds, or raise

    def _final(
        self,
        spec: ModelSpec,
        name: str,
        params: SpeechParams,
        duration: float,
        segments: list[Segment],
        lang: tuple[str, float, bool],
        t0: float,
        stopped: bool,
        notice: str,
        backend: str = "",
    ) -> SpeechUpdate:
        transcript = Transcript(
            source=name,
            model=spec.name,
            backend=backend or ("faster-whisper" if spec.backend == "faster-whisper" else "openai-whisper"),
            task=params.task,
            language=lang[0],
            language_probability=lang[1],
            language_given=lang[2],
            duration=round(duration, 3),
            segments=segments,
            seconds=time.perf_counter() - t0,
            stopped=stopped,
            notice=notice,
        )
        return SpeechUpdate(duration, duration, list(segments), lang[0], lang[1], transcript)
