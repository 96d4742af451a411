"""OpenAI-compatible REST routes on the studio's own server: GET /v1/models and POST /v1/chat/completions.

GET /v1/models also lists the embedding models POST /v1/embeddings serves (studio/api/embeddings.py); each object
has a `kind`, "chat" or "embedding", beside OpenAI's fields.

The official `openai` client pointed at http://127.0.0.1:PORT/v1 works unchanged. Replies come from the same
ChatEngine and model manager as the Chat tab. The API serves only models the studio already holds (loaded or
parked chat models, their attached LoRA adapters as "base:adapter") and the starter model; it never loads an
arbitrary path or Hub id. /v1/models also lists the image models (studio/api/images.py) and speech models
(studio/api/audio.py) those routes take, each with its `kind`, `engine`, `precision`, `loaded` and `state`.

Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with the StudioError's one line:
  400 invalid_request_error  bad JSON or fields, an InputError, a model that cannot be loaded (ModelLoadError)
  404 invalid_request_error  an unknown model id (code model_not_found)
  503 server_error           BudgetError / StudioOutOfMemory: it does not fit in memory now (clients may retry)
  503 server_error           StudioBusy: the line for the GPU is full (code busy, with Retry-After)
  507 server_error           DiskFullError: the studio's disk is full (code disk_full)
  500 server_error           anything unexpected (logged with its traceback; the client gets one line)
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.responses import JSONResponse, StreamingResponse

from studio.api.image_urls import fetch_image_urls, web_image_parts
from studio.engines import constrain
from studio.engines.chat import MAX_TOP_LOGPROBS, ChatChunk, ChatParams, ChatStats, TokenLogprob, check_messages
from studio.engines.tools import call_format, check_tool_choice, check_tools, names_of, parse_calls
from studio.errors import (
    BudgetError,
    DiskFullError,
    FieldError,
    InputError,
    ModelLoadError,
    StudioBusy,
    StudioError,
    StudioOutOfMemory,
)
from studio.models.records import LOADED, PARKED, UNLOADED
from studio.models.specs import ModelSpec
from studio.security import request_facts
from studio.text import json_limit

if TYPE_CHECKING:
    from studio.context import AppContext

log = logging.getLogger(__name__)
OWNER = "ml-studio"
DISCONNECT_POLL_S = 0.5  # how often a waiting request checks whether its client is still there
MAX_STOPS = 4  # as OpenAI
MAX_N = 8  # replies per request at most (each is generated in turn)
MAX_LEGACY_LOGPROBS = 5  # /v1/completions' logprobs, as OpenAI
MAX_PROMPTS = 64  # prompts in one /v1/completions request
BUSY_RETRY_AFTER_S = 5  # what a client that finds the GPU line full is told to wait (Retry-After)


class ApiError(Exception):
    """A request the API refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)} if self.code == "busy" else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def api_error(exc: BaseException) -> ApiError:
    """Any failure as an ApiError; StudioErrors keep their one-line message, other errors are logged."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StudioBusy):
        return ApiError(503, str(exc), code="busy")
    if isinstance(exc, DiskFullError):  # the server's disk, not the request: a 5xx
        return ApiError(507, str(exc), code="disk_full")
    if isinstance(exc, StudioOutOfMemory):
        return ApiError(503, str(exc), code="out_of_memory")
    if isinstance(exc, BudgetError):
        return ApiError(503, str(exc), code="insufficient_memory")
    if isinstance(exc, ModelLoadError):
        return ApiError(400, str(exc), param="model", code="model_load_failed")
    if isinstance(exc, StudioError):  # InputError and any other error the user can fix
        return ApiError(400, str(exc), param=getattr(exc, "param", None))
    log.error("OpenAI API: unexpected error", exc_info=exc)
    return ApiError(500, f"Internal error in ML Studio ({type(exc).__name__}); the studio's log has the details.")


# ----- request ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionRequest:
    """A checked /v1/chat/completions body."""

    model: str  # the model id as the client wrote it (echoed in the response)
    messages: list[dict]  # system/user/assistant/tool turns: text, and the assistant's tool_calls
    params: ChatParams  # sampling; fields the client left out keep the studio's defaults
    stream: bool  # answer as Server-Sent Events
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts
    stops: tuple[str, ...]  # cut the reply before the first of these
    n: int = 1  # replies to write (in turn; with a fixed seed, reply i uses seed + i)
    tool_names: tuple[str, ...] = ()  # the tools a reply may call (parsed into tool_calls); () = text only
    parallel_tool_calls: bool = True  # False: only a reply's first tool call is returned


def bad_json(exc: ValueError | RecursionError) -> ApiError:
    """The 400 for a body `json.loads` refused: bad JSON, or valid JSON beyond what Python reads (nesting, digits).
    JSONDecodeError and UnicodeDecodeError are ValueErrors."""
    limit = json_limit(exc)
    if limit:
        return ApiError(400, f"The request body cannot be read: {limit}.")
    return ApiError(400, f"The request body is not valid JSON ({exc}).")


def _field(body: dict, name: str, types: tuple[type, ...], what: str) -> Any:
    """body[name] if present and of one of `types` (bool is never a number), else None; wrong type -> 400."""
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {what}, not {json.dumps(value)[:60]}.", param=name)
    return value


def _messages(raw: Any) -> list[dict[str, str]]:
    """OpenAI messages -> the engine's; "developer" (newer clients' system role) counts as system."""
    if raw is None:
        raise ApiError(400, "'messages' is required: a list of {role, content} objects.", param="messages")
    if not isinstance(raw, list):
        raise ApiError(400, "'messages' must be a list of {role, content} objects.", param="messages")
    if not raw:
        raise ApiError(400, "'messages' is empty: send at least one message with role 'user'.", param="messages")
    out = []
    for m in raw:
        if isinstance(m, dict) and m.get("role") == "developer":
            m = {**m, "role": "system"}
        out.append(m)
    last = out[-1]
    content = last.get("content") if isinstance(last, dict) and last.get("role") == "user" else None
    if isinstance(content, str) and not content.strip():
        raise ApiError(400, f"messages[{len(out) - 1}] is empty: the last user message needs text.", param="messages")
    try:
        return check_messages(out)
    except InputError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def _stops(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them.", param="stop")
    return tuple(stops)


def parse_request(body: Any) -> CompletionRequest:
    """Check a request body; raise ApiError (400) naming the first field that cannot work."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' is required: one of the ids GET /v1/models lists.", param="model")
    for legacy, newer in (("functions", "tools"), ("function_call", "tool_choice")):
        if body.get(legacy) is not None:
            raise ApiError(400, f"'{legacy}' (deprecated by OpenAI) is not supported; send '{newer}'.", param=legacy)
    parallel = _field(body, "parallel_tool_calls", (bool,), "true or false")
    try:
        tool_list = check_tools(body.get("tools"))
        choice = check_tool_choice(body.get("tool_choice"), tool_list)
    except FieldError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    given, n, stream = _sampling(body)
    logprobs = bool(_field(body, "logprobs", (bool,), "true or false"))
    top = _field(body, "top_logprobs", (int,), "a whole number")
    if top is not None:
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(
                400, f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, not {top}.", param="top_logprobs"
            )
        if not logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    if logprobs:
        given["top_logprobs"] = top or 0
    fmt = _field(body, "response_format", (dict,), "an object") or {}
    kind = fmt.get("type", "text")
    if kind not in ("text", "json_object", "json_schema"):
        raise ApiError(
            400, "response_format's type must be text, json_object or json_schema.", param="response_format"
        )
    if kind == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("schema"), dict):
        raise ApiError(
            400,
            "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}.",
            param="response_format",
        )
    if kind != "text":  # llguidance on the transformers path, llama.cpp's grammars on GGUF models
        try:
            constrain.check(fmt)
        except InputError as exc:
            raise ApiError(400, str(exc), param="response_format") from None
        given["response_format"] = fmt
    if tool_list:
        given["tools"] = tool_list
        if choice not in ("none", "auto"):  # "required" or a named function: the reply is decoded as a call
            given["response_format"] = call_format(tool_list, None if choice == "required" else choice)
            try:
                constrain.check(given["response_format"])
            except InputError as exc:
                raise ApiError(400, f"A tool's parameters cannot be used: {exc}", param="tools") from None
    params = _params(given)
    options = _field(body, "stream_options", (dict,), "an object") or {}
    return CompletionRequest(
        model=model.strip(),
        messages=_messages(body.get("messages")),
        params=params,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        stops=_stops(body.get("stop")),
        n=n,
        tool_names=tuple(names_of(tool_list)) if choice != "none" else (),
        parallel_tool_calls=parallel is not False,
    )


