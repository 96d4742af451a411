"""Chat: a transformers causal LM on the shared model manager, streaming token by token with cooperative stop.

No gradio here. The UI and the OpenAI-compatible API both call `ChatEngine.stream()`.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.engines import llamacpp
from studio.engines.chat_defaults import SamplingDefaults, sampling_defaults
from studio.engines.lane import GpuLane
from studio.engines.llamacpp import LlamaCppLM, is_llamacpp, llamacpp_spec, transformers_twin
from studio.engines.vision import is_image_part
from studio.errors import InputError, ModelLoadError, StudioError, StudioOutOfMemory, is_oom
from studio.models.estimate import Workload
from studio.models.gguf_vision import takes_images as takes_gguf_images
from studio.models.specs import ModelSpec
from studio.models.vision import is_vision_source, vision_spec
from studio.text import blank, fmt_bytes, invalid_text

if TYPE_CHECKING:  # the fine-tune worker imports this module for its template: it needs no manager
    from studio.models.manager import ModelManager
    from studio.models.records import ModelRecord

ROLES = ("system", "user", "assistant")
DEFAULT_CONTEXT = 4096
# Per request at most. A 4096-token context keeps a few hundred short messages, so these refuse only conversations
# that could never be sent whole; they bound what one request costs to check and trim before anyone else's turn.
MAX_MESSAGES = 2000
MAX_PROMPT_BYTES = 1024**2  # UTF-8 bytes of message text (1 MB: a quarter of a million tokens or so)
MAX_TOP_LOGPROBS = 20  # alternatives per token at most, as OpenAI
UPDATE_INTERVAL = 0.04  # seconds between streamed updates at most (25 a second): smooth to read, cheap to produce
# Used when a model has no chat template of its own (ChatML, which most instruct models understand).
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatParams:
    """How to sample one reply."""

    max_new_tokens: int = 512  # upper bound on the reply's length, in tokens
    temperature: float = 0.7  # 0 = greedy (deterministic); higher = more varied
    top_p: float = 0.9  # nucleus sampling: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 50  # keep only the k most likely tokens (0 = no limit)
    repetition_penalty: float = 1.1  # > 1 discourages repeating tokens
    seed: int = -1  # -1 = a random seed (the one used is reported)
    context_len: int = 0  # tokens of prompt + reply kept (0 = the model's own limit, at most 4096)
    ignore_eos: bool = False  # keep generating past the end-of-sequence token (benchmarks)
    kv_cache_type: str = "f16"  # llama.cpp: f16, q8_0 or q4_0 (quantized types need flash attention)
    flash_attn: bool = False  # llama.cpp: flash attention
    response_format: dict | None = None  # OpenAI's: {"type": "json_object"} or a json_schema (constrained decoding)
    presence_penalty: float = 0.0  # OpenAI's additive penalties (-2..2): once per token seen / per occurrence
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias -100..100) added to the logits (transformers)
    top_logprobs: int = -1  # -1: no logprobs; 0..20: each new token's logprob and that many alternatives
    echo_logprobs: bool = False  # raw prompts: also the prompt tokens' logprobs (the first one's is None)
    raw_prompt: bool = False  # a completion of raw text or token ids (no chat template); max_new_tokens may be 0
    tools: tuple[dict, ...] = ()  # OpenAI's function tools, rendered into the prompt (studio/engines/tools.py)

    def check_inputs(self) -> None:
        """Raise InputError naming the first setting that cannot work."""
        if not (0 if self.raw_prompt else 1) <= self.max_new_tokens <= 32768:
            raise InputError(f"Max new tokens must be between 1 and 32768, not {self.max_new_tokens}.")
        if not 0 <= self.temperature <= 5:
            raise InputError(f"Temperature must be between 0 and 5, not {self.temperature:g}.")
        if not 0 < self.top_p <= 1:
            raise InputError(f"Top-p must be more than 0 and at most 1, not {self.top_p:g}.")
        if self.top_k < 0:
            raise InputError(f"Top-k must be 0 (off) or more, not {self.top_k}.")
        if not 0.5 <= self.repetition_penalty <= 3:
            raise InputError(f"Repetition penalty must be between 0.5 and 3, not {self.repetition_penalty:g}.")
        if self.seed < -1 or self.seed >= 2**63:
            raise InputError(f"Seed must be -1 (random) or a whole number from 0, not {self.seed}.")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2 <= value <= 2:
                raise InputError(f"{name.replace('_', ' ').capitalize()} must be between -2 and 2, not {value:g}.")
        for token, bias in self.logit_bias:
            if token < 0 or not -100 <= bias <= 100:
                raise InputError(f"Logit bias must map token ids (0 or more) to -100..100, not {token}: {bias:g}.")
        if not -1 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(f"Top logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {self.top_logprobs}.")
        if self.context_len < 0:
            raise InputError(f"Context length must be 0 (the model's) or more, not {self.context_len}.")
        if self.kv_cache_type not in llamacpp.KV_TYPES:
            raise InputError(
                f"KV cache type must be one of {', '.join(llamacpp.KV_TYPES)}, not {self.kv_cache_type!r}."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class ChatStats:
    """How a reply went."""

    prompt_tokens: int
    new_tokens: int
    seconds: float  # from the request to the last token
    ttft: float  # time to first token, seconds
    seed: int
    finish_reason: str  # "stop" (the model ended), "length" (max new tokens), "stopped" (the user stopped)

    @property
    def tokens_per_s(self) -> float:
        gen = self.seconds - self.ttft
        return (self.new_tokens - 1) / gen if self.new_tokens > 1 and gen > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens · {self.tokens_per_s:.1f} tok/s · first token {self.ttft * 1000:.0f} ms · "
            f"seed {self.seed} · {self.finish_reason}"
        )


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its log-probability under the model's raw logits (log_softmax before any penalty,
    temperature, top-k/top-p or bias), and the most likely alternatives at that step."""

    id: int
    text: str
    logprob: float | None  # None for a prompt's first token (nothing predicts it)
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob), most likely first


