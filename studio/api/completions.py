"""POST /v1/completions: OpenAI's legacy text completions on every chat model, with no chat template.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists (each prompt is a choice);
text is tokenized as it is (with the model's BOS when its tokenizer adds one), token ids are used as they are.
Fields: max_tokens (0 allowed: with echo and logprobs that scores the prompt only, as lm-evaluation-harness's
`local-completions` loglikelihood asks), temperature, top_p, top_k, seed, stop, n, presence_penalty,
frequency_penalty, logit_bias (transformers models), user, `echo` (the prompt prepended; with logprobs, the
prompt tokens' logprobs, the first one null, as vLLM and llama.cpp's server return them), `logprobs` (0..5:
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`) and `stream` (text_completion chunks, then
[DONE]). Logprobs are the log-softmax of the model's raw logits (before penalties, temperature, top-k/top-p).
The same models, lane, key, limits and disconnect handling as /v1/chat/completions (studio/api/openai.py).
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.responses import JSONResponse, StreamingResponse

from studio.api.openai import (
    MAX_LEGACY_LOGPROBS,
    MAX_PROMPTS,
    ApiError,
    Reply,
    ServedModel,
    StopCut,
    _field,
    _params,
    _sampling,
    _stops,
    api_error,
    collect,
    finish_reason,
    nth_params,
    sse,
    usage,
)
from studio.engines.chat import ChatChunk, ChatParams, TokenLogprob

if TYPE_CHECKING:
    from studio.context import AppContext


@dataclass(frozen=True)
class TextRequest:
    model: str
    prompts: list[str | list[int]]
    params: ChatParams
    n: int
    stream: bool
    include_usage: bool
    stops: tuple[str, ...]
    echo: bool
    logprobs: int | None  # None: no logprobs


def _prompts(raw: Any) -> list[str | list[int]]:
    def ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(raw, str):
        prompts: list = [raw]
    elif ids(raw):
        prompts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(p, str) or ids(p) for p in raw):
        prompts = list(raw)
    else:
        raise ApiError(
            400,
            "'prompt' is required: a string, a list of strings, a list of token ids, or a list of such lists.",
            param="prompt",
        )
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(
            400, f"'prompt' holds {len(prompts)} prompts; one request takes at most {MAX_PROMPTS}.", param="prompt"
        )
    if any(isinstance(p, str) and not p for p in prompts):
        raise ApiError(400, "'prompt' is empty.", param="prompt")
    return prompts


def parse_completion(body: Any) -> TextRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' is required: one of the ids GET /v1/models lists.", param="model")
    for name, neutral in (("suffix", ""), ("best_of", 1)):  # not done: refused, never ignored
        if body.get(name) not in (None, neutral):
            raise ApiError(400, f"'{name}' is not supported; leave it out.", param=name)
    given, n, stream = _sampling(body, min_tokens=0)
    given.setdefault("max_new_tokens", 16)  # OpenAI's default for completions
    logprobs = _field(body, "logprobs", (int,), f"a whole number from 0 to {MAX_LEGACY_LOGPROBS}")
    if logprobs is not None and not 0 <= logprobs <= MAX_LEGACY_LOGPROBS:
        raise ApiError(
            400, f"'logprobs' must be between 0 and {MAX_LEGACY_LOGPROBS}, not {logprobs}.", param="logprobs"
        )
    echo = bool(_field(body, "echo", (bool,), "true or false"))
    if logprobs is not None:
        given["top_logprobs"] = logprobs
    given["echo_logprobs"] = echo  # the prompt's tokens, for its text and (with logprobs) their logprobs
    given["raw_prompt"] = True
    if given["max_new_tokens"] == 0 and stream:
        raise ApiError(400, "'max_tokens' 0 cannot be streamed; send stream: false.", param="max_tokens")
    options = _field(body, "stream_options", (dict,), "an object") or {}
    return TextRequest(
        model=model.strip(),
        prompts=_prompts(body.get("prompt")),
        params=_params(given),
        n=n,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        stops=_stops(body.get("stop")),
        echo=echo,
        logprobs=logprobs,
    )


def legacy_logprobs(tokens: list[TokenLogprob], start: int = 0) -> dict[str, Any]:
    """The completions API's logprobs object; text_offset counts characters from `start`."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = start
    for t in tokens:
        out["tokens"].append(t.text)
        out["token_logprobs"].append(t.logprob)
        top = {}
        for _, text, lp in t.top:
            top.setdefault(text, lp)
        out["top_logprobs"].append(top if t.logprob is not None else None)
        out["text_offset"].append(offset)
        offset += len(t.text)
    return out


