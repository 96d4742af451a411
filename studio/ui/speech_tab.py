"""The Speech tab: Whisper speech-to-text from a file or the microphone, with segments, subtitles and downloads.

Thin handlers: widgets -> SpeechParams -> ctx.speech.transcribe() -> widgets. No torch, whisper or faster-whisper
here; the transcript files are written to outputs/transcripts/ before the page shows them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.engines.speech import LANGUAGES, SpeechParams, SpeechUpdate
from studio.engines.subtitles import format_clock, format_timestamp, save_transcript
from studio.errors import InputError
from studio.models.estimate import Workload
from studio.models.specs import ModelSpec, spec_from_form
from studio.security import require_loaded_choice_or_owner, require_loaded_or_owner
from studio.text import blank, fmt_bytes
from studio.ui import messages as msg
from studio.ui.forms import bind
from studio.ui.session import StopFlags, stop_off, stop_on

log = logging.getLogger(__name__)

STARTER_PREFIX = "starter:"
AUTO = "auto"
PRECISIONS = ("int8", "fp16", "fp32")
# openai-whisper's model names; each downloads once (from OpenAI) when first used
WHISPER_NAMES = (
    ("tiny", "39 M"),
    ("tiny.en", "39 M, English"),
    ("base", "74 M"),
    ("base.en", "74 M, English"),
    ("small", "244 M"),
    ("small.en", "244 M, English"),
    ("medium", "769 M"),
    ("medium.en", "769 M, English"),
    ("large-v3", "1550 M"),
    ("turbo", "809 M, fast large-v3"),
)
INTRO = (
    "Upload a recording (wav, mp3, m4a, flac, ogg, webm, or a video with sound) or record one with the "
    "microphone. Long recordings are read a few minutes at a time, so an hour takes no more memory than a minute."
)
SEGMENT_HEADERS = ["start", "end", "text"]


def _starter_choice() -> tuple[str, str] | None:
    from studio.models import speech_starter

    if not speech_starter.is_available():
        return None
    return (f"{speech_starter.STARTER_LABEL} — offline, faster-whisper", STARTER_PREFIX + speech_starter.STARTER_NAME)


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The starter, speech models the manager already knows, then openai-whisper's names."""
    choices: list[tuple[str, str]] = []
    starter = _starter_choice()
    if starter:
        choices.append(starter)
    for rec, spec in ctx.manager.models("speech"):
        if spec.label != _starter_label():
            choices.append((f"{rec.name} ({rec.state})", spec.source))
    for name, size in WHISPER_NAMES:
        choices.append((f"Whisper {name} — openai-whisper, {size} parameters", name))
    seen, unique = set(), []
    for label, value in choices:
        if value not in seen:
            seen.add(value)
            unique.append((label, value))
    return unique


def _starter_label() -> str:
    from studio.models.speech_starter import STARTER_LABEL

    return STARTER_LABEL


def language_choices() -> list[tuple[str, str]]:
    return [("Auto-detect", AUTO)] + sorted((name.title(), code) for code, name in LANGUAGES.items())


def precision_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """What each precision really runs as on this device: faster-whisper (CTranslate2) picks a compute type,
    openai-whisper runs float16 on a GPU and float32 on the CPU."""
    if ctx.device == "cuda":
        return [
            ("fp16 (CTranslate2 float16; openai-whisper float16)", "fp16"),
            ("int8 (CTranslate2 int8_float16: int8 weights, float16 math)", "int8"),
            ("fp32 (float32)", "fp32"),
        ]
    return [("int8 (CTranslate2 int8; openai-whisper runs float32)", "int8"), ("fp32 (float32)", "fp32")]


def default_precision(ctx: AppContext) -> str:
    return "fp16" if ctx.device == "cuda" else "int8"


def resolve_spec(ctx: AppContext, choice: str | None, precision: str) -> ModelSpec:
    """The picker's value as a ModelSpec: the starter, a name (tiny ... turbo), a .pt file or a CTranslate2 folder."""
    choice = (choice or "").strip()
    if not choice:
        raise InputError(msg.PICK_MODEL.format(what="a speech model"))
    if precision not in PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    offered = [value for _label, value in precision_choices(ctx)]
    if precision not in offered:  # fp16 on the CPU would quietly run as float32: say so instead
        raise InputError(
            f"Precision {precision} needs a GPU; on the CPU Whisper runs {' or '.join(offered)}.",
            "Pick int8 (fastest) or fp32.",
        )
    if choice.startswith(STARTER_PREFIX):
        from studio.models.speech_starter import starter_spec

        return starter_spec(ctx.device, precision)
    return spec_from_form(ctx.device, "speech", choice, precision)


def params_from(language, task, prompt, beam, fallback, words, vad) -> SpeechParams:
    if beam is None:
        raise InputError(msg.BEAM_MISSING)
    params = SpeechParams(
        language="" if language in (None, "", AUTO) else str(language),
        task=task or "transcribe",
        initial_prompt=(prompt or "").strip(),
        beam_size=int(beam),
        temperature_fallback=bool(fallback),
        word_timestamps=bool(words),
        vad_filter=bool(vad),
    )
    params.check_inputs()
    return params