@dataclass
class ChatChunk:
    """One step of a streamed reply."""

    text: str  # the reply so far
    delta: str  # what this step added
    done: bool = False
    stats: ChatStats | None = None  # set on the last chunk
    notice: str = ""  # e.g. that older turns were dropped to fit the context
    tokens: list[TokenLogprob] = field(default_factory=list)  # with top_logprobs >= 0: the tokens this step added
    prompt_tokens: list[TokenLogprob] | None = None  # with echo_logprobs, on the last chunk: the prompt's tokens


def check_messages(messages: list[dict]) -> list[dict[str, str]]:
    """Validate an OpenAI-style message list (system, user, assistant with optional tool_calls, tool); the last
    message must be the user's and not empty, or a tool result."""
    if not messages:
        raise InputError("Type a message first.")
    if len(messages) > MAX_MESSAGES:
        raise InputError(
            f"The conversation has {len(messages)} messages; one request takes at most {MAX_MESSAGES}.",
            "Start a new chat, or send only the recent messages.",
        )
    clean, size, n_images = [], 0, 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise InputError(f"Message {i + 1} needs a 'role' and a 'content'.")
        role, content = m["role"], m.get("content")
        calls = _tool_calls(m, i) if role == "assistant" else None
        if "content" not in m and not calls:
            raise InputError(f"Message {i + 1} needs a 'role' and a 'content'.")
        if content is None and calls:
            content = ""
        if role not in ROLES and role != "tool":
            raise InputError(f"Message {i + 1} has role {role!r}; use system, user, assistant or tool.")
        images = []
        for img in m.get("images") or ():  # a message checked before (its images decoded): check them again
            images.append(_message_image({"type": "image", "image": img}, role, i, len(images), n_images))
            n_images += 1
        if isinstance(content, list):  # OpenAI content parts: the text ones, and the images (vision models)
            texts = []
            for j, part in enumerate(content):
                if is_image_part(part):
                    images.append(_message_image(part, role, i, len(images), n_images))
                    n_images += 1
                    continue
                text = part.get("text", "") if isinstance(part, dict) else ""
                if not isinstance(text, str):
                    shown = "null" if text is None else repr(text)[:40]
                    raise InputError(f"Message {i + 1}'s content part {j + 1} has 'text' {shown}; it must be text.")
                texts.append(text)
            content = "".join(texts)
        if not isinstance(content, str):
            raise InputError(f"Message {i + 1}'s content must be text.")
        reason = invalid_text(content, f"Message {i + 1}")
        if reason:
            raise InputError(reason)
        size += len(content.encode("utf-8")) + (len(json.dumps(calls).encode("utf-8")) if calls else 0)
        if size > MAX_PROMPT_BYTES:
            raise InputError(
                f"The messages' text passes {fmt_bytes(MAX_PROMPT_BYTES)} at message {i + 1}; "
                f"one request takes at most {fmt_bytes(MAX_PROMPT_BYTES)} of text.",
                "Start a new chat, or send shorter or fewer messages.",
            )
        turn = {"role": role, "content": content}
        if images:
            turn["images"] = images
        if calls:
            turn["tool_calls"] = calls
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if isinstance(m.get(key), str):
                    turn[key] = m[key]
        clean.append(turn)
    if clean[-1]["role"] == "tool":  # a conversation may end on the results of the assistant's tool calls
        return clean
    if clean[-1]["role"] != "user":
        raise InputError("The last message must be the user's.")
    if blank(clean[-1]["content"]) and not clean[-1].get("images"):
        raise InputError("Type a message first: the message is empty.")
    return clean


def _message_image(part: dict, role: str, i: int, j: int, seen: int) -> Any:
    """The PIL image of content part `part` (the j-th image of message i), checked (studio/engines/vision.py)."""
    from studio.engines.vision import MAX_IMAGES, image_from_part

    what = f"Message {i + 1}'s image {j + 1}"
    if role != "user":
        raise InputError(f"{what}: only user messages may hold images, not {role} ones.")
    if seen >= MAX_IMAGES:
        raise InputError(f"The conversation has more than {MAX_IMAGES} images; one request takes at most that many.")
    return image_from_part(part, what)


def has_images(messages: list[dict]) -> bool:
    """Whether any checked message holds images."""
    return any(m.get("images") for m in messages)


def _tool_calls(m: dict, i: int) -> list[dict] | None:
    """An assistant message's OpenAI `tool_calls` ([{id, type, function: {name, arguments}}]), checked."""
    calls = m.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        raise InputError(f"Message {i + 1}'s 'tool_calls' must be a list.")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InputError(f"Message {i + 1}'s tool call {j + 1} needs a 'function' with a 'name'.")
        args = fn.get("arguments", "{}")
        if not isinstance(args, (str, dict)):
            raise InputError(f"Message {i + 1}'s tool call {j + 1} has 'arguments' that are not a JSON string.")
        out.append({"id": str(call.get("id", f"call_{j}")), "type": "function", "function": {**fn, "arguments": args}})
    return out or None


class PromptStopped(Exception):
    """Stop was asked for while the prompt was being prepared."""


def _turn_starts(turns: list[dict[str, str]]) -> list[int]:
    """Where the conversation starts after dropping 0, 1, 2, ... of its oldest turns: a user message with the
    assistant's answer to it (or one message alone), and never starting on anything but a user message."""
    starts, s, n = [0], 0, len(turns)
    while n - s > 1:
        s += 2 if n - s > 2 and turns[s + 1]["role"] == "assistant" else 1
        while s < n - 1 and turns[s]["role"] != "user":
            s += 1
        starts.append(s)
    return starts