def _params(given: dict[str, Any]) -> ChatParams:
    params = ChatParams(**given)
    try:
        params.check_inputs()
    except InputError as exc:
        raise ApiError(400, str(exc)) from None
    return params


def _sampling(body: dict, *, min_tokens: int = 1) -> tuple[dict[str, Any], int, bool]:
    """The ChatParams fields of what chat and completions share, `n` and `stream`; ApiError (400) names a bad
    field."""
    number, integer = (int, float), (int,)
    _field(body, "user", (str,), "text")  # an end user's id for abuse tracking: accepted, used for nothing
    n = _field(body, "n", integer, "a whole number")
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"'n' must be between 1 and {MAX_N}, not {n}.", param="n")
    stream = bool(_field(body, "stream", (bool,), "true or false"))
    if stream and n > 1:
        raise ApiError(400, "'n' above 1 cannot be streamed here; send stream: false, or n: 1.", param="n")
    given: dict[str, Any] = {}
    for name in ("frequency_penalty", "presence_penalty"):
        value = _field(body, name, number, "a number between -2 and 2")
        if value is not None:
            if not -2 <= value <= 2:
                raise ApiError(400, f"'{name}' must be between -2 and 2, not {value:g}.", param=name)
            given[name] = float(value)
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > 1024:
            raise ApiError(400, "'logit_bias' must be a map of token ids to numbers (-100..100).", param="logit_bias")
        pairs = []
        for key, value in bias.items():
            if not (isinstance(key, str) and key.isdigit() and len(key) < 10) or isinstance(value, bool):
                raise ApiError(400, f"'logit_bias' keys must be token ids, not {key[:20]!r}.", param="logit_bias")
            if not isinstance(value, (int, float)) or not -100 <= value <= 100:
                raise ApiError(
                    400, f"'logit_bias' values must be numbers from -100 to 100, not {value!r}.", param="logit_bias"
                )
            pairs.append((int(key), float(value)))
        if pairs:
            given["logit_bias"] = tuple(pairs)
    max_tokens = _field(body, "max_completion_tokens", integer, "a whole number")
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", integer, "a whole number")
    if max_tokens is not None:
        if max_tokens < min_tokens:
            raise ApiError(400, f"'max_tokens' must be at least {min_tokens}, not {max_tokens}.", param="max_tokens")
        given["max_new_tokens"] = max_tokens
    for name, key, kinds, what in (
        ("temperature", "temperature", number, "a number (0 = greedy)"),
        ("top_p", "top_p", number, "a number above 0 and at most 1"),
        ("seed", "seed", integer, "a whole number"),
        ("top_k", "top_k", integer, "a whole number"),  # not OpenAI's; vLLM and others accept it
        ("repetition_penalty", "repetition_penalty", number, "a number"),  # likewise
    ):
        value = _field(body, name, kinds, what)
        if value is not None:  # a JSON number may come as 2 or 2.0: both are the same float to the engine
            given[key] = float(value) if kinds is number else value
    if ("frequency_penalty" in given or "presence_penalty" in given) and "repetition_penalty" not in given:
        # the client says which penalty it wants in OpenAI's terms: the studio's own default (1.1) is off
        given["repetition_penalty"] = 1.0
    return given, n, stream