async def text_completion(ctx: AppContext, served: ServedModel, req: TextRequest, request: fastapi.Request):
    def producer(prompt: str | list[int], params: ChatParams) -> Callable[[Callable[[], bool]], Iterator[ChatChunk]]:
        def produce(should_stop: Callable[[], bool]) -> Iterator[ChatChunk]:
            return ctx.chat.stream_prompt(served.spec, prompt, params, adapter=served.adapter, should_stop=should_stop)

        return produce

    reply_id, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    if req.stream:
        if len(req.prompts) > 1:
            raise_it = ApiError(400, "Several prompts cannot be streamed here; send one.", param="prompt")
            return raise_it.response()
        params = replace(req.params, echo_logprobs=False)  # the echo goes out first, as text
        reply = Reply(producer(req.prompts[0], params), served.id)
        first = await reply.next(request)
        if first[0] == "error":
            return api_error(first[1]).response()
        echo = req.prompts[0] if req.echo and isinstance(req.prompts[0], str) else ""
        events = stream_text(reply, first, req, reply_id, created, echo)
        weakref.finalize(events, reply.cancel, "the client left")
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p, prompt in enumerate(req.prompts):
        for i in range(req.n):
            reply = Reply(producer(prompt, nth_params(req.params, i)), served.id)
            result = await collect(reply, req.stops, request)
            if isinstance(result, ApiError):
                return result.response()
            text, tokens, finish, stats = result
            prompt_part = (reply.last.prompt_tokens or []) if reply.last else []
            head = ""
            if req.echo:
                head = prompt if isinstance(prompt, str) else "".join(t.text for t in prompt_part)
            logprobs = None
            if req.logprobs is not None:
                logprobs = legacy_logprobs((prompt_part if req.echo else []) + tokens)
            choices.append(
                {"index": p * req.n + i, "text": head + text, "logprobs": logprobs, "finish_reason": finish}
            )
            u = usage(stats)
            prompt_tokens += u["prompt_tokens"] if i == 0 else 0
            completion_tokens += u["completion_tokens"]
    total = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return JSONResponse(
        {
            "id": reply_id,
            "object": "text_completion",
            "created": created,
            "model": req.model,
            "choices": choices,
            "usage": total,
        }
    )


async def stream_text(
    reply: Reply, item: tuple[str, Any], req: TextRequest, reply_id: str, created: int, echo: str
) -> AsyncIterator[str]:
    """text_completion chunks: the echoed prompt (if asked), the text as it comes, the finish reason, [usage],
    then [DONE]."""

    def chunk(text: str, finish: str | None = None, tokens: list[TokenLogprob] | None = None) -> str:
        logprobs = legacy_logprobs(tokens) if tokens and req.logprobs is not None else None
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse(
            {"id": reply_id, "object": "text_completion", "created": created, "model": req.model, "choices": [choice]}
        )

    cut, stats = StopCut(req.stops), None
    try:
        if echo:
            yield chunk(echo)
        while item[0] != "end":
            kind, value = item
            if kind == "error":
                yield sse(api_error(value).body())
                return
            if value.done:
                stats = value.stats
            else:
                text = cut.feed(value.delta)
                if text or (value.tokens and not cut.hit):
                    yield chunk(text, tokens=None if cut.hit else value.tokens)
                if cut.hit:
                    reply.cancel("stop sequence")
            item = await reply.next()
        tail = cut.flush()
        if tail:
            yield chunk(tail)
        yield chunk("", finish_reason(cut, stats))
        if req.include_usage:
            yield sse(
                {
                    "id": reply_id,
                    "object": "text_completion",
                    "created": created,
                    "model": req.model,
                    "choices": [],
                    "usage": usage(stats),
                }
            )
        yield "data: [DONE]\n\n"
    finally:
        reply.cancel("the client left")
