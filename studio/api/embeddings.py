"""POST /v1/embeddings: OpenAI's embeddings API on the studio's own server (studio/engines/embedding.py).

    client.embeddings.create(model="bge-small-en-v1.5", input=["a lighthouse", "a harbour"])

Models: embedding models the studio holds (loaded or parked, kind "embedding", by the names the Models tab shows) and
every chat model /v1/chat/completions serves (a transformers one: the mean of its last hidden state). `input` is a
string, a list of strings, a list of token ids or a list of such lists (at most 2048 items, 300,000 tokens);
`encoding_format` "float" or "base64" (little-endian float32, as OpenAI); `dimensions` only at the model's own size
(the studio does not shorten vectors). The same key, limits and GPU lane as /v1/chat/completions; a client that
leaves stops the request between batches. Errors use OpenAI's shape (see studio/api/openai.py).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.responses import JSONResponse

from studio.api.disconnect import run_while_connected
from studio.api.openai import ApiError, _field, api_error, bad_json, resolve_model
from studio.engines.embedding import EmbeddingInputError, EmbeddingStopped, check_inputs
from studio.models.records import LOADED, PARKED
from studio.models.specs import ModelSpec

if TYPE_CHECKING:
    from studio.context import AppContext

ENCODINGS = ("float", "base64")


def embedding_models(ctx: AppContext) -> list[tuple[str, ModelSpec, int]]:
    """(id, spec, last used) of the embedding models the studio holds, most recently used first."""
    out, seen = [], set()
    for rec, spec in ctx.manager.models("embedding", (LOADED, PARKED)):
        if spec.name not in seen:
            seen.add(spec.name)
            out.append((spec.name, spec, int(rec.last_used)))
    return out


def find_embedding_model(ctx: AppContext, model_id: str) -> tuple[str, ModelSpec, int] | None:
    served = embedding_models(ctx)
    for entry in served:
        if model_id == entry[0]:
            return entry
    for entry in served:
        spec = entry[1]
        if model_id in (spec.key, spec.source):
            return entry
    return None


def resolve(ctx: AppContext, model_id: str) -> tuple[ModelSpec, str | None]:
    """The spec (and LoRA adapter of a chat model) that embeds for `model_id`; unknown -> 404."""
    found = find_embedding_model(ctx, model_id)
    if found is not None:
        return found[1], None
    try:
        served = resolve_model(ctx, model_id)
    except ApiError:
        names = ", ".join(name for name, _, _ in embedding_models(ctx)) or "none"
        raise ApiError(
            404,
            f"The model '{model_id}' is not available in ML Studio. Loaded embedding models: {names}; chat models "
            "embed too (GET /v1/models lists them). Load an embedding model in the Models tab (kind embedding) first.",
            param="model",
            code="model_not_found",
        ) from None
    return served.spec, served.adapter


def parse_request(body: Any) -> tuple[str, list[str | list[int]], str, int | None]:
    """(model, inputs, encoding_format, dimensions); ApiError (400) names the first field that cannot work."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' is required: one of the ids GET /v1/models lists.", param="model")
    try:
        inputs = check_inputs(body.get("input"))
    except EmbeddingInputError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    fmt = _field(body, "encoding_format", (str,), '"float" or "base64"') or "float"
    if fmt not in ENCODINGS:
        raise ApiError(
            400, f'\'encoding_format\' must be "float" or "base64", not {fmt[:40]!r}.', param="encoding_format"
        )
    dims = _field(body, "dimensions", (int,), "a whole number")
    if dims is not None and dims < 1:
        raise ApiError(400, f"'dimensions' must be at least 1, not {dims}.", param="dimensions")
    _field(body, "user", (str,), "text")  # an end user's id for abuse tracking: accepted, used for nothing
    return model.strip(), inputs, fmt, dims


def encode(vector: Any, fmt: str) -> list[float] | str:
    import numpy as np

    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Add POST /v1/embeddings to `app` (before Gradio adds its own routes)."""

    @app.post("/v1/embeddings")
    async def embeddings(request: fastapi.Request) -> JSONResponse:
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError) as exc:
                raise bad_json(exc) from None
            model_id, inputs, fmt, dims = parse_request(body)
            spec, adapter = resolve(ctx, model_id)
            result = await run_while_connected(
                request,
                lambda should_stop: ctx.embedding.embed(
                    spec, inputs, dimensions=dims, adapter=adapter, should_stop=should_stop
                ),
            )
        except EmbeddingInputError as exc:
            return ApiError(400, str(exc), param=exc.param).response()
        except EmbeddingStopped:  # nobody reads this: the client went away
            return ApiError(408, "Stopped: the client left before the embeddings were made.").response()
        except Exception as exc:  # noqa: BLE001 - every failure answers in OpenAI's error shape
            return api_error(exc).response()
        data = [
            {"object": "embedding", "index": i, "embedding": encode(vector, fmt)}
            for i, vector in enumerate(result.vectors)
        ]
        tokens = result.prompt_tokens
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
