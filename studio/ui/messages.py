"""User-facing words, in one place, so the studio speaks with one voice. Plus the StudioError -> gr.Error adapter."""

from __future__ import annotations

import functools
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
EMPTY_SOURCE = "Type a folder, a file path or a Hugging Face id to load."
BAD_SOURCE_CHAR = (
    "The model name has a character that no folder, file or Hugging Face id contains ({code}, character {at}). "
    "Type or paste the name again."
)
BUDGET_HELP = "Budget and reserve apply at once; idle models are evicted if what is loaded no longer fits."
BUDGET_SET = "Budget now {budget} (reserve {reserve}); models may use {usable}."
PARKED = "{name} parked in CPU RAM."
UNLOADED = "{name} unloaded: {freed} no longer accounted."
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
NOT_AN_IMAGE = "{label}: {name} is not an image the studio can read. Upload a PNG, JPEG or WebP file."
CHAT_NO_REPLY = "No reply: {error}"  # the stats line when a reply failed; the conversation is kept as it was
CHAT_SIDE_STATS = "With adapter {adapter}: {with_stats} · without: {without_stats}"
CHAT_SIDE_WAITING = "answering…"
FT_INTRO = (
    "Drop a dataset, check how the model will see it, pick a base model and LoRA settings, then Start. Training runs "
    "in its own process; Stop saves a usable adapter, Resume continues from the last checkpoint, and *Try in Chat* "
    "attaches the adapter in the Chat tab. Runs live in the data dir under `runs/`."
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn StudioError (and any unexpected error) into a gr.Error the page shows, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the page gets one line; the console gets the traceback
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(UNEXPECTED.format(error=f"{type(exc).__name__}: {exc}"[:300])) from None

    return wrapper
