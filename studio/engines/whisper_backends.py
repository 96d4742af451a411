"""The two Whisper backends: one window of audio through faster-whisper (CTranslate2) or openai-whisper.

Both yield `Segment`s (with their `Word`s: what a transcript is made of) with times in the window; faster-whisper
decodes each stretch the Silero voice-activity detector hears on its own, openai-whisper the whole window. The
libraries are imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from studio.engines.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from studio.engines.speech import SpeechParams

PROMPT_WORDS = 40  # words of the previous window passed as the next window's prompt (Whisper's own conditioning)


@dataclass(frozen=True)
class Word:
    """One word and when it was said (with word timestamps)."""

    start: float  # seconds from the start of the recording
    end: float
    word: str  # with its leading space, as Whisper writes it
    probability: float


@dataclass(frozen=True)
class Segment:
    """One stretch of text a backend decoded, with its times and the scores Whisper gave it."""

    id: int
    start: float  # seconds from the start of the recording
    end: float
    text: str  # stripped
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    words: tuple[Word, ...] = ()


def backend_of(model: Any) -> str:
    """Which library a loaded model belongs to."""
    return "faster-whisper" if type(model).__name__ == "WhisperModel" else "openai-whisper"


def is_multilingual(model: Any) -> bool:
    if backend_of(model) == "faster-whisper":
        return bool(model.model.is_multilingual)
    return bool(model.is_multilingual)


def speech_spans(audio) -> list[tuple[int, int]]:
    """(start, end) sample ranges where the Silero voice-activity detector hears a voice (gaps under 2 s bridged).

    Each span is decoded on its own. faster-whisper's own `vad_filter` glues the spans together and decodes the
    glued audio, so one segment can straddle minutes of silence and its timestamps then span the gap.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return [(span["start"], span["end"]) for span in get_speech_timestamps(audio, VadOptions())]


class Window:
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
                yield shift_segment(seg, offset, seg.id, (end) / SAMPLE_RATE)
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


def shift_segment(seg: Segment, offset: float, index: int, limit: float) -> Segment:
    """A window's segment in recording time, clipped to the window (whisper may overshoot the padded end)."""
    start = min(offset + seg.start, limit)
    end = min(max(offset + seg.end, start), limit)
    words = tuple(replace(w, start=min(offset + w.start, limit), end=min(offset + w.end, limit)) for w in seg.words)
    return replace(seg, id=index, start=round(start, 3), end=round(end, 3), words=words)
