"""AUTOMATIC1111's web UI API (/sdapi/v1/...) on the studio's own server, drawn by the Image tab's engine.

Tools written for A1111 (SillyTavern, Open WebUI's A1111 engine, the `webuiapi` client, editor plugins) call:

    POST /sdapi/v1/txt2img, /sdapi/v1/img2img     draw; {"images": [base64 PNG], "parameters": {...}, "info": "{...}"}
    GET  /sdapi/v1/sd-models, /samplers, /schedulers, /options, /progress
    POST /sdapi/v1/options                        {"sd_model_checkpoint": ...} picks the model
    POST /sdapi/v1/interrupt                      stops the drawing run after its current step

The same engine, GPU lane, limits, API key and model rules as /v1/images/generations (studio/api/images.py):
models are the image models the studio holds and "tiny-sd" (the test pipeline); only the owner (a request from
this machine, or --allow-remote-admin) may name a folder, a .safetensors file or a Hub id in sd_model_checkpoint,
which is then loaded. Every image is written to outputs/images with its parameters before the answer goes out.

Fields the studio cannot honour (hires fix, face restoration, tiling, styles, scripts, inpainting masks, other
override_settings) are refused with a 400 naming them rather than silently ignored, unless their value is the
one that changes nothing (false, [], {}, 0). Fields that only tune what the studio does not have (subseed
with strength 0, eta, s_churn, save_images, ...) and unknown fields are ignored, as A1111's own models do.
Errors are FastAPI's shape, {"detail": "..."}, and name the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.responses import JSONResponse

from studio.api.disconnect import run_while_connected
from studio.api.guard import _plain_error
from studio.api.images import image_models, resolve_model
from studio.api.openai import ApiError, api_error, bad_json
from studio.engines.image import TINY_SOURCE, defaults_for, lcm_applies, max_side_for, model_name
from studio.engines.image_params import (
    MIN_SIDE,
    SAMPLERS,
    VERSION,
    ImageParams,
    sampler_from_infotext,
    sampler_named,
)
from studio.errors import InputError
from studio.models.specs import ModelSpec, spec_from_form
from studio.security import PermissionDenied, request_facts
from studio.text import blank

if TYPE_CHECKING:
    from studio.context import AppContext

log = logging.getLogger(__name__)

MAX_INIT_PIXELS = 8192 * 8192  # an init image's header may claim any size; it is refused before it is decoded

# A1111's short aliases (k-diffusion names) for the samplers the studio has
SAMPLER_ALIASES: dict[str, tuple[str, ...]] = {
    "DPM++ 2M": ("k_dpmpp_2m",),
    "DPM++ 2M Karras": ("k_dpmpp_2m_ka",),
    "Euler a": ("k_euler_a", "k_euler_ancestral"),
    "Euler": ("k_euler",),
    "DDIM": ("ddim",),
    "LCM": ("k_lcm", "lcm"),
}
SCHEDULES = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras"}

# Settings whose only accepted value is what the studio does anyway (in /options and override_settings)
NO_OP_SETTINGS: dict[str, tuple[Any, ...]] = {
    "samples_format": ("png",),
    "CLIP_stop_at_last_layers": (1,),
    "sd_vae": ("Automatic", "None", ""),
    "eta_noise_seed_delta": (0,),
    "save_images": (True, False),  # the studio always writes the images to outputs/images
    "samples_save": (True, False),
}
# Request fields the studio has no such feature for: accepted only with the value that changes nothing
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "enable_hr": ((False,), "hires fix is not supported"),
    "restore_faces": ((False,), "face restoration is not supported"),
    "tiling": ((False,), "tiling is not supported"),
    "styles": (([],), "prompt styles are not supported: put the text in the prompt"),
    "alwayson_scripts": (({},), "scripts (ControlNet, ADetailer, ...) are not supported"),
    "script_name": (("",), "scripts are not supported"),
    "script_args": (([],), "scripts are not supported"),
    "subseed_strength": ((0,), "variation seeds are not supported"),
    "refiner_checkpoint": (("", "None"), "a refiner is not supported"),
    "mask": (("",), "inpainting (a mask) is not supported"),
    "resize_mode": ((0,), "only resize mode 0 (just resize) is supported"),
}
# messages of ImageParams.check_inputs, by their first words, and the A1111 field they are about
CHECK_FIELDS = (
    ("Type a prompt", "prompt"),
    ("The prompt", "prompt"),
    ("The negative prompt", "negative_prompt"),
    ("Unknown sampler", "sampler_name"),
    ("The LCM sampler", "sampler_name"),
    ("Steps", "steps"),
    ("CFG scale", "cfg_scale"),
    ("Width", "width"),
    ("Height", "height"),
    ("Seed", "seed"),
    ("Batch size", "batch_size"),
    ("Batch count", "n_iter"),
    ("Denoising strength", "denoising_strength"),
)


class SdError(Exception):
    """A request /sdapi refuses: the status and the `detail` text (which names the field)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail

    def response(self) -> JSONResponse:
        return _plain_error(self.status, self.detail)


