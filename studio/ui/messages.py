"""User-facing words, in one place, so the studio speaks with one voice. Plus the StudioError -> gr.Error adapter."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from studio.errors import StudioError

log = logging.getLogger(__name__)

TITLE = "ML Studio"
SUBTITLE = "Chat, images, speech and fine-tuning on one GPU, inside one memory budget."

CPU_NOTICE = "**No NVIDIA GPU in use** — {note}"

MODELS_INTRO = (
    "Every model the manager knows. Loaded models hold device memory; parked models wait in CPU RAM for a fast "
    "switch back; unloaded ones hold nothing. A model in use is never evicted."
)
NO_MODELS = "No model loaded yet. Load one below, or use a workbench tab."
SELECT_MODEL = "Pick a model in the list first."
LOAD_HELP = (
    "A local folder (transformers or diffusers layout), a single file (.safetensors, .gguf, Whisper .pt) or a "
    "Hugging Face id. The plan says what would be evicted before anything is loaded."
)
BUDGET_HELP = "Budget and reserve apply at once; idle models are evicted if what is loaded no longer fits."
BUDGET_SET = "Budget now {budget} (reserve {reserve}); models may use {usable}."
PARKED = "{name} parked in CPU RAM."
KEEP_ALIVE_INFO = (
    "for the picked model: parked in RAM (else unloaded) after this idle time; 0 = never, empty = default"
)
KEEP_ALIVE_SET = "{name}: idle unload {idle}."
KEEP_ALIVE_RANGE = "Idle unload must be from 0 to {most} minutes, not {minutes:g}; leave it empty for the default."
UNLOADED = "{name} unloaded: {freed} came back."
LEAK = " Warning: something still holds {name}; its memory is not free yet (see the timeline)."
LOADED = "{name} loaded: {measured} measured (estimated {estimated}, {method}) in {seconds:.1f} s."
UNEXPECTED = "Something went wrong: {error}. The studio keeps running; details are in the console."
# values the page's widgets cannot read (studio/ui/inputs.py); mostly sent by API clients and scripts
NUMBER_MISSING = "{label} needs a number."
NUMBER_TYPE = "{label} must be a number, not {value}."
NUMBER_FINITE = "{label} must be a finite number, not {value}."
NUMBER_WHOLE = "{label} must be a whole number, not {value}."
NUMBER_LOW = "{label} must be at least {bound}, not {value}."
NUMBER_HIGH = "{label} must be at most {bound}, not {value}."
INPUT_COUNT = "'{action}' takes {wanted} values but {got} were sent: one for each of {labels}."
INPUT_UNREADABLE = "{label} cannot use the value sent: {value}."
INPUT_UNREADABLE_SOMEWHERE = (
    "One of the values sent to '{action}' cannot be used; GET /gradio_api/info lists what each one takes."
)
FILE_NOT_UPLOADED = (
    "{label}: that file was not uploaded to this studio. Upload it first (the page does; API clients POST it to "
    "/gradio_api/upload) and send the path that comes back."
)
FILE_SHAPE = (
    '{label} takes a file uploaded to this studio ({{"path": ..., "meta": {{"_type": "gradio.FileData"}}}}), '
    "not {value}."
)
CHATBOT_SHAPE = (
    '{label} takes a list of messages such as {{"role": "user", "content": [{{"type": "text", "text": "Hello"}}]}}.'
)
EVENT_ONLY = (
    "'{action}' answers a click on the page and takes what was clicked from the page itself; an API call cannot "
    "send that. GET /gradio_api/info lists the actions an API client can call."
)
NOT_AN_IMAGE = "{label}: {name} is not an image the studio can read. Upload a PNG, JPEG or WebP file."

# what a form lacks: the page says it before anything runs
PICK_MODEL = "Pick {what} first."
NO_RECORDING = "Upload a recording or record one with the microphone first."
EVAL_SHARE_MISSING = "The evaluation share must be a number between 0 and 0.9."
RESERVE_MISSING = "Reserve must be a number of GB (0 or more)."
PICK_ADAPTER_TO_DETACH = "Pick the adapter to detach in 'Answer with'."
PICK_ADAPTER_FOLDER = "Pick or type an adapter folder first."
NOTHING_TO_EXPORT = "Nothing to export yet: the conversation is empty."
NO_DATASET = "Drop a dataset file first."
PICK_GALLERY_IMAGE = "Click an image in the gallery first."
BEAM_MISSING = "Beam size must be a whole number."

TYPE_FIRST = "Type a message first: the message is empty."
NOTHING_TO_REGENERATE = "Nothing to regenerate yet."
CHAT_NO_REPLY = "No reply: {error}"  # the stats line when a reply failed; the conversation is kept as it was
CHAT_SIDE_STATS = "With adapter {adapter}: {with_stats} · without: {without_stats}"
CHAT_SIDE_WAITING = "answering…"
# Past chats (studio/ui/chat_history.py): conversations kept in the visitor's own browser
CHAT_UNTITLED = "(no question yet)"
CHAT_NOTHING_TO_DELETE = "Nothing to delete: this conversation is empty."
CHAT_NOT_FOUND = "That conversation is no longer in this browser (deleted in another tab?)."
CHATS_DROPPED = "Past chats: the {count} oldest conversation(s) were removed to stay within this browser's storage."
# what the reply's bubble says until its first token (updated every second), by what the reply waits for
CHAT_WAITING = {
    "convert": "⏳ Converting the starter model once (first use only), then loading it: {seconds:.0f} s",
    "unpark": "⏳ Bringing {name} back from CPU RAM: {seconds:.0f} s",
    "load": "⏳ Loading {name}: {seconds:.0f} s",
}
CHAT_STOPPED_MARK = " — stopped"  # ends a reply cut by Stop or Clear (left out of the next prompt)
CHAT_STOPPED_EMPTY = "— stopped before the first word"
CHAT_BUSY = "A reply is still being written: wait for it or press Stop. Your message stays in the box."
CHAT_DEFAULTS = "Defaults from {source}: {values}."
CHAT_DEFAULTS_IGNORED = " Not taken (out of range here): {ignored}."
CHAT_DEFAULTS_NONE = "{name} names no sampling defaults of its own: the studio's are set."
PICK_RUN = "Pick a run in the Runs list first (or start one)."
ADAPTER_ATTACHED = "Attached the adapter {adapter} to {model}: replies now come from it."
ADAPTER_ATTACHED_NOTE = "The base model stays loaded: pick it in 'Answer with' to compare, or tick Side by side."
EXPORT_HELP = (
    "Convert a chat model into one GGUF file that llama.cpp, Ollama and LM Studio run, with an Ollama `Modelfile` "
    "beside it, in the data dir's `outputs/exports/`. A fine-tune run is exported from the Fine-tune tab."
)
EXPORT_PICK_FORMAT = "Pick a format to export to first."
EXPORT_RUNNING = "An export is already running in this page; wait for it, or press Stop export."
EXPORT_STARTED = "Exporting as {format}… (the progress bar shows merge, convert and quantize)"
EXPORT_STOPPED = "The export was stopped; nothing was left half-written, and earlier exports are intact."
EXPORT_STOPPING = "Stopping the export; it removes its half-written file."
EXPORT_NOTHING_TO_STOP = "No export is running in this page."
EXPORT_MERGED = "Merged in {seconds:.0f} s: `{path}` (a full safetensors model)."
EXPORT_FAILED = "**No export:** {error}"
EXPORT_NOTHING_TO_TRY = "Export the model to GGUF first (F16, Q8_0, Q4_K_M or Q5_K_M); then try it in Chat."
EXPORT_TRYING = "Trying {name} in the Chat tab: it loads through llama.cpp and answers the question asked there."
GENERAL_KEPT = (
    "General knowledge kept: **{percent:.0f} %** (the adapter's loss on the base model's own answers to {prompts} "
    "everyday questions, against the base's: 100 % = it still answers them as the base does)."
)
GENERAL_KEPT_LOW = (
    "**Warning: this run changed how the model answers general questions** (kept under {limit:.0f} %). It may now "
    "answer everyday questions with what it was trained on: press *Compare on general questions* to see. Fewer "
    "steps, a lower learning rate or more varied rows forget less."
)
GENERAL_NOT_MEASURED = "General knowledge kept: not measured ({error})."
GENERAL_COMPARE_NOTE = "{n} of the general probe's questions, answered greedily by {base} and by {run}:"
FT_INTRO = (
    "Drop a dataset, check how the model will see it, pick a base model and LoRA settings, then Start. Training runs "
    "in its own process; Stop saves a usable adapter, Resume continues from the last checkpoint, and *Try in Chat* "
    "attaches the adapter in the Chat tab. Runs live in the data dir under `runs/`."
)


def page_error(exc: BaseException, where: str) -> tuple[str, str]:
    """(the page's error text with its tip, its first line) for any exception; unexpected ones are logged whole."""
    if isinstance(exc, StudioError):
        return str(exc), exc.message
    log.error("unexpected error in %s", where, exc_info=exc)
    text = UNEXPECTED.format(error=f"{type(exc).__name__}: {exc}"[:300])
    return text, text


def user_errors(
    fn: Callable[..., Any] | None = None,
    *,
    final: Callable[[Any, Any, str, str], Any] | None = None,
    warn: bool = False,
) -> Any:
    """Turn StudioError (and any unexpected error) into what the page shows, never a traceback: a gr.Error, or with
    `warn` a gr.Warning toast. For a generator, `final(owner, last, text, line)` makes one more update, so the page
    keeps what the run made before it failed: `owner` is the handler's first argument (the tab, for a method),
    `last` the last update it yielded (None when none yet), `text` the error with its tip and `line` its first line."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        import gradio as gr

        def fail(exc: BaseException) -> tuple[str, str]:
            if isinstance(exc, gr.Error):
                raise exc
            return page_error(exc, fn.__name__)

        def end(text: str) -> None:
            if warn:
                gr.Warning(text)
            else:
                raise gr.Error(text) from None

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(*args: Any, **kwargs: Any) -> Any:
                last = None
                try:
                    for last in fn(*args, **kwargs):  # noqa: B007 - the last update is kept for `final`
                        yield last
                except Exception as exc:  # noqa: BLE001 - the page gets one line; the console gets the traceback
                    text, line = fail(exc)
                else:
                    return
                if warn:
                    gr.Warning(text)
                if final is not None:
                    yield final(args[0] if args else None, last, text, line)
                if not warn:
                    raise gr.Error(text) from None

            return stream

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the page gets one line; the console gets the traceback
                text, _ = fail(exc)
            end(text)

        return call

    return decorate(fn) if fn is not None else decorate


# ----- vision in the page (Chat images, the Image tab's Describe and Ask in Chat)
DESCRIBE_NO_IMAGE = "Nothing to describe: drop an image, or click one in the gallery first."
DESCRIBE_NO_VISION = "No vision model is loaded: Describe needs one to see the image."
DESCRIBE_NO_VISION_TIP = (
    "Load a vision model (one marked as taking images, such as Qwen2.5-VL) in the Models tab or the Chat tab."
)
DESCRIBE_EMPTY = "{model} gave no description for this image; try Describe again or another vision model."
DESCRIBED = "Described by {model}: edit the prompt, then Generate."
ASK_NO_IMAGE = "Nothing to ask about: drop an image, or click one in the gallery first."
# the Chat tab's offer when a text-only model is sent images (studio/ui/vision_offer.py)
VISION_OFFER = "**{model} cannot see the images of this conversation.** A vision model can answer it: {models}."
VISION_OFFER_LOADED = "loaded: {names}"
VISION_OFFER_RECOMMENDED = "recommended for 12 GB (downloaded when first used): {names}"
VISION_USE = "Use {model}"
# what Describe asks the vision model (AUTOMATIC1111's Interrogate)
DESCRIBE_ASK = (
    "Describe this image as a Stable Diffusion prompt: one line of comma-separated phrases naming the subject, "
    "the setting, the style, the lighting and the colours. Answer with the prompt only."
)

# ----- Hub downloads (studio/ui/hub_panel.py) ------------------------------------------------------------------
DOWNLOAD_OFFER = (
    "{repo} is not downloaded yet. **Download** fetches its safetensors weights, configs and tokenizer into the "
    "Hugging Face cache (once; Load then reads them from there)."
)
DOWNLOAD_CHECKING = "⬇ {repo}: asking the Hub which files to fetch…"
DOWNLOAD_RUNNING = "⬇ Downloading {repo}: {done} of {total} ({pct:.0f} %), {files} files."
DOWNLOAD_DONE = "✅ {repo} is downloaded: {total} in {files} files, in the Hugging Face cache. {next}"
DOWNLOAD_CANCELLED = (
    "Download of {repo} cancelled at {done} of {total}. The files fetched so far are kept: Download resumes there."
)
DOWNLOAD_FAILED = "❌ {message}"
DOWNLOAD_NEXT_MODELS = "Press Load."
DOWNLOAD_NEXT_CHAT = "Send a message to chat with it (it loads first), or press Load."
DOWNLOAD_ALREADY = "{repo} is downloaded already (in the Hugging Face cache). {next}"
DOWNLOAD_NOTHING = "No download of {repo} is running."
DOWNLOAD_NOT_HUB_ID = (
    "{value!r} is not a Hugging Face id: Download takes owner/name, as on the model's page "
    "(for example Qwen/Qwen2.5-0.5B-Instruct)."
)
