"""POST /v1/images/generations: OpenAI's image API on the studio's own server, drawn by the Image tab's engine.

    client.images.generate(model="tiny-sd", prompt="a lighthouse", size="64x64", response_format="b64_json")

Models: image models the studio holds (loaded or parked, by the names the Models tab shows), and "tiny-sd", the
test pipeline (random weights: it draws noise). Like the chat API it never loads an arbitrary path or Hub id; with
no `model`, the most recently used loaded image model draws. Every image is also written to outputs/images with its
parameters, as from the page. Beyond OpenAI's fields it accepts `negative_prompt`, `steps`, `cfg_scale`, `seed` and
`sampler` (A1111 names). Errors use OpenAI's shape (see studio/api/openai.py).

A client that leaves (closes the connection, times out) stops the run after its current step: images already
written are kept, the rest are not drawn, and the GPU lane is free for the next request.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.responses import JSONResponse

from studio.api.disconnect import run_while_connected
from studio.api.openai import ApiError, api_error, bad_json
from studio.engines.image import TINY_SOURCE, defaults_for, model_name
from studio.engines.image_params import MAX_BATCH_SIZE, SAMPLER_NAMES, ImageParams
from studio.models.records import LOADED, PARKED
from studio.models.specs import ModelSpec
from studio.text import blank

if TYPE_CHECKING:
    from studio.context import AppContext

log = logging.getLogger(__name__)
MAX_N = MAX_BATCH_SIZE
_SIZE = re.compile(r"^(\d{1,9})x(\d{1,9})$")  # digits capped: int() of 5000 digits raises


def _field(body: dict, name: str, types: tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {what}, not {json.dumps(value)[:60]}.", param=name)
    return value


def parse_request(body: Any) -> tuple[str | None, dict[str, Any]]:
    """The model id and the ImageParams fields the body sets; ApiError (400) names the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    prompt = _field(body, "prompt", (str,), "text")
    if prompt is None or blank(prompt):
        raise ApiError(400, "'prompt' is required: describe the image to draw.", param="prompt")
    model = _field(body, "model", (str,), "a model id")
    given: dict[str, Any] = {"prompt": prompt.strip()}
    n = _field(body, "n", (int,), "a whole number")
    if n is not None:
        if not 1 <= n <= MAX_N:
            raise ApiError(400, f"'n' must be between 1 and {MAX_N}, not {n}.", param="n")
        given["batch_size"] = n
    size = _field(body, "size", (str,), 'a size like "512x512"')
    if size is not None and size != "auto":
        m = _SIZE.match(size.strip())
        if m is None:
            raise ApiError(
                400, f"'size' must look like \"512x512\" (width x height), not {size[:40]!r}.", param="size"
            )
        given["width"], given["height"] = int(m.group(1)), int(m.group(2))
    fmt = _field(body, "response_format", (str,), '"b64_json"')
    if fmt not in (None, "b64_json"):
        raise ApiError(
            400,
            f'response_format {fmt!r} is not supported: the studio returns images inline; use "b64_json".',
            param="response_format",
        )
    out_fmt = _field(body, "output_format", (str,), '"png"')
    if out_fmt not in (None, "png"):
        raise ApiError(400, 'output_format must be "png" (the parameters travel in the PNG).', param="output_format")
    for name, key, types, what in (
        ("negative_prompt", "negative_prompt", (str,), "text"),
        ("steps", "steps", (int,), "a whole number"),
        ("cfg_scale", "cfg_scale", (int, float), "a number"),
        ("guidance_scale", "cfg_scale", (int, float), "a number"),
        ("seed", "seed", (int,), "a whole number (-1 = random)"),
        ("sampler", "sampler", (str,), f"one of {', '.join(SAMPLER_NAMES)}"),
    ):
        value = _field(body, name, types, what)
        if value is not None:
            given[key] = float(value) if key == "cfg_scale" else value
    return (model.strip() if model else None), given


def image_models(ctx: AppContext) -> list[tuple[str, ModelSpec, float]]:
    """(id, spec, last used) of the image models the API serves, most recently used first."""
    return [(model_name(spec), spec, rec.last_used) for rec, spec in ctx.manager.models("image", (LOADED, PARKED))]


def resolve_model(ctx: AppContext, model_id: str | None) -> ModelSpec:
    served = image_models(ctx)
    if model_id is None:
        loaded = [spec for _, spec, _ in served]
        if loaded:
            return loaded[0]
        raise ApiError(
            400,
            f"No image model is loaded. Load one in the Image or Models tab, or pass model='{TINY_SOURCE}' "
            "for the test pipeline (random weights: it draws noise).",
            param="model",
            code="model_not_found",
        )
    for name, spec, _ in served:
        if model_id in (name, spec.name, spec.key, spec.source):
            return spec
    if model_id == TINY_SOURCE:
        return ctx.image.tiny_spec("fp16" if ctx.device == "cuda" else "fp32")
    raise ApiError(
        404,
        f"The image model '{model_id}' is not available in ML Studio. Loaded image models: "
        f"{', '.join(n for n, _, _ in served) or 'none'}; '{TINY_SOURCE}' is the test pipeline. "
        "Load others in the Image or Models tab first.",
        param="model",
        code="model_not_found",
    )


def generate(
    ctx: AppContext, model_id: str | None, given: dict[str, Any], should_stop: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """Draw the images (blocking; run in a worker thread) and build OpenAI's response. `should_stop` ends the run
    after its current step; the response then holds the images finished before."""
    spec = resolve_model(ctx, model_id)
    d = defaults_for(spec)
    base = ImageParams(steps=d.steps, cfg_scale=d.cfg_scale, width=d.width, height=d.height, sampler=d.sampler)
    params = replace(base, **given)
    last = None
    for update in ctx.image.generate(spec, params, should_stop=should_stop):
        last = update
    assert last is not None and last.report is not None
    if last.report.stopped:
        log.info("images API: %s: stopped (the client left)", last.report.summary())
    data = []
    for saved in last.images:
        data.append({"b64_json": base64.b64encode(saved.path.read_bytes()).decode("ascii"), "revised_prompt": None})
    return {
        "created": int(time.time()),
        "data": data,
        "output_format": "png",
        "size": f"{params.width}x{params.height}",
        "seeds": list(last.report.seeds),  # not OpenAI's: the seed of each image, to draw it again
    }


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Add POST /v1/images/generations to `app` (before Gradio adds its own routes)."""

    @app.post("/v1/images/generations")
    async def images_generations(request: fastapi.Request) -> JSONResponse:
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError) as exc:
                raise bad_json(exc) from None
            model_id, given = parse_request(body)
            result = await run_while_connected(
                request, lambda should_stop: generate(ctx, model_id, given, should_stop)
            )
        except Exception as exc:  # noqa: BLE001 - every failure answers in OpenAI's error shape
            return api_error(exc).response()
        return JSONResponse(result)