def _as_sd_error(exc: BaseException) -> SdError:
    if isinstance(exc, SdError):
        return exc
    if isinstance(exc, PermissionDenied):
        return SdError(403, str(exc))
    if isinstance(exc, InputError):
        text = str(exc)
        for start, name in CHECK_FIELDS:
            if text.startswith(start) or (name == "denoising_strength" and " at strength " in text):
                return SdError(400, f"{name}: {text}")
        return SdError(400, text)
    err = api_error(exc)  # the /v1 mapping: busy 503, disk full 507, out of memory 503, ...
    return SdError(err.status, f"{err.param}: {err.message}" if err.param else err.message)


# ----- request ---------------------------------------------------------------------------------------------


def _value(body: dict, name: str, kind: str) -> Any:
    """body[name] checked as `kind` ("text", "int", "number", "bool"); None when missing; 422 naming it if not."""
    value = body.get(name)
    if value is None:
        return None
    shown = json.dumps(value)[:60]
    if kind == "text":
        if not isinstance(value, str):
            raise SdError(422, f"{name}: must be text, not {shown}.")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SdError(422, f"{name}: must be true or false, not {shown}.")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SdError(422, f"{name}: must be {'a whole number' if kind == 'int' else 'a number'}, not {shown}.")
    if not math.isfinite(value):
        raise SdError(422, f"{name}: must be a finite number, not {shown}.")
    if kind == "int":
        if value != int(value):
            raise SdError(422, f"{name}: must be a whole number, not {shown}.")
        return int(value)
    return float(value)


def sampler_for(name: str | None, schedule: str | None) -> str | None:
    """The studio's sampler for A1111's `sampler_name` (or an alias) and `scheduler`; SdError when unknown."""
    if schedule is not None and schedule.strip().lower() not in SCHEDULES:
        raise SdError(
            400, f"scheduler: {schedule[:40]!r} is not available; use one of {', '.join(SCHEDULES.values())}."
        )
    sched = SCHEDULES[schedule.strip().lower()] if schedule is not None else None
    if name is None or blank(name):
        if sched is not None and sched != "Automatic":
            raise SdError(400, "scheduler: set sampler_name too (the schedule applies to DPM++ 2M only).")
        return None
    text = name.strip()
    for s, aliases in SAMPLER_ALIASES.items():
        if text.lower() == s.lower() or text.lower() in aliases:
            text = s
    if text == "DPM++ 2M Karras":
        return text
    found = sampler_from_infotext(text, sched)
    if found is None:
        names = ", ".join(SAMPLER_ALIASES)
        raise SdError(400, f"sampler_name: {name[:40]!r} is not available in ML Studio; use one of {names}.")
    if sched not in (None, "Automatic") and found != "DPM++ 2M" and found != "DPM++ 2M Karras":
        raise SdError(400, f"scheduler: {sched} applies to DPM++ 2M only, not {found}.")
    return found


def _check_unsupported(body: dict, img2img: bool) -> None:
    for name, (harmless, why) in UNSUPPORTED.items():
        if name == "mask" and not img2img:
            continue
        value = body.get(name)
        if value is None or value in harmless:
            continue
        raise SdError(400, f"{name}: {why} in ML Studio (sent {json.dumps(value)[:60]}).")


