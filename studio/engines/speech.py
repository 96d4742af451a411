"""Speech: Whisper speech-to-text on the shared model manager, from anything ffmpeg can decode.

Two backends behind one engine: faster-whisper (CTranslate2 folders, among them the offline starter) and
openai-whisper (names tiny ... turbo and local .pt checkpoints), in `studio.engines.whisper_backends`. Audio is
decoded by an ffmpeg child process and read in windows (5 minutes for faster-whisper, 30 s for openai-whisper),
each cut at the quietest moment near its end (`studio.engines.audio`), so memory does not grow with the length of
the recording. A transcription is a generator: progress in seconds of audio, and a cooperative stop checked after
every segment (faster-whisper) or window (openai-whisper).

No gradio here. The Speech tab and /v1/audio/transcriptions both call `SpeechEngine.transcribe()`; the subtitle
writers (TXT, SRT, VTT, JSON) are plain functions in `studio.engines.subtitles`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.engines.audio import FFMPEG_TIP, SAMPLE_RATE, AudioInfo, decode_windows, is_silent, probe_audio
from studio.engines.lane import GpuLane
from studio.engines.subtitles import format_clock
from studio.engines.whisper_backends import PROMPT_WORDS, Segment, backend_of, is_multilingual
from studio.engines.whisper_backends import Window as _Window  # the names the engine's window loop uses
from studio.engines.whisper_backends import shift_segment as _shift
from studio.errors import InputError, ModelLoadError
from studio.memory.reclaim import trim_host_heap
from studio.models.estimate import Workload
from studio.models.manager import ModelManager
from studio.models.records import ModelRecord
from studio.models.specs import ModelSpec
from studio.text import invalid_text

WINDOW_S = {"faster-whisper": 300.0, "openai-whisper": 30.0}  # seconds of audio decoded and held at once
MAX_PROMPT_CHARS = 1000

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


# ----- before and after a window ----------------------------------------------------------------------------


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