class _TokenStreamer:
    """Receives token ids from `generate` (transformers' streamer protocol) and hands them to the consumer."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.ended = threading.Event()  # set with the last item: a consumer pausing between updates wakes at once
        self.should_stop = should_stop
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        self.queue.put(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        self.queue.put(("end", None))
        self.ended.set()


class _GenerateThread:
    """One long-lived thread that runs the engine's generate calls, one after another. A fresh thread per reply
    would build a new OpenMP thread team for torch every time: about 4% of a small model's tokens/s on 2 cores."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> threading.Event:
        """Run `job` (which must not raise) on the thread; the event is set when it has returned."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="chat-generate", daemon=True)
                self._thread.start()
        self._jobs.put((job, done))
        return done

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()
                del job, done  # the finished reply's closure holds the model: keep nothing until the next one


def _stopping_criteria(should_stop: Callable[[], bool]):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __init__(self) -> None:
            self._answers: dict[tuple, Any] = {}  # (batch, device, stop) -> a tensor made once, not per token

        def __call__(self, input_ids, scores, **kwargs):  # checked after every token
            import torch

            key = (input_ids.shape[0], input_ids.device, bool(should_stop()))
            answer = self._answers.get(key)
            if answer is None:
                answer = self._answers[key] = torch.full(key[:1], key[2], dtype=torch.bool, device=key[1])
            return answer

    return StoppingCriteriaList([_Stop()])


def _penalties_processor(params: ChatParams, prompt_len: int):
    """OpenAI's presence/frequency penalties (over the tokens generated so far, as vLLM) and logit_bias, on the
    logits before temperature, top-k and top-p (transformers runs custom processors before its warpers); None
    when there is nothing to do."""
    presence, frequency, bias = params.presence_penalty, params.frequency_penalty, params.logit_bias
    if not (presence or frequency or bias):
        return None
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Penalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_len:]
            if generated.shape[1] and (presence or frequency):
                counts = torch.zeros_like(scores).scatter_add_(
                    1, generated, torch.ones(generated.shape, dtype=scores.dtype, device=scores.device)
                )
                scores = scores - frequency * counts - presence * (counts > 0).to(scores.dtype)
            if bias:
                ids = torch.tensor([t for t, _ in bias if t < scores.shape[1]], device=scores.device)
                values = torch.tensor([b for t, b in bias if t < scores.shape[1]], dtype=scores.dtype)
                scores = scores.clone()
                scores[:, ids] += values.to(scores.device)
            return scores

    return LogitsProcessorList([_Penalties()])


def token_logprob(row: Any, token: int, k: int, text: Callable[[int], str]) -> TokenLogprob:
    """`token` and the `k` most likely tokens from one step's log-softmax `row` (a 1-D torch tensor or numpy
    array)."""
    import torch

    row = torch.as_tensor(row)
    top: tuple[tuple[int, str, float], ...] = ()
    if k:
        values, ids = torch.topk(row, min(k, row.shape[-1]))
        top = tuple((i, text(i), v) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, text(token), float(row[token]), top)


def _log_softmax_rows(logits: Any) -> Any:
    import torch

    return torch.log_softmax(torch.as_tensor(logits).float(), dim=-1)


def prompt_logprobs(ids: list[int], lsm: Any, k: int, text: Callable[[int], str]) -> list[TokenLogprob]:
    """The prompt's tokens with their logprobs: row j of `lsm` predicts token j + 1; the first token has none."""
    out = [TokenLogprob(ids[0], text(ids[0]), None)]
    out += [token_logprob(lsm[j - 1], ids[j], k, text) for j in range(1, len(ids))]
    return out


def _oom_mid_reply(spec: ModelSpec) -> StudioOutOfMemory:
    """Out of memory after the first token: not retried (a retry would rewrite what the user has read)."""
    return StudioOutOfMemory(
        f"Out of memory while {spec.name} was answering; the reply so far is kept.",
        "Lower max new tokens or the context length.",
    )