def segment_rows(update: SpeechUpdate) -> list[list[str]]:
    return [[format_timestamp(s.start, "."), format_timestamp(s.end, "."), s.text] for s in update.segments]


def progress_line(update: SpeechUpdate) -> str:
    done = format_clock(update.done_s)
    if update.total_s:
        head = f"Transcribing… {done} of {format_clock(update.total_s)} ({update.fraction:.0%})"
    else:
        head = f"Transcribing… {done} of audio"
    if update.language:
        head += f" · {LANGUAGES.get(update.language, update.language).title()}"
    return head


def send_to_chat(text: str | None):
    """The transcript into the Chat tab's message box, and the Chat tab opened."""
    if blank(text):
        raise gr.Error("Nothing to send yet: transcribe a recording first.")
    return text.strip(), gr.Tabs(selected="chat")


def wire_send_to_chat(speech: dict, chat_input: gr.components.Component, tabs: gr.Tabs) -> None:
    """Called by the layout once every tab exists: the Send to Chat button fills Chat's input and opens the tab."""
    speech["send_to_chat"].click(
        send_to_chat,
        [speech["text"]],
        [chat_input, tabs],
        api_name="speech_send_to_chat",
        concurrency_id="ui",
        concurrency_limit=None,
        show_progress="hidden",
    )


@dataclass(frozen=True)
class TranscribeForm:
    """What a transcription reads from the tab, by widget (the API order of `speech_transcribe`)."""

    audio: str | None  # a recording (file or microphone)
    video: str | None  # or a video: its sound track
    model: str | None
    precision: str
    language: str | None
    task: str | None
    prompt: str | None  # initial prompt
    beam: int | None
    fallback: bool  # temperature fallback
    words: bool  # word timestamps
    vad: bool  # skip silence with the voice-activity filter

    def params(self) -> SpeechParams:
        return params_from(self.language, self.task, self.prompt, self.beam, self.fallback, self.words, self.vad)


class SpeechTab:
    """The Speech tab's handlers; stop flags are per browser session."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.flags = StopFlags()

    def visitor_spec(self, choice: str | None, precision: str, request: Any) -> ModelSpec:
        """The chosen model, if this visitor may use it: the bundled starter is anyone's, others the owner's. A remote
        visitor's typed path is refused before it is looked at, with one answer whether it exists or not."""
        if str(choice).startswith(STARTER_PREFIX):
            return resolve_spec(self.ctx, choice, precision)
        require_loaded_choice_or_owner(self.ctx.security, self.ctx.manager, "speech", choice, request)
        spec = resolve_spec(self.ctx, choice, precision)
        require_loaded_or_owner(self.ctx.security, self.ctx.manager, spec, request)
        return spec

    @msg.user_errors
    def show_plan(self, choice: str | None, precision: str, request: gr.Request = None) -> str:
        if not choice:
            return ""
        plan = self.ctx.manager.plan(self.visitor_spec(choice, precision, request), Workload(batch=5))
        est = plan.estimate
        return (
            f"{plan.message} Estimate: {fmt_bytes(est.total)} = weights {fmt_bytes(est.weights_bytes)} + "
            f"decoder state {fmt_bytes(est.runtime_bytes)} ({est.method})."
        )

    @msg.user_errors
    def transcribe(self, form: TranscribeForm, request: gr.Request = None, progress: Any = None):
        """Generator: progress and the segments so far stream in; the files are written before they are shown."""
        audio_path = form.video or form.audio  # only one is set: choosing one clears the other
        if not audio_path:
            raise InputError(msg.NO_RECORDING)
        spec = self.visitor_spec(form.model, form.precision, request)
        params = form.params()
        stop = self.flags.start(request)
        name = Path(audio_path).name
        prefix = ""
        if not self.ctx.speech.is_loaded(spec):
            prefix = self.ctx.manager.plan(spec, Workload(batch=params.beam_size)).message + " "
        yield prefix + f"Reading {name}…", "", [], None
        for update in self.ctx.speech.transcribe(spec, audio_path, params, should_stop=stop.is_set, source_name=name):
            if update.transcript is None:
                if progress is not None and update.total_s:
                    progress(update.fraction, desc=progress_line(update))
                elif progress is not None:
                    progress((int(update.done_s), None), desc=progress_line(update), unit="s of audio")
                text_so_far = " ".join(s.text for s in update.segments)
                yield prefix + progress_line(update), text_so_far, segment_rows(update), None
                continue
            tr = update.transcript
            if tr.no_speech:
                yield tr.summary(), "", [], None
                return
            written = save_transcript(tr, self.ctx.paths.outputs)
            folder = written["srt"].parent
            summary = f"{tr.summary()}\n\nSaved to `{folder}` as {', '.join(p.name for p in written.values())}."
            yield summary, tr.text, segment_rows(update), [str(p) for p in written.values()]

    def request_stop(self, request: gr.Request = None) -> None:
        self.flags.stop(request)  # ends after the current segment