def _settings(raw: Any, where: str) -> dict[str, Any]:
    """`override_settings` / POST /options: sd_model_checkpoint, and no-op settings; others refused by name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SdError(422, f"{where}: must be an object of settings, not {json.dumps(raw)[:60]}.")
    out = {}
    for key, value in raw.items():
        prefix = f"{where}.{key}" if where != "options" else key
        if key == "sd_model_checkpoint":
            if not isinstance(value, str) or blank(value):
                raise SdError(422, f"{prefix}: must be a model's title (see /sdapi/v1/sd-models).")
            out[key] = value.strip()
        elif key in NO_OP_SETTINGS:
            if value not in NO_OP_SETTINGS[key] or isinstance(value, bool) != isinstance(NO_OP_SETTINGS[key][0], bool):
                allowed = ", ".join(json.dumps(v) for v in NO_OP_SETTINGS[key])
                raise SdError(400, f"{prefix}: ML Studio supports only {allowed}, not {json.dumps(value)[:60]}.")
        else:
            raise SdError(
                400, f"{prefix}: this setting is not supported by ML Studio (it supports sd_model_checkpoint)."
            )
    return out


@dataclass
class DrawRequest:
    """A checked txt2img / img2img body."""

    given: dict[str, Any]  # ImageParams fields the request sets
    checkpoint: str | None  # override_settings.sd_model_checkpoint
    init_image: bytes | None  # img2img: the decoded first init image
    init_size: tuple[int, int] | None
    send_images: bool
    include_init_images: bool


def decode_image(raw: Any, name: str) -> tuple[bytes, tuple[int, int]]:
    """A base64 PNG/JPEG/WebP (with or without a data: prefix) -> (bytes, size); SdError naming `name`."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(raw, str):
        raise SdError(422, f"{name}: must be a base64-encoded image, not {json.dumps(raw)[:60]}.")
    text = raw.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise SdError(400, f"{name}: a data URL must be base64 (data:image/png;base64,...).")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SdError(400, f"{name}: not valid base64.") from None
    if not data:
        raise SdError(400, f"{name}: the image is empty.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if size[0] * size[1] > MAX_INIT_PIXELS:
                raise SdError(400, f"{name}: the image is {size[0]}x{size[1]}; the studio reads up to 8192x8192.")
            img.load()
    except SdError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SdError(400, f"{name}: not an image ({type(exc).__name__}); send a PNG, JPEG or WebP.") from None
    return data, size


def parse_draw(body: Any, img2img: bool) -> DrawRequest:
    if not isinstance(body, dict):
        raise SdError(422, "The request body must be a JSON object.")
    _check_unsupported(body, img2img)
    given: dict[str, Any] = {}
    for name, kind, key in (
        ("prompt", "text", "prompt"),
        ("negative_prompt", "text", "negative_prompt"),
        ("steps", "int", "steps"),
        ("cfg_scale", "number", "cfg_scale"),
        ("seed", "int", "seed"),
        ("width", "int", "width"),
        ("height", "int", "height"),
        ("batch_size", "int", "batch_size"),
        ("n_iter", "int", "batch_count"),
    ):
        value = _value(body, name, kind)
        if value is not None:
            given[key] = value
    if given.get("seed", 0) < -1:  # A1111 treats any negative seed as random; only -1 is documented
        given["seed"] = -1
    given["prompt"] = given.get("prompt", "").strip()
    sampler = _value(body, "sampler_name", "text") or _value(body, "sampler_index", "text")
    sampler = sampler_for(sampler, _value(body, "scheduler", "text"))
    if sampler is not None:
        given["sampler"] = sampler
    override = _settings(body.get("override_settings"), "override_settings")
    send_images = _value(body, "send_images", "bool")
    include_init = _value(body, "include_init_images", "bool")
    init = init_size = None
    if img2img:
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise SdError(422, "init_images: required for img2img: a list with one base64-encoded image.")
        init, init_size = decode_image(images[0], "init_images[0]")
        strength = _value(body, "denoising_strength", "number")
        given["strength"] = 0.75 if strength is None else strength
    return DrawRequest(
        given,
        override.get("sd_model_checkpoint"),
        init,
        init_size,
        True if send_images is None else send_images,
        bool(include_init),
    )


# ----- progress and interrupt --------------------------------------------------------------------------------


@dataclass
class Job:
    """One /sdapi drawing request, for /progress and /interrupt."""

    kind: str  # "txt2img" / "img2img"
    batch_count: int
    stop: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None  # the first step
    done: int = 0
    total: int = 0
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))

    def on_step(self, done: int, total: int) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.done, self.total = done, total