# ----- models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """A model id the API answers to."""

    id: str
    spec: ModelSpec
    adapter: str | None  # a LoRA adapter attached to `spec`, or None for the base model
    created: int  # when the studio last used it (unix seconds; 0 if never)

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names that select it: the display name (the starter's label) and the manager key."""
        suffix = f":{self.adapter}" if self.adapter else ""
        return (self.spec.name + suffix, self.spec.key + suffix)


def api_id(spec: ModelSpec) -> str:
    """The id clients use: the model's name, but the starter's plain name (its display label has spaces)."""
    return spec.source if spec.source_type == "starter" else spec.name


def served_models(ctx: AppContext) -> list[ServedModel]:
    """Loaded or parked chat models (most recently used first), the starter, and "base:adapter" for adapters."""
    held = [*ctx.manager.models("chat", (LOADED, PARKED)), *ctx.manager.models("vision", (LOADED, PARKED))]
    held.sort(key=lambda pair: -pair[0].last_used)
    bases = [(spec, int(rec.last_used)) for rec, spec in held]
    try:
        from studio.models.starter import starter_spec
    except ImportError:
        pass
    else:
        from studio.engines.llamacpp import auto_engine

        bases.append((auto_engine(starter_spec(ctx.device)), 0))
    out: dict[str, ServedModel] = {}
    for spec, created in bases:
        name = api_id(spec)
        out.setdefault(name, ServedModel(name, spec, None, created))
        for adapter in ctx.chat.attached(spec):
            out.setdefault(f"{name}:{adapter}", ServedModel(f"{name}:{adapter}", spec, adapter, created))
    return list(out.values())


def resolve_model(ctx: AppContext, model_id: str) -> ServedModel:
    """The served model named `model_id` (an id from /v1/models, or an alias); unknown -> 404."""
    served = served_models(ctx)
    for m in served:
        if model_id == m.id:
            return m
    for m in served:
        if model_id in m.aliases:
            return m
    raise ApiError(
        404,
        f"The model '{model_id}' is not available in ML Studio. GET /v1/models lists the loaded chat models "
        "and the starter; load others in the Models or Chat tab first.",
        param="model",
        code="model_not_found",
    )


def _state(ctx: AppContext, spec: ModelSpec) -> tuple[str, int]:
    """The manager's state string for `spec` ("loaded", "parked in RAM", "unloaded") and when it was last used."""
    rec = ctx.manager.record(spec.key)
    return (str(rec.state), int(rec.last_used)) if rec is not None else (str(UNLOADED), 0)


def _entry(
    ctx: AppContext, model_id: str, kind: str, spec: ModelSpec, engine: str, precision: str, created: int = 0
) -> dict[str, Any]:
    """A /v1/models object: OpenAI's fields, then the studio's kind, engine, precision, loaded and state."""
    state, last_used = _state(ctx, spec)
    return {
        "id": model_id,
        "object": "model",
        "created": created or last_used,
        "owned_by": OWNER,
        "kind": kind,  # chat | image | speech: which endpoints take it
        "engine": engine,  # what runs it: llama.cpp, transformers, diffusers, faster-whisper, openai-whisper
        "precision": precision,  # the GGUF file's quantization for llama.cpp ("Q4_1"), else the load precision
        "loaded": state == LOADED,  # on its device now (parked or unloaded models are loaded on first use)
        "state": state,  # the manager's: "loaded", "parked in RAM" or "unloaded"
    }


def model_object(ctx: AppContext, m: ServedModel) -> dict[str, Any]:
    from studio.engines.llamacpp import engine_label
    from studio.models.gguf_vision import sees_images

    label = engine_label(m.spec).split(" · ctx")[0]  # "llama.cpp · Q4_1", "transformers · FP32"
    engine, _, detail = label.partition(" · ")
    precision = detail if engine == "llama.cpp" and detail else m.spec.precision
    entry = _entry(ctx, m.id, "chat", m.spec, engine, precision, m.created)
    sees = m.spec.kind == "vision" or (engine == "llama.cpp" and sees_images(m.spec))  # GGUF: with a projector
    entry["input_modalities"] = ["text", "image"] if sees else ["text"]  # what messages may hold
    return entry


def speech_engine(spec: ModelSpec) -> str:
    """Which Whisper backend loads `spec` (as studio.models.loading.load_whisper decides)."""
    path = spec.path
    return (
        "faster-whisper"
        if spec.backend == "faster-whisper" or (path is not None and path.is_dir())
        else ("openai-whisper")
    )


def listed_models(ctx: AppContext) -> list[dict[str, Any]]:
    """Every model id a request can name: chat models (/v1/chat/completions, /v1/completions), the embedding models
    the studio holds (/v1/embeddings, which chat models serve too), image models
    (/v1/images/generations: the held ones and tiny-sd) and speech models (/v1/audio/transcriptions: whisper-1,
    the starter and the held ones). An id two kinds share is listed once, as the first kind."""
    from studio.api.audio import DEFAULT_MODEL, served_speech_models
    from studio.api.images import image_models
    from studio.engines.image import TINY_SOURCE

    out: dict[str, dict[str, Any]] = {}
    for m in served_models(ctx):
        out.setdefault(m.id, model_object(ctx, m))
    images = [(name, spec) for name, spec, _ in image_models(ctx)]
    if TINY_SOURCE not in (name for name, _ in images):
        images.append((TINY_SOURCE, ctx.image.tiny_spec("fp16" if ctx.device == "cuda" else "fp32")))
    for name, spec in images:
        out.setdefault(name, _entry(ctx, name, "image", spec, "diffusers", spec.precision))
    from studio.api.embeddings import embedding_models

    for name, spec, created in embedding_models(ctx):
        out.setdefault(name, _entry(ctx, name, "embedding", spec, "transformers", spec.precision, created))
    seen: set[ModelSpec] = set()  # a speech spec is listed by its first id (and also as whisper-1)
    for name, spec in served_speech_models(ctx).items():
        if "#" in name or (name != DEFAULT_MODEL and spec in seen):
            continue  # the manager's keys, and a second name (the display label) of a listed model
        if name != DEFAULT_MODEL:
            seen.add(spec)
        out.setdefault(name, _entry(ctx, name, "speech", spec, speech_engine(spec), spec.precision))
    return list(out.values())


def find_model(ctx: AppContext, model_id: str) -> dict[str, Any]:
    """The /v1/models object for `model_id` (a listed id, or a chat model's alias); unknown -> 404."""
    for obj in listed_models(ctx):
        if obj["id"] == model_id:
            return obj
    from studio.api.embeddings import find_embedding_model

    found = find_embedding_model(ctx, model_id)  # by its manager key or source too
    if found is not None:
        name, spec, created = found
        return _entry(ctx, name, "embedding", spec, "transformers", spec.precision, created)
    try:
        return model_object(ctx, resolve_model(ctx, model_id))
    except ApiError:
        raise ApiError(
            404,
            f"The model '{model_id}' is not available in ML Studio. GET /v1/models lists the chat, embedding, image "
            "and speech models requests can name; load others in the Models tab first.",
            param="model",
            code="model_not_found",
        ) from None


# ----- generation ------------------------------------------------------------------------------------------


class Reply:
    """One reply generated on its own thread, handed to the event loop as ("chunk", ChatChunk), ("error", exc)
    and a last ("end", None). `cancel()` ends generation at the next token."""

    def __init__(self, produce: Callable[[Callable[[], bool]], Iterator[ChatChunk]], label: str) -> None:
        self.stop = threading.Event()
        self.why = ""  # why it was cancelled, for the log
        self.label = label
        self.last: ChatChunk | None = None  # the last chunk, once collected
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._checked = time.monotonic()  # when the client was last seen connected
        threading.Thread(target=self._run, args=(produce,), name="api-chat", daemon=True).start()

    def cancel(self, why: str) -> None:
        if not self.stop.is_set():
            self.why = why
            self.stop.set()

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the server's loop is closed (shutting down): nobody is listening
            pass

    def _run(self, produce: Callable[[Callable[[], bool]], Iterator[ChatChunk]]) -> None:
        try:  # the engine's generation lane makes this wait while another reply (page or API) runs
            for chunk in produce(self.stop.is_set):
                self._put(("chunk", chunk))
                if chunk.stats:
                    self._log(chunk.stats)
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers with it
            self._put(("error", exc))
        finally:
            self._put(("end", None))

    def _log(self, st: ChatStats) -> None:
        why = f" ({self.why})" if self.why else ""
        log.info(
            "OpenAI API: %s: %d tokens in %.1f s, %s%s", self.label, st.new_tokens, st.seconds, st.finish_reason, why
        )

    async def next(self, request: fastapi.Request | None = None) -> tuple[str, Any]:
        """The next item. With `request`, a client that goes away while we wait stops the reply."""
        if request is None:
            return await self._queue.get()
        while True:
            wait = self._checked + DISCONNECT_POLL_S - time.monotonic()
            if wait <= 0:  # checked on a clock, not only when idle: chunks may come faster than the poll
                self._checked = time.monotonic()
                if not self.stop.is_set() and await request.is_disconnected():
                    self.cancel("the client left")
                continue
            try:
                return await asyncio.wait_for(self._queue.get(), wait)
            except asyncio.TimeoutError:
                pass


class StopCut:
    """Cuts the reply before the first stop sequence. While streaming it holds back a tail that may be the
    start of one, so no part of a stop sequence is ever sent."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.hit = False

    def feed(self, delta: str) -> str:
        """Add generated text; return the part that can be sent now."""
        if self.hit:
            return ""
        self.text += delta
        end = len(self.text)
        cuts = [i for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]
        if cuts:
            self.hit, end = True, min(cuts)
            self.text = self.text[:end]
        else:
            for s in self.stops:  # a tail that could still grow into a stop sequence waits for more text
                for k in range(min(len(s) - 1, len(self.text) - self.sent), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    def flush(self) -> str:
        """What was held back, once the reply has ended."""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


def finish_reason(cut: StopCut, stats: ChatStats | None) -> str:
    return "length" if not cut.hit and stats is not None and stats.finish_reason == "length" else "stop"


def usage(stats: ChatStats | None) -> dict[str, int]:
    prompt, completion = (stats.prompt_tokens, stats.new_tokens) if stats else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----- routes ----------------------------------------------------------------------------------------------


def _v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def register_errors(app: fastapi.FastAPI) -> None:
    """Errors FastAPI raises itself (404 for an unknown path, 405 for a wrong method, 422) answer in OpenAI's
    shape under /v1; everywhere else (Gradio's routes, /sdapi) they keep FastAPI's `{"detail": ...}`."""
    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_http(request: fastapi.Request, exc: HTTPException) -> fastapi.Response:
        if not _v1(request.url.path):
            return await http_exception_handler(request, exc)
        if exc.status_code == 404:
            message, code = f"There is no route {request.url.path} in ML Studio's OpenAI-compatible API.", "not_found"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (
                f"; use {allowed}." if allowed else "."
            )
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        response = ApiError(exc.status_code, message, code=code).response()
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def on_validation(request: fastapi.Request, exc: RequestValidationError) -> fastapi.Response:
        if not _v1(request.url.path):
            return await request_validation_exception_handler(request, exc)
        return ApiError(400, f"The request cannot be read: {str(exc)[:200]}").response()

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Add /v1/models and /v1/chat/completions to `app` (before Gradio adds its own routes)."""
    register_errors(app)
    # NOTE: Gradio's login (--auth, --share) does not cover these routes; API keys are a later issue.

    @app.get("/v1/models")
    def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": listed_models(ctx)})

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> JSONResponse:
        try:
            return JSONResponse(find_model(ctx, model_id))
        except ApiError as exc:
            return exc.response()

    async def parsed(request: fastapi.Request, parse: Callable[[Any], Any]) -> tuple[Any, ServedModel]:
        """The request's JSON body read by `parse`, and the model it names; ApiError (400, 404) says what is wrong."""
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            raise bad_json(exc) from None
        if web_image_parts(body):  # fetched only for the owner's own requests, when the owner allows it
            host, headers = request_facts(request)
            allowed = ctx.config.allow_image_urls and not ctx.security.is_remote(host, headers)
            try:
                await asyncio.to_thread(fetch_image_urls, body, allowed)
            except InputError as exc:
                raise ApiError(400, str(exc), param="messages") from None
        req = parse(body)
        return req, resolve_model(ctx, req.model)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: fastapi.Request) -> fastapi.Response:
        try:
            req, served = await parsed(request, parse_request)
        except ApiError as exc:
            return exc.response()

        def producer(params: ChatParams) -> Callable[[Callable[[], bool]], Iterator[ChatChunk]]:
            def produce(should_stop: Callable[[], bool]) -> Iterator[ChatChunk]:
                return ctx.chat.stream(
                    served.spec, req.messages, params, adapter=served.adapter, should_stop=should_stop
                )

            return produce

        reply_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if req.stream:
            reply = Reply(producer(req.params), served.id)
            first = await reply.next(request)  # the load and the first token: their errors get a proper status
            if first[0] == "error":
                return api_error(first[1]).response()
            events = stream_events(reply, first, req, reply_id, created)
            weakref.finalize(events, reply.cancel, "the client left")  # also when the stream never started
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        choices, stats_all = [], []
        for i in range(req.n):  # one reply after another, each taking its turn in the lane
            reply = Reply(producer(nth_params(req.params, i)), served.id)
            result = await collect(reply, req.stops, request)
            if isinstance(result, ApiError):
                return result.response()
            text, tokens, finish, stats = result
            logprobs = {"content": chat_logprobs(tokens)} if req.params.top_logprobs >= 0 else None
            message, finish = reply_message(text, finish, req)
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs})
            stats_all.append(stats)
        body = {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": choices,
            "usage": usage_of(stats_all),
        }
        return JSONResponse(body)

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request) -> fastapi.Response:
        from studio.api.completions import parse_completion, text_completion

        try:
            req, served = await parsed(request, parse_completion)
        except ApiError as exc:
            return exc.response()
        return await text_completion(ctx, served, req, request)