@dataclass
class ChatEngine:
    """Runs chat on models leased from the manager; keeps which LoRA adapters belong on which base model."""

    manager: ModelManager
    adapters: dict[str, dict[str, str]] = field(default_factory=dict)  # spec.key -> {adapter name: folder}
    lane: GpuLane = field(default_factory=GpuLane, repr=False)  # shared with the other engines in a studio
    _generator: _GenerateThread = field(default_factory=_GenerateThread, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ----- prompt ------------------------------------------------------------------------------------------

    @staticmethod
    def context_limit(lm: Any, params: ChatParams) -> int:
        if isinstance(lm, LlamaCppLM):  # llama.cpp fixed the context when it loaded (from these params)
            return lm.context
        config = lm.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config  # vision: the LM's
        model_max = int(getattr(config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
        return min(params.context_len or min(model_max, DEFAULT_CONTEXT), model_max)

    @classmethod
    def reply_room(cls, lm: Any, params: ChatParams) -> tuple[ChatParams, str]:
        """Max new tokens as the model's context allows: asked for the whole context or more (512 new tokens of a
        512-token model), the reply gets half of it, and a notice says so."""
        limit = cls.context_limit(lm, params)
        if params.max_new_tokens < limit:
            return params, ""
        room = max(1, limit // 2)
        notice = f"Max new tokens lowered from {params.max_new_tokens} to {room}: the context holds {limit} tokens."
        return replace(params, max_new_tokens=room), notice

    def fitted_prompt(
        self, lm: Any, messages: list[dict], params: ChatParams, should_stop: Callable[[], bool] = lambda: False
    ) -> tuple[list[int], str, ChatParams]:
        """`build_prompt` after `reply_room`: the prompt ids, the notices, and the params the reply runs with."""
        params, room = self.reply_room(lm, params)
        ids, notice = self.build_prompt(lm, messages, params, should_stop)
        return ids, " ".join(n for n in (room, notice) if n), params

    @staticmethod
    def _template_ids(lm: Any, messages: list[dict], tools: tuple[dict, ...] = ()) -> list[int]:
        """The conversation through the model's chat template; tools (and tool turns) as the template renders
        them, or in the Hermes format for a template that does not (studio/engines/tools.py)."""
        from studio.engines.tools import render

        if isinstance(lm, LlamaCppLM):
            messages, listed = render(messages, tools, lm.template_source)
            return lm.template_ids(messages, listed)
        if getattr(lm, "processor", None) is not None:  # a vision-language model: its processor's template
            from studio.engines.vision import vision_prompt

            if tools:
                raise InputError(
                    f"{Path(lm.source).name} is a vision model; the studio does not give tools to vision models yet.",
                    "Leave tools out, or use a text model for tool calls.",
                )
            return vision_prompt(lm, messages, Path(lm.source).name)
        tokenizer = lm.tokenizer
        own = getattr(tokenizer, "chat_template", None)
        template = None if own else FALLBACK_TEMPLATE
        messages, listed = render(messages, tools, own if isinstance(own, str) else None)
        out = tokenizer.apply_chat_template(
            messages, tools=listed, add_generation_prompt=True, tokenize=True, chat_template=template, return_dict=True
        )
        ids = out["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def build_prompt(
        self, lm: Any, messages: list[dict], params: ChatParams, should_stop: Callable[[], bool] = lambda: False
    ) -> tuple[list[int], str]:
        """Token ids of the templated conversation, dropping the oldest turns if it is longer than the context.

        Keeps the longest run of newest turns that fits, as if turns were dropped one at a time from the oldest. It
        is found from the newest end (1, 2, 4, ... turns, then a bisection), so a conversation far longer than the
        context costs a few templatings about the size of what is kept, not one per dropped turn. `should_stop` is
        asked before each templating; a stop raises PromptStopped."""
        limit = self.context_limit(lm, params)
        budget = limit - params.max_new_tokens
        if budget <= 0:
            raise InputError(
                f"Max new tokens ({params.max_new_tokens}) must be smaller than the context ({limit} tokens)."
            )
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system) :]
        starts = _turn_starts(turns)  # starts[k]: the first turn kept after k drops

        def ids_from(k: int) -> list[int]:
            if should_stop():
                raise PromptStopped
            return self._template_ids(lm, system + turns[starts[k] :], params.tools)

        fit = len(starts) - 1  # the fewest turns: only the last message
        ids = ids_from(fit)
        if len(ids) > budget:
            count = getattr(ids, "image_tokens", 0)
            images = getattr(ids, "images", 0)
            of_them = f" ({count} of them for {images} image{'s' if images != 1 else ''})" if images else ""
            raise InputError(
                f"The message is {len(ids)} tokens with the template{of_them}, but the context holds "
                f"{limit} tokens including {params.max_new_tokens} for the reply.",
                "Send fewer images, shorten the message, lower max new tokens, or raise the context length."
                if images
                else "Shorten the message, lower max new tokens, or raise the context length.",
            )
        too_long, step = -1, 1  # starts[too_long] does not fit (-1: none known); starts[fit] does
        while fit - too_long > 1:
            k = max(fit - step, 0) if too_long < 0 else (fit + too_long) // 2
            candidate = ids_from(k)
            if len(candidate) <= budget:
                fit, ids, step = k, candidate, step * 2
            else:
                too_long = k
        dropped = starts[fit]
        notice = (
            (f"Dropped the {dropped} oldest message{'s' if dropped != 1 else ''} to fit the {limit}-token context.")
            if dropped
            else ""
        )
        return ids, notice

    # ----- models ------------------------------------------------------------------------------------------

    def load(self, spec: ModelSpec, workload: Workload | None = None, params: ChatParams | None = None) -> ModelRecord:
        """Load the model (with the adapters attached to it) and leave it loaded; its record afterwards. With `params`,
        the variant a reply with them runs on (llama.cpp's KV cache type and flash attention are load-time)."""
        params = params or ChatParams(context_len=workload.context_len if workload else 0)
        spec, _ = self.runtime_spec(spec, params)
        self._unload_other_variants(spec)
        with self.manager.acquire(spec, workload) as lease:
            self._sync_adapters(spec, lease.model)
        record = self.manager.record(spec.key)
        assert record is not None
        return record

    def waiting_for(self, spec: ModelSpec, params: ChatParams) -> str:
        """What a reply with `params` waits for before its first token: "convert" (the starter's one-time conversion
        into safetensors, then its load), "unpark" (back from CPU RAM), "load", or "" (loaded already)."""
        from studio.models.records import LOADED, PARKED

        spec, _ = self.runtime_spec(spec, params)
        record = self.manager.record(spec.key)
        if record is not None and record.state == LOADED:
            return ""
        if record is not None and record.state == PARKED:
            return "unpark"
        if spec.source_type == "starter" and not is_llamacpp(spec):
            from studio.models.starter import cache_root, is_converted

            if not is_converted(self.manager.load_options.cache_dir or cache_root() / "models"):
                return "convert"
        return "load"

    @staticmethod
    def sampling_defaults(spec: ModelSpec) -> SamplingDefaults:
        """The model's own sampling defaults (its generation_config.json or GGUF metadata), without loading it."""
        return sampling_defaults(spec)

    def is_loaded(self, spec: ModelSpec) -> bool:
        """Whether the model is loaded; for llama.cpp, with any context (each is its own spec)."""
        if not is_llamacpp(spec):
            return self.manager.is_loaded(vision_spec(spec).key)
        if self.attached(spec):
            return self.manager.is_loaded(transformers_twin(spec).key)
        return bool(self._variants(spec, loaded_only=True))

    def runtime_spec(self, spec: ModelSpec, params: ChatParams) -> tuple[ModelSpec, str]:
        """The spec that answers with `params`, and a notice when it is not the one picked. A llama.cpp model gets
        its load-time options (context, KV cache type, flash attention); with LoRA adapters attached it runs on the
        transformers path (llama.cpp does not run PEFT adapters)."""
        if not is_llamacpp(spec):
            return vision_spec(spec), ""  # a vision-language model is held as kind "vision"
        if self.attached(spec):
            return transformers_twin(spec), (
                f"{spec.name} answers through transformers while LoRA adapters are attached (llama.cpp runs the "
                "base alone; detach them to use llama.cpp again)."
            )
        return llamacpp_spec(spec, params.context_len, params.kv_cache_type, params.flash_attn), ""

    def _variants(self, spec: ModelSpec, *, loaded_only: bool = False) -> list[ModelSpec]:
        """The llama.cpp specs of the same file the manager holds (another context or KV type each)."""
        from studio.models.records import LOADED, PARKED

        states = (LOADED,) if loaded_only else (LOADED, PARKED)
        return [
            s
            for _rec, s in self.manager.models("chat", states)
            if is_llamacpp(s) and (s.source, s.source_type, s.device) == (spec.source, spec.source_type, spec.device)
        ]

    def _unload_other_variants(self, spec: ModelSpec) -> None:
        """Before a llama.cpp model loads with new options, the same file loaded with others goes (when idle)."""
        if not is_llamacpp(spec):
            return
        for other in self._variants(spec):
            if other.key != spec.key:
                record = self.manager.record(other.key)
                if record is not None and not record.leases:
                    try:
                        self.manager.unload(other.key)
                    except StudioError:  # leased meanwhile: it stays, the manager evicts it if room is needed
                        pass

    # ----- adapters ----------------------------------------------------------------------------------------

    def attach_adapter(self, spec: ModelSpec, folder: str | Path, name: str | None = None) -> str:
        """Attach a PEFT LoRA adapter to the resident base model (loading the base only if it is not loaded)."""
        folder = Path(folder).expanduser()
        if not (folder / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"{folder}: not a PEFT adapter (no adapter_config.json).",
                "Pick a folder written by the Fine-tune tab or by peft's save_pretrained.",
            )
        name = name or folder.name
        spec = transformers_twin(spec)  # adapters run on the transformers path
        with self._lock:
            self.adapters.setdefault(spec.key, {})[name] = str(folder)
        try:
            with self.manager.acquire(spec) as lease:
                self._sync_adapters(spec, lease.model)
        except Exception:
            with self._lock:
                self.adapters.get(spec.key, {}).pop(name, None)
            raise
        return name

    def detach_adapter(self, spec: ModelSpec, name: str) -> None:
        """Remove an adapter from the base model; the base weights are untouched."""
        spec = transformers_twin(spec)
        with self._lock:
            self.adapters.get(spec.key, {}).pop(name, None)
        lease = self.manager.lease_if_loaded(spec.key)
        if lease is not None:
            with lease:
                model = lease.model.model
                if name in (getattr(model, "peft_config", None) or {}):
                    model.delete_adapter(name)

    def attached(self, spec: ModelSpec) -> list[str]:
        with self._lock:
            return sorted(self.adapters.get(transformers_twin(spec).key, {}))

    def _sync_adapters(self, spec: ModelSpec, lm: Any) -> None:
        """Load wanted adapters that the (possibly reloaded) model lacks."""
        if isinstance(lm, LlamaCppLM):
            return
        with self._lock:
            wanted = dict(self.adapters.get(spec.key, {}))
        model = lm.model
        present = set(getattr(model, "peft_config", None) or {})
        for name, folder in wanted.items():
            if name not in present:
                try:
                    model.load_adapter(folder, adapter_name=name)
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    raise ModelLoadError(
                        f"Adapter {name} does not fit {spec.name}: {str(exc).splitlines()[0][:200]}",
                        "Attach adapters trained on this base model.",
                    ) from None

    @staticmethod
    def _use_adapter(lm: Any, name: str | None) -> None:
        if isinstance(lm, LlamaCppLM):
            if name:
                raise ModelLoadError(f"Adapter {name} is not attached to this model.")
            return
        model = lm.model
        if not getattr(model, "peft_config", None):
            if name:
                raise ModelLoadError(f"Adapter {name} is not attached.")
            return
        if name:
            if name not in model.peft_config:
                raise ModelLoadError(f"Adapter {name} is not attached to this model.")
            model.set_adapter(name)
            model.enable_adapters()
        else:
            model.disable_adapters()

    # ----- generation --------------------------------------------------------------------------------------

    def stream(
        self,
        spec: ModelSpec,
        messages: list[dict],
        params: ChatParams | None = None,
        *,
        adapter: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[ChatChunk]:
        """Stream a reply to `messages`; the last chunk has `done=True` and the stats. The partial reply of a
        stopped generation is kept (finish_reason "stopped")."""
        params = params or ChatParams()
        params.check_inputs()
        messages = check_messages(messages)
        if has_images(messages):
            self.check_takes_images(spec)

        def prepare(lm: Any, p: ChatParams, stop: Callable[[], bool]) -> tuple[list[int], str, ChatParams]:
            return self.fitted_prompt(lm, messages, p, stop)

        yield from self._stream_prepared(
            spec, prepare, replace(params, raw_prompt=False, echo_logprobs=False), adapter, should_stop
        )

    def stream_prompt(
        self,
        spec: ModelSpec,
        prompt: str | list[int],
        params: ChatParams | None = None,
        *,
        adapter: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[ChatChunk]:
        """Stream a completion of a raw prompt: text tokenized as it is (with the model's BOS if its tokenizer adds
        one), or token ids used as they are; no chat template, no trimming. max_new_tokens may be 0 (with
        `echo_logprobs`: scoring the prompt only)."""
        params = replace(params or ChatParams(), raw_prompt=True)
        params.check_inputs()
        if isinstance(prompt, str):
            reason = invalid_text(prompt, "The prompt")
            if reason:
                raise InputError(reason)
            if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
                raise InputError(f"The prompt passes {fmt_bytes(MAX_PROMPT_BYTES)}; one request takes at most that.")

        def prepare(lm: Any, p: ChatParams, stop: Callable[[], bool]) -> tuple[list[int], str, ChatParams]:
            ids = self.raw_ids(lm, prompt)
            limit = self.context_limit(lm, p)
            if not ids:
                raise InputError("The prompt is empty.")
            if len(ids) + p.max_new_tokens > limit:
                raise InputError(
                    f"The prompt is {len(ids)} tokens; the context holds {limit} tokens including "
                    f"{p.max_new_tokens} for the completion.",
                    "Shorten the prompt or lower max tokens.",
                )
            vocab = self.vocab_size(lm)
            if any(not 0 <= t < vocab for t in ids):
                raise InputError(f"The prompt's token ids must be between 0 and {vocab - 1}.")
            return ids, "", p

        yield from self._stream_prepared(spec, prepare, params, adapter, should_stop)

    def vision_models(self) -> list[ModelSpec]:
        """The vision-language models the manager holds (loaded or parked), most recently used first."""
        from studio.models.records import LOADED, PARKED

        held = [s for _rec, s in self.manager.models("vision", (LOADED, PARKED))]
        return held + [s for _rec, s in self.manager.models("chat", (LOADED, PARKED)) if takes_gguf_images(s)]

    def check_takes_images(self, spec: ModelSpec) -> None:
        """Raise InputError when `spec` cannot see images, naming it and the vision models that are loaded."""
        if (not is_llamacpp(spec) and is_vision_source(spec)) or takes_gguf_images(spec):
            return
        loaded = [s.name for s in self.vision_models()]
        tip = (
            f"Pick a vision model that is loaded: {', '.join(loaded)}."
            if loaded
            else "Load a vision model (one marked as taking images, such as Qwen2.5-VL), or send the text alone."
        )
        raise InputError(f"{spec.name} is a text-only model: it cannot see images.", tip)

    @staticmethod
    def raw_ids(lm: Any, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if isinstance(lm, LlamaCppLM):
            return lm.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        return list(lm.tokenizer(prompt)["input_ids"])

    @staticmethod
    def vocab_size(lm: Any) -> int:
        if isinstance(lm, LlamaCppLM):
            return int(lm.llm.n_vocab())
        return int(lm.model.get_output_embeddings().weight.shape[0])

    def _stream_prepared(
        self,
        spec: ModelSpec,
        prepare: Callable[[Any, ChatParams, Callable[[], bool]], tuple[list[int], str, ChatParams]],
        params: ChatParams,
        adapter: str | None,
        should_stop: Callable[[], bool],
    ) -> Iterator[ChatChunk]:
        t0 = time.perf_counter()
        spec, switched = self.runtime_spec(spec, params)
        if params.logit_bias and is_llamacpp(spec):
            raise InputError(
                f"{spec.name} runs through llama.cpp, where the studio does not apply logit_bias yet.",
                "Leave logit_bias out, or use a model that runs through transformers.",
            )
        if switched:
            for chunk in self._stream_spec(spec, prepare, params, adapter, should_stop, t0):
                chunk.notice = f"{switched} {chunk.notice}".strip()
                yield chunk
            return
        yield from self._stream_spec(spec, prepare, params, adapter, should_stop, t0)

    def _stream_spec(
        self,
        spec: ModelSpec,
        prepare: Callable[[Any, ChatParams, Callable[[], bool]], tuple[list[int], str, ChatParams]],
        params: ChatParams,
        adapter: str | None,
        should_stop: Callable[[], bool],
        t0: float,
    ) -> Iterator[ChatChunk]:
        try:  # before the lane: another reply may be running, and the tokenizer needs no turn on the device
            prepared = self._prepare_if_loaded(spec, prepare, params, should_stop)
        except PromptStopped:
            yield self._stopped(params, t0)
            return
        if not self.lane.wait(should_stop):  # stopped (or the client left) while another reply was running
            yield self._stopped(params, t0)
            return
        stopped = False
        try:
            yield from self._stream_locked(spec, prepare, params, adapter, should_stop, t0, prepared)
        except PromptStopped:  # while preparing the prompt of a model that was loaded only now
            stopped = True
        finally:
            self.lane.release()
        if stopped:
            yield self._stopped(params, t0)

    @staticmethod
    def _stopped(params: ChatParams, t0: float) -> ChatChunk:
        """The last chunk of a reply stopped before its first token."""
        seconds = time.perf_counter() - t0
        return ChatChunk(text="", delta="", done=True, stats=ChatStats(0, 0, seconds, seconds, params.seed, "stopped"))

    def _prepare_if_loaded(
        self, spec: ModelSpec, prepare: Callable, params: ChatParams, should_stop: Callable[[], bool]
    ) -> tuple[list[int], str, ChatParams] | None:
        """The prompt, its notice and the reply's params, made with the tokenizer of the model if it is loaded now
        (else None: made once the model is, in the lane). The lease is given back before the lane is waited for."""
        lease = self.manager.lease_if_loaded(spec.key)
        if lease is None:
            return None
        with lease:
            return prepare(lease.model, params, should_stop)

    def _stream_locked(
        self,
        spec: ModelSpec,
        prepare: Callable,
        params: ChatParams,
        adapter: str | None,
        should_stop: Callable[[], bool],
        t0: float,
        prepared: tuple[list[int], str, ChatParams] | None,
    ) -> Iterator[ChatChunk]:
        workload = Workload(context_len=params.context_len or 0)
        self._unload_other_variants(spec)
        with self.manager.acquire(spec, workload) as lease:
            lm = lease.model
            self._sync_adapters(spec, lm)
            self._use_adapter(lm, adapter)
            prompt_ids, notice, params = prepared or prepare(lm, params, should_stop)
            attempts = self.manager.oom_attempts(
                spec.name,
                exclude=spec.key,
                message=f"Out of memory while {spec.name} was answering, even after unloading idle models.",
                tip="Lower max new tokens or the context length, or use 4-bit precision.",
            )
            for attempt in attempts:  # out of memory before the first token: evict idle models, answer again
                with attempt:
                    yield from self._generate(spec, lm, prompt_ids, params, should_stop, t0, notice)

    def _generate(
        self,
        spec: ModelSpec,
        lm: Any,
        prompt_ids: list[int],
        params: ChatParams,
        should_stop: Callable[[], bool],
        t0: float,
        notice: str,
    ) -> Iterator[ChatChunk]:
        """One generate call in a worker thread, its tokens streamed back. Out of memory before the first token is
        raised as it came (the caller's ladder recovers and retries); after it, a StudioOutOfMemory that keeps the
        reply so far (a retry would rewrite what the user has read)."""
        if isinstance(lm, LlamaCppLM):
            yield from self._generate_llamacpp(spec, lm, prompt_ids, params, should_stop, t0, notice)
            return
        import torch

        model, tok = lm.model, lm.tokenizer
        device = next(model.parameters()).device
        seed = params.seed if params.seed >= 0 else random.randrange(2**31)
        torch.manual_seed(seed)
        k = max(params.top_logprobs, 0)

        def text_of(token: int) -> str:
            return tok.decode([token], skip_special_tokens=False)

        scored = None
        if params.echo_logprobs:  # one forward pass over the prompt: the raw logits at every position
            with torch.inference_mode():
                logits = model(torch.tensor([prompt_ids], device=device)).logits[0]
            scored = prompt_logprobs(prompt_ids, _log_softmax_rows(logits), k, text_of)
        if params.max_new_tokens == 0:  # scoring only
            now = time.perf_counter()
            stats = ChatStats(len(prompt_ids), 0, now - t0, now - t0, seed, "length")
            yield ChatChunk(text="", delta="", done=True, stats=stats, notice=notice, prompt_tokens=scored)
            return
        abandoned = threading.Event()  # set when the consumer goes away mid-reply: the worker stops too

        def stop_now() -> bool:
            return abandoned.is_set() or bool(should_stop())

        streamer = _TokenStreamer(stop_now)
        input_ids = torch.tensor([prompt_ids], device=device)
        eos = model.generation_config.eos_token_id or tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": params.max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": _stopping_criteria(stop_now),
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos_ids)),
            "eos_token_id": eos,
            "repetition_penalty": float(params.repetition_penalty),
        }
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_new_tokens
        for name, value in (getattr(prompt_ids, "inputs", None) or {}).items():  # a vision model's image tensors
            if name == "pixel_values" and value.is_floating_point():
                value = value.to(device=device, dtype=model.dtype)
            kwargs[name] = value.to(device) if hasattr(value, "to") else value
        processors = _penalties_processor(params, len(prompt_ids))
        if params.response_format:  # constrained decoding (llguidance): after the penalties, before the warpers
            from transformers import LogitsProcessorList

            from studio.engines import constrain

            vocab = int(model.get_output_embeddings().weight.shape[0])
            grammar = constrain.logits_processor(params.response_format, tok, vocab, eos_ids, len(prompt_ids))
            processors = LogitsProcessorList([*(processors or []), grammar])
        if processors is not None:
            kwargs["logits_processor"] = processors
        rows: list = []  # with logprobs: the log-softmax of the raw logits of each step (step i chose token i)
        hook = None
        if params.top_logprobs >= 0:

            def record(_module: Any, _inputs: Any, output: Any) -> None:
                rows.append(torch.log_softmax(output[0, -1].float(), dim=-1))

            hook = model.get_output_embeddings().register_forward_hook(record)
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=float(params.temperature),  # transformers refuses an int temperature (ValueError)
                top_p=float(params.top_p),
                top_k=params.top_k or None,
            )
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                failure.append(exc)
                streamer.end()
            finally:
                if hook is not None:
                    hook.remove()

        done = self._generator.submit(work)
        ids: list[int] = []
        text, ttft, ended_by_eos = "", 0.0, False
        line_start, line_len = 0, 0
        step, new_tokens = 0, []  # with logprobs: the steps consumed, the tokens not yet handed out
        woke = 0.0
        try:
            while True:
                items = [streamer.queue.get()]
                if ttft:  # after the first token, wake at most every UPDATE_INTERVAL: fewer thread switches that
                    # would steal a core from generate's math threads; tokens that came meanwhile go out together
                    pause = UPDATE_INTERVAL - (time.perf_counter() - woke)
                    if pause > 0 and items[0][0] != "end":
                        streamer.ended.wait(pause)  # but not past the end of the reply
                woke = time.perf_counter()
                while ttft and not streamer.queue.empty():  # tokens that came meanwhile: decode them in one go
                    items.append(streamer.queue.get_nowait())  # (the first token goes out alone, at once)
                if not ttft and items[0][0] == "tokens":
                    ttft = time.perf_counter() - t0
                for _kind, value in items:
                    for token in value or ():
                        if hook is not None and step < len(rows):
                            if token not in eos_ids:
                                new_tokens.append(token_logprob(rows[step], token, k, text_of))
                            rows[step] = None  # not kept once read
                        step += 1
                        if token in eos_ids:
                            ended_by_eos = True
                        else:
                            ids.append(token)
                finished = items[-1][0] == "end"
                if finished and len(items) == 1:
                    break
                # decode only the current line (not the whole reply) per token: constant cost per token
                line = tok.decode(ids[line_start:], skip_special_tokens=True)
                if line.endswith("\ufffd") and not finished:  # an incomplete character: wait for the next token
                    continue
                delta = line[line_len:]
                if line.endswith("\n"):
                    line_start, line_len = len(ids), 0
                else:
                    line_len = len(line)
                if delta or new_tokens:
                    text += delta
                    yield ChatChunk(text=text, delta=delta, notice=notice, tokens=new_tokens)
                    new_tokens = []
                if finished:
                    break
        finally:
            if not done.is_set():
                abandoned.set()
            done.wait()
        if failure:
            exc = failure.pop()
            if is_oom(exc) and ids:
                raise _oom_mid_reply(spec) from None
            raise exc
        now = time.perf_counter()  # the reply is complete; the tidy decode below is not generation time
        text = tok.decode(ids, skip_special_tokens=True)
        reason = "stop" if ended_by_eos else ("stopped" if should_stop() else "length")
        stats = ChatStats(
            prompt_tokens=len(prompt_ids),
            new_tokens=len(ids) + int(ended_by_eos),
            seconds=now - t0,
            ttft=ttft or now - t0,
            seed=seed,
            finish_reason=reason,
        )
        yield ChatChunk(
            text=text, delta="", done=True, stats=stats, notice=notice, tokens=new_tokens, prompt_tokens=scored
        )

    def _generate_llamacpp(
        self,
        spec: ModelSpec,
        lm: LlamaCppLM,
        prompt_ids: list[int],
        params: ChatParams,
        should_stop: Callable[[], bool],
        t0: float,
        notice: str,
    ) -> Iterator[ChatChunk]:
        """Tokens from llama.cpp, in this thread (its C calls release the GIL). Stop is asked after every token;
        updates go out at most every UPDATE_INTERVAL (the first at once), as on the transformers path."""
        seed = params.seed if params.seed >= 0 else random.randrange(2**31)
        k = max(params.top_logprobs, 0)

        def text_of(token: int) -> str:
            return lm.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

        scored = None
        if params.echo_logprobs:
            scored = prompt_logprobs(prompt_ids, _log_softmax_rows(lm.prompt_logits(prompt_ids)), k, text_of)
        if params.max_new_tokens == 0:
            now = time.perf_counter()
            stats = ChatStats(len(prompt_ids), 0, now - t0, now - t0, seed, "length")
            yield ChatChunk(text="", delta="", done=True, stats=stats, notice=notice, prompt_tokens=scored)
            return
        grammar = llamacpp.grammar_for(params.response_format)
        decode = llamacpp.utf8_decoder()
        text, pending, ttft, count, last_out = "", "", 0.0, 0, 0.0
        ended = stopped = False
        tokens = lm.tokens(
            prompt_ids,
            max_new_tokens=params.max_new_tokens,
            temperature=float(params.temperature),
            top_p=float(params.top_p),
            top_k=params.top_k,
            repetition_penalty=float(params.repetition_penalty),
            presence_penalty=float(params.presence_penalty),
            frequency_penalty=float(params.frequency_penalty),
            seed=seed,
            ignore_eos=params.ignore_eos,
            grammar=grammar,
            # a chosen seed gives the same reply every time: no cached prefix (nor after scoring the prompt)
            reuse_prefix=params.seed < 0 and not params.echo_logprobs,
            logits=params.top_logprobs >= 0,
        )
        new_tokens: list[TokenLogprob] = []
        try:
            for token, piece, end, logits in tokens:
                if logits is not None and not end:
                    new_tokens.append(token_logprob(_log_softmax_rows(logits), token, k, text_of))
                count += 1
                now = time.perf_counter()
                ttft = ttft or now - t0
                ended = ended or (end and not params.ignore_eos)
                delta = decode(piece, False) if piece else ""
                text, pending = text + delta, pending + delta
                if (pending or new_tokens) and (last_out == 0.0 or now - last_out >= UPDATE_INTERVAL):
                    yield ChatChunk(text=text, delta=pending, notice=notice, tokens=new_tokens)
                    pending, last_out, new_tokens = "", time.perf_counter(), []
                if should_stop():
                    stopped = not ended
                    break
        except Exception as exc:
            if is_oom(exc) and count:
                raise _oom_mid_reply(spec) from None
            raise
        finally:
            tokens.close()
        now = time.perf_counter()
        rest = decode(b"", True)
        text, pending = text + rest, pending + rest
        if pending or new_tokens:
            yield ChatChunk(text=text, delta=pending, notice=notice, tokens=new_tokens)
        reason = "stop" if ended else ("stopped" if stopped else "length")
        stats = ChatStats(
            prompt_tokens=len(prompt_ids),
            new_tokens=count,
            seconds=now - t0,
            ttft=ttft or now - t0,
            seed=seed,
            finish_reason=reason,
        )
        yield ChatChunk(text=text, delta="", done=True, stats=stats, notice=notice, prompt_tokens=scored)

    def complete(
        self,
        spec: ModelSpec,
        messages: list[dict],
        params: ChatParams | None = None,
        *,
        adapter: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ChatChunk:
        """The whole reply at once (the last chunk of `stream`)."""
        chunks = self.stream(spec, messages, params, adapter=adapter, should_stop=should_stop)
        *_, last = chunks
        return last