class Jobs:
    """The /sdapi runs in flight, oldest first; the current one is the one drawing (else the oldest)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[Job] = []

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs.append(job)

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.remove(job)

    def current(self) -> Job | None:
        with self._lock:
            drawing = [j for j in self._jobs if j.started is not None]
            return (drawing or self._jobs or [None])[0]

    def count(self) -> int:
        with self._lock:
            return len(self._jobs)


def progress_body(jobs: Jobs) -> dict[str, Any]:
    job = jobs.current()
    state: dict[str, Any] = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    per = job.total // max(1, job.batch_count) if job.total else 0
    job_no = min((job.done - 1) // per, job.batch_count - 1) if per and job.done else 0
    state.update(
        interrupted=job.stop.is_set(),
        job=job.kind,
        job_count=job.batch_count,
        job_timestamp=job.timestamp,
        job_no=job_no,
        sampling_step=job.done - job_no * per if per else 0,
        sampling_steps=per,
    )
    fraction = job.done / job.total if job.total else 0.0
    eta = 0.0
    if job.started is not None and fraction > 0:
        elapsed = time.monotonic() - job.started
        eta = max(0.0, elapsed / fraction - elapsed)
    text = "Waiting for the GPU or loading the model" if job.started is None else f"Step {job.done} of {job.total}"
    return {
        "progress": round(fraction, 4),
        "eta_relative": round(eta, 2),
        "state": state,
        "current_image": None,
        "textinfo": text,
    }


# ----- models ------------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """The model POST /options chose (an id /v1 resolves), or None: the most recently used loaded image model."""

    model: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _title_to_id(title: str) -> str:
    """A1111 titles read "name.safetensors [hash]": the name the studio knows."""
    text = title.strip()
    if text.endswith("]") and " [" in text:
        text = text.rsplit(" [", 1)[0].strip()
    return text


def resolve_checkpoint(ctx: AppContext, title: str | None, where: str) -> ModelSpec:
    try:
        return resolve_model(ctx, _title_to_id(title) if title else None)
    except ApiError as exc:
        hint = "" if title else " (or POST /sdapi/v1/options with sd_model_checkpoint)"
        raise SdError(400, f"{where}: {exc.message}{hint}") from None


def model_entry(name: str, spec: ModelSpec) -> dict[str, Any]:
    filename = spec.path.name if spec.path is not None and spec.source_type != "hub" else spec.source
    return {
        "title": name,
        "model_name": name,
        "hash": None,
        "sha256": None,
        "filename": TINY_SOURCE if name == TINY_SOURCE else filename,
        "config": None,
    }


def sd_models(ctx: AppContext) -> list[dict[str, Any]]:
    entries = [model_entry(name, spec) for name, spec, _ in image_models(ctx)]
    if not any(e["title"] == TINY_SOURCE for e in entries):
        entries.append(model_entry(TINY_SOURCE, ctx.image.tiny_spec()))
    return entries


def current_checkpoint(ctx: AppContext, selection: Selection) -> str:
    if selection.model is not None:
        return selection.model
    served = image_models(ctx)
    return served[0][0] if served else ""


def set_checkpoint(ctx: AppContext, selection: Selection, title: str, request: fastapi.Request) -> str:
    """Pick the model: one the studio serves (anyone), or for the owner a folder, file or Hub id, loaded now."""
    try:
        spec = resolve_model(ctx, _title_to_id(title))
    except ApiError:
        host, headers = request_facts(request)
        if not (ctx.security.allow_remote_admin or not ctx.security.is_remote(host, headers)):
            served = ", ".join(n for n, _, _ in image_models(ctx)) or "none"
            raise SdError(
                403,
                f"sd_model_checkpoint: remote visitors can pick the image models the owner has loaded (now: {served}; "
                f"and '{TINY_SOURCE}'), not other models or server paths.",
            ) from None
        try:
            spec = spec_from_form(ctx.device, "image", title, "fp16" if ctx.device == "cuda" else "fp32")
        except InputError as exc:
            raise SdError(400, f"sd_model_checkpoint: {exc}") from None
        log.info("sdapi: loading %s for sd_model_checkpoint", spec.name)
        try:
            ctx.image.load(spec)
        except Exception as exc:  # noqa: BLE001 - answered with its message, the studio goes on
            raise _with_field(_as_sd_error(exc), "sd_model_checkpoint") from None
    name = model_name(spec)
    with selection.lock:
        selection.model = name
    return name


def _with_field(err: SdError, name: str) -> SdError:
    return err if err.detail.startswith(name) else SdError(err.status, f"{name}: {err.detail}")


# ----- drawing -----------------------------------------------------------------------------------------------


def _params(ctx: AppContext, spec: ModelSpec, req: DrawRequest, init_path: Path | None) -> ImageParams:
    d = defaults_for(spec)
    base = ImageParams(steps=d.steps, cfg_scale=d.cfg_scale, width=d.width, height=d.height, sampler=d.sampler)
    given = dict(req.given)
    if init_path is not None:
        given["init_image"] = str(init_path)
        if req.init_size is not None:  # no size asked: the init image's, to a multiple of 8
            w, h = req.init_size
            given.setdefault("width", max(MIN_SIDE, w // 8 * 8))
            given.setdefault("height", max(MIN_SIDE, h // 8 * 8))
    params = replace(base, **given)
    params.check_inputs(max_side_for(spec), spec.name, lcm_applies(spec))
    return params


def info_json(params: ImageParams, spec: ModelSpec, report: Any, images: list[Any], job: Job, img2img: bool) -> str:
    s = sampler_named(params.sampler)
    seeds = [img.seed for img in images]
    n = len(images)
    info = {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * n,
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * n,
        "seed": seeds[0] if seeds else report.first_seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * n,
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": s.a1111,
        "scheduler": s.schedule,
        "cfg_scale": params.cfg_scale,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "n_iter": params.batch_count,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model_name(spec),
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": params.strength if img2img else None,
        "extra_generation_params": {"Schedule type": s.schedule},
        "index_of_first_image": 0,
        "infotexts": [img.infotext for img in images],
        "styles": [],
        "job_timestamp": job.timestamp,
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        "interrupted": bool(report.stopped),
    }
    return json.dumps(info, ensure_ascii=False)


def draw(
    ctx: AppContext,
    selection: Selection,
    req: DrawRequest,
    job: Job,
    body: dict,
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    """Draw (blocking; in a worker thread) and build A1111's answer."""
    img2img = req.init_image is not None
    spec = resolve_checkpoint(
        ctx, req.checkpoint or selection.model, "override_settings.sd_model_checkpoint" if req.checkpoint else "model"
    )
    tmp = Path(tempfile.mkdtemp(prefix="sdapi-init-")) if img2img else None
    try:
        init_path = None
        if tmp is not None:
            init_path = tmp / "init.img"
            init_path.write_bytes(req.init_image or b"")
        params = _params(ctx, spec, req, init_path)
        job.batch_count = params.batch_count
        last = None
        stop = lambda: should_stop() or job.stop.is_set()  # noqa: E731
        for update in ctx.image.generate(spec, params, should_stop=stop, on_step=job.on_step):
            last = update
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    assert last is not None and last.report is not None
    if last.report.stopped:
        why = "interrupted" if job.stop.is_set() else "the client left"
        log.info("sdapi %s: %s: stopped (%s)", job.kind, last.report.summary(), why)
    images = list(last.images)
    parameters = dict(body)
    if img2img and not req.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    encoded = [base64.b64encode(saved.path.read_bytes()).decode("ascii") for saved in images]
    return {
        "images": encoded if req.send_images else [],
        "parameters": parameters,
        "info": info_json(params, spec, last.report, images, job, img2img),
    }