def reply_message(text: str, finish: str, req: CompletionRequest) -> tuple[dict[str, Any], str]:
    """The assistant message of a reply and its finish reason: tool_calls ("tool_calls") when the reply is a
    well-formed call of the offered tools, else the text as it came."""
    parsed = parse_calls(text, list(req.tool_names)) if req.tool_names and finish != "length" else None
    if parsed is None:
        return {"role": "assistant", "content": text}, finish
    content, calls = parsed
    if not req.parallel_tool_calls:
        calls = calls[:1]
    return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"


def nth_params(params: ChatParams, i: int) -> ChatParams:
    """The params of reply i of n: with a fixed seed, seed + i (so the n replies differ, and repeat)."""
    return replace(params, seed=params.seed + i) if params.seed >= 0 and i else params


def usage_of(stats: list[ChatStats | None]) -> dict[str, int]:
    """Usage over several replies: the prompt counted once per distinct prompt as OpenAI does for n (the first
    reply's), the completions added up."""
    each = [usage(st) for st in stats]
    prompt = each[0]["prompt_tokens"] if each else 0
    completion = sum(u["completion_tokens"] for u in each)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def collect(
    reply: Reply, stops: tuple[str, ...], request: fastapi.Request, item: tuple[str, Any] | None = None
) -> tuple[str, list[TokenLogprob], str, ChatStats | None] | ApiError:
    """A whole reply: its text cut at the first stop sequence, its tokens (with logprobs, only those inside the
    kept text), the finish reason and the stats; or the ApiError it failed with. The last chunk is kept in
    `reply.last` (the prompt's tokens, for echo)."""
    cut, stats, tokens = StopCut(stops), None, []
    item = item or await reply.next(request)
    while item[0] != "end":
        kind, value = item
        if kind == "error":
            return api_error(value)
        if value.done:
            stats = value.stats
            reply.last = value
        if not cut.hit:
            tokens += value.tokens
        if not value.done:
            cut.feed(value.delta)
            if cut.hit:
                reply.cancel("stop sequence")
        item = await reply.next(request)
    cut.flush()
    if cut.hit:  # tokens past the stop sequence are not part of the reply
        kept, size = [], 0
        for t in tokens:
            if size >= len(cut.text):
                break
            kept.append(t)
            size += len(t.text)
        tokens = kept
    return cut.text, tokens, finish_reason(cut, stats), stats


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI's choices[i].logprobs.content."""
    return [
        {
            "token": t.text,
            "logprob": t.logprob,
            "bytes": _bytes(t.text),
            "top_logprobs": [{"token": text, "logprob": lp, "bytes": _bytes(text)} for _, text, lp in t.top],
        }
        for t in tokens
    ]