def layout(ctx: AppContext) -> dict[str, Any]:
    """The tab's widgets, by name (the names the form uses)."""
    choices = model_choices(ctx)
    gr.Markdown(INTRO)
    missing = ctx.speech.tools_missing()
    if missing:
        gr.Markdown(f"**{missing}**", elem_id="speech-tools-missing")
    with gr.Row():
        model = gr.Dropdown(
            choices=choices,
            value=choices[0][1] if choices else None,
            allow_custom_value=True,
            label="Model (pick one, or type a CTranslate2 folder or an openai-whisper .pt file)",
            elem_id="speech-model",
            scale=4,
        )
        precision = gr.Dropdown(
            precision_choices(ctx),
            value=default_precision(ctx),
            label="Precision",
            elem_id="speech-precision",
            scale=1,
        )
    plan_md = gr.Markdown(elem_id="speech-plan")
    with gr.Row():
        with gr.Column(scale=2):
            audio = gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label="Recording (a file, or the microphone)",
                elem_id="speech-audio",
            )
            video = gr.File(
                label="…or a video (mp4, mov, mkv, webm): its sound track",
                file_types=["video", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"],
                type="filepath",
                height=90,
                elem_id="speech-video",
            )
            with gr.Row():
                run_btn = gr.Button("Transcribe", variant="primary", elem_id="speech-run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="speech-stop", interactive=False)
            with gr.Accordion("Options", open=False, elem_id="speech-options"):
                language = gr.Dropdown(language_choices(), value=AUTO, label="Language", elem_id="speech-language")
                task = gr.Radio(
                    [("Transcribe", "transcribe"), ("Translate to English", "translate")],
                    value="transcribe",
                    label="Task",
                    elem_id="speech-task",
                )
                prompt = gr.Textbox(label="Initial prompt (names, spellings, style)", lines=2, elem_id="speech-prompt")
                beam = gr.Slider(1, 10, value=5, step=1, label="Beam size (1 = greedy, faster)", elem_id="speech-beam")
                fallback = gr.Checkbox(
                    value=True,
                    label="Temperature fallback: retry warmer when a passage decodes badly",
                    elem_id="speech-fallback",
                )
                words = gr.Checkbox(value=False, label="Word timestamps (in the JSON)", elem_id="speech-words")
                vad = gr.Checkbox(
                    value=True,
                    label="Skip silence with the voice-activity filter (faster-whisper)",
                    elem_id="speech-vad",
                )
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="speech-status")
            text = gr.Textbox(
                label="Transcript", lines=8, max_lines=20, buttons=["copy"], elem_id="speech-text", interactive=False
            )
            send_btn = gr.Button("Send to Chat", elem_id="speech-send-to-chat")
            table = gr.Dataframe(
                headers=SEGMENT_HEADERS,
                value=[],
                interactive=False,
                wrap=True,
                max_height=360,
                label="Segments",
                elem_id="speech-segments",
            )
            files = gr.File(
                label="Downloads (TXT, SRT, VTT, JSON)",
                file_count="multiple",
                interactive=False,
                elem_id="speech-files",
            )
    return {
        "model": model,
        "precision": precision,
        "plan": plan_md,
        "audio": audio,
        "video": video,
        "run": run_btn,
        "stop": stop_btn,
        "language": language,
        "task": task,
        "prompt": prompt,
        "beam": beam,
        "fallback": fallback,
        "words": words,
        "vad": vad,
        "status": status,
        "text": text,
        "segments": table,
        "files": files,
        "send_to_chat": send_btn,
    }


def wire(tab: SpeechTab, w: dict[str, Any]) -> None:
    """The tab's events."""
    gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}
    light = {"queue": False, "show_progress": "hidden"}
    quick = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
    transcribe, inputs = bind(tab.transcribe, TranscribeForm, w, progress=gr.Progress())
    outputs = [w["status"], w["text"], w["segments"], w["files"]]
    private = {"api_visibility": "private"}
    stop = [w["stop"]]  # enabled only while a transcription runs
    w["run"].click(stop_on, None, stop, **private, **light).then(
        transcribe, inputs, outputs, api_name="speech_transcribe", **gpu
    ).then(stop_off, None, stop, **private, **light)
    w["stop"].click(tab.request_stop, None, None, api_name="speech_stop", **quick)
    w["video"].upload(lambda: None, None, [w["audio"]], api_visibility="private", **light)  # one source at a time
    w["audio"].input(lambda: None, None, [w["video"]], api_visibility="private", **light)
    plan_inputs = [w["model"], w["precision"]]
    w["model"].change(tab.show_plan, plan_inputs, [w["plan"]], api_name="speech_plan", **light)
    w["precision"].change(tab.show_plan, plan_inputs, [w["plan"]], **light)


def build(ctx: AppContext) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    tab = SpeechTab(ctx)
    w = layout(ctx)
    wire(tab, w)
    w["tab"] = tab
    return w