# ----- routes ------------------------------------------------------------------------------------------------


def samplers() -> list[dict[str, Any]]:
    out = []
    for s in SAMPLERS:
        options = {"scheduler": "karras"} if s.schedule == "Karras" else {}
        out.append({"name": s.name, "aliases": list(SAMPLER_ALIASES.get(s.name, ())), "options": options})
    return out


def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": key, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
        for key, label in SCHEDULES.items()
    ]


async def _json_body(request: fastapi.Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError) as exc:
        raise SdError(400, bad_json(exc).message) from None


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Add the /sdapi/v1 routes to `app` (before Gradio adds its own routes)."""
    jobs = Jobs()
    selection = Selection()

    async def drawing(request: fastapi.Request, kind: str) -> JSONResponse:
        job = None
        try:
            body = await _json_body(request)
            req = parse_draw(body, img2img=kind == "img2img")
            job = Job(kind, req.given.get("batch_count", 1))
            jobs.add(job)
            result = await run_while_connected(
                request, lambda should_stop: draw(ctx, selection, req, job, body, should_stop)
            )
        except Exception as exc:  # noqa: BLE001 - every failure answers {"detail": ...}; the studio goes on
            return _as_sd_error(exc).response()
        finally:
            if job is not None:
                jobs.remove(job)
        return JSONResponse(result)

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: fastapi.Request) -> JSONResponse:
        return await drawing(request, "txt2img")

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: fastapi.Request) -> JSONResponse:
        return await drawing(request, "img2img")

    @app.get("/sdapi/v1/sd-models")
    async def get_models() -> JSONResponse:
        return JSONResponse(sd_models(ctx))

    @app.post("/sdapi/v1/refresh-checkpoints")
    async def refresh_checkpoints() -> JSONResponse:
        return JSONResponse(None)  # the list is always read fresh

    @app.get("/sdapi/v1/samplers")
    async def get_samplers() -> JSONResponse:
        return JSONResponse(samplers())

    @app.get("/sdapi/v1/schedulers")
    async def get_schedulers() -> JSONResponse:
        return JSONResponse(schedulers())

    for empty in ("upscalers", "sd-vae", "loras", "prompt-styles", "hypernetworks", "face-restorers"):
        app.add_api_route(f"/sdapi/v1/{empty}", _empty_list, methods=["GET"])

    @app.get("/sdapi/v1/options")
    async def get_options() -> JSONResponse:
        return JSONResponse(
            {
                "sd_model_checkpoint": current_checkpoint(ctx, selection),
                "sd_checkpoint_hash": None,
                "samples_format": "png",
                "CLIP_stop_at_last_layers": 1,
                "sd_vae": "Automatic",
                "eta_noise_seed_delta": 0,
            }
        )

    @app.post("/sdapi/v1/options")
    async def set_options(request: fastapi.Request) -> JSONResponse:
        try:
            settings = _settings(await _json_body(request), "options")
            title = settings.get("sd_model_checkpoint")
            if title is not None:
                await asyncio.to_thread(set_checkpoint, ctx, selection, title, request)
        except Exception as exc:  # noqa: BLE001
            return _as_sd_error(exc).response()
        return JSONResponse(None)

    @app.get("/sdapi/v1/progress")
    async def progress() -> JSONResponse:
        return JSONResponse(progress_body(jobs))

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> JSONResponse:
        job = jobs.current()
        if job is not None:
            job.stop.set()  # the run ends after its current step
            log.info("sdapi: interrupt asked for the running %s", job.kind)
        return JSONResponse({})


async def _empty_list() -> JSONResponse:
    """Upscalers, VAEs, LoRAs, styles: the studio has none to pick through this API."""
    return JSONResponse([])