async def stream_events(
    reply: Reply, item: tuple[str, Any], req: CompletionRequest, reply_id: str, created: int
) -> AsyncIterator[str]:
    """chat.completion.chunk events: the role, content deltas, the finish reason, [usage,] then [DONE].
    When the client goes away Starlette cancels this generator, and `finally` stops the reply."""

    def chunk(delta: dict[str, str], finish: str | None = None, tokens: list[TokenLogprob] | None = None) -> str:
        logprobs = {"content": chat_logprobs(tokens)} if tokens else None
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return sse(
            {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [choice],
            }
        )

    cut, stats = StopCut(req.stops), None
    held = bool(req.tool_names)  # with tools the reply is held back until it is known to be text or calls
    try:
        yield chunk({"role": "assistant", "content": ""})
        while item[0] != "end":
            kind, value = item
            if kind == "error":  # after the first token: OpenAI's in-stream error event; the client raises it
                yield sse(api_error(value).body())
                return
            if value.done:
                stats = value.stats
                if value.tokens and not cut.hit:
                    yield chunk({"content": ""}, tokens=value.tokens)
            else:
                text = cut.feed(value.delta)
                if not held and (text or (value.tokens and not cut.hit)):
                    yield chunk({"content": text}, tokens=None if cut.hit else value.tokens)
                if cut.hit:
                    reply.cancel("stop sequence")
            item = await reply.next()
        tail = cut.flush()
        finish = finish_reason(cut, stats)
        if held:
            message, finish = reply_message(cut.text, finish, req)
            if "tool_calls" in message:
                if message["content"]:
                    yield chunk({"content": message["content"]})
                calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
                yield chunk({"tool_calls": calls})
            elif cut.text:
                yield chunk({"content": cut.text})
        elif tail:
            yield chunk({"content": tail})
        yield chunk({}, finish)
        if req.include_usage:
            yield sse(
                {
                    "id": reply_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": req.model,
                    "choices": [],
                    "usage": usage(stats),
                }
            )
        yield "data: [DONE]\n\n"
    finally:  # reached early when Starlette cancels us because the client left
        reply.cancel("the client left")
