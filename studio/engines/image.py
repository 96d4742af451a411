"""Images: Stable Diffusion text-to-image and image-to-image on the shared model manager.

No gradio here. The Image tab and /v1/images/generations both call `ImageEngine.generate()`, a generator that
yields after every finished batch; per-step progress goes to an `on_step` callback, and `should_stop` is checked
after every step (Stop ends after the current step and keeps the images already finished).

Every image is written to `outputs/images/YYYY-MM-DD/NNNNN-SEED.png` before it is handed out, with a `parameters`
text chunk in the AUTOMATIC1111 format, which `parse_infotext` reads back. It is written under a hidden temporary
name and renamed, so a full disk leaves no partial file: the run ends with a DiskFullError saying where.

Memory: before a run, the manager's estimate for the size and batch is compared with what the budget can free; if
it does not fit, attention slicing, then VAE tiling, then model CPU offload (CUDA) are switched on, and the run is
accounted with the smaller runtime they leave. Out of memory during a run: evict idle models and retry, then VAE
tiling, then one image at a time, then CPU offload, then StudioOutOfMemory.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.engines.lane import GpuLane
from studio.errors import BudgetError, DiskFullError, InputError, ModelLoadError, is_disk_full
from studio.models import folders
from studio.models.estimate import Workload
from studio.models.manager import ModelManager
from studio.models.records import LOADED, ModelRecord
from studio.models.specs import ModelSpec, catalog_entry
from studio.text import blank, fmt_bytes, invalid_text

# ----- samplers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampler:
    """A sampler as AUTOMATIC1111 names it, and the diffusers scheduler that implements it."""

    name: str  # what the UI lists
    a1111: str  # "Sampler:" in the parameters text
    schedule: str  # "Schedule type:" in the parameters text
    scheduler: str  # diffusers scheduler class
    options: tuple[tuple[str, Any], ...] = ()  # from_config overrides


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M Karras", "DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", (("use_karras_sigmas", True),)),
    Sampler("DPM++ 2M", "DPM++ 2M", "Uniform", "DPMSolverMultistepScheduler"),
    Sampler("Euler a", "Euler a", "Automatic", "EulerAncestralDiscreteScheduler"),
    Sampler("Euler", "Euler", "Automatic", "EulerDiscreteScheduler"),
    Sampler("DDIM", "DDIM", "Automatic", "DDIMScheduler"),
    Sampler("LCM", "LCM", "Automatic", "LCMScheduler"),  # for LCM-distilled models and LCM LoRAs
)
SAMPLER_NAMES = tuple(s.name for s in SAMPLERS)


def sampler_named(name: str) -> Sampler:
    for s in SAMPLERS:
        if s.name == name:
            return s
    raise InputError(f"Unknown sampler {name!r}.", f"Pick one of: {', '.join(SAMPLER_NAMES)}.")


def sampler_from_infotext(sampler: str, schedule: str | None) -> str | None:
    """The UI sampler for A1111's "Sampler" + "Schedule type" (old files say "DPM++ 2M Karras" in one field)."""
    sampler = sampler.strip()
    if sampler in ("DPM++ 2M Karras",):
        return "DPM++ 2M Karras"
    if sampler == "DPM++ 2M":  # A1111 1.9+: DPM++ 2M's automatic schedule is Karras
        return "DPM++ 2M" if schedule and schedule not in ("Karras", "Automatic") else "DPM++ 2M Karras"
    return sampler if sampler in SAMPLER_NAMES else None


# ----- parameters ----------------------------------------------------------------------------------------------

MIN_SIDE = 64
MAX_SIDE = 2048
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1  # A1111's seed range
MAX_PROMPT_CHARS = 10_000  # far beyond the 77 tokens CLIP reads; keeps the PNG's parameters chunk small


@dataclass(frozen=True)
class ImageParams:
    """What to draw and how. Field names follow AUTOMATIC1111's."""

    prompt: str = ""  # what to draw (may be empty only with an init image)
    negative_prompt: str = ""  # what to steer away from (no effect when CFG scale <= 1)
    sampler: str = "DPM++ 2M Karras"  # one of SAMPLER_NAMES
    steps: int = 25  # denoising steps (image-to-image runs steps x strength of them)
    cfg_scale: float = 7.0  # classifier-free guidance; 0-1 = off (few-step models)
    width: int = 512  # pixels, a multiple of 8
    height: int = 512  # pixels, a multiple of 8
    seed: int = -1  # -1 = random; image i of the run uses seed + i
    batch_size: int = 1  # images drawn at once
    batch_count: int = 1  # batches drawn one after another
    init_image: str | None = None  # path of an image: image-to-image when set
    strength: float = 0.75  # image-to-image: how much of the init image is redrawn (0-1]

    def check_inputs(self, max_side: int = MAX_SIDE, model: str = "this model", few_step: bool = True) -> None:
        """Raise InputError naming the first setting that cannot work. `few_step`: whether `model` is a few-step
        model (LCM, Turbo, Lightning), the only kind the LCM sampler works with."""
        if blank(self.prompt) and not self.init_image:
            raise InputError("Type a prompt first: the prompt is empty (it may be empty only with an init image).")
        for what, text in (("The prompt", self.prompt), ("The negative prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(
                    f"{what} is {len(text)} characters; the studio takes at most {MAX_PROMPT_CHARS}.",
                    "The text encoder reads only its first 77 tokens (about 300 characters) anyway.",
                )
            reason = invalid_text(text, what)
            if reason:
                raise InputError(reason)
        sampler_named(self.sampler)
        if self.sampler == "LCM" and not few_step:
            raise InputError(
                f"The LCM sampler works only with few-step models (LCM, LCM-LoRA, Turbo, Lightning); {model} is not one.",
                "Pick another sampler: DPM++ 2M Karras or Euler a.",
            )
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise InputError(f"Steps must be 1 or more, not {self.steps}.")
        if self.steps > MAX_STEPS:
            raise InputError(f"Steps must be at most {MAX_STEPS}, not {self.steps}.")
        if not 0 <= self.cfg_scale <= 30:
            raise InputError(f"CFG scale must be between 0 and 30, not {self.cfg_scale:g}.")
        for name, value in (("Width", self.width), ("Height", self.height)):
            if value % 8:
                raise InputError(
                    f"{name} must be a multiple of 8, not {value}.",
                    f"Try {max(8, value // 8 * 8)} or {value // 8 * 8 + 8}.",
                )
            if not MIN_SIDE <= value <= max_side:
                raise InputError(f"{name} {value} is beyond what {model} supports: use {MIN_SIDE} to {max_side} px.")
        if not -1 <= self.seed <= MAX_SEED:
            raise InputError(f"Seed must be -1 (random) or a whole number from 0 to {MAX_SEED}, not {self.seed}.")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InputError(f"Batch size must be between 1 and {MAX_BATCH_SIZE}, not {self.batch_size}.")
        if not 1 <= self.batch_count <= MAX_BATCH_COUNT:
            raise InputError(f"Batch count must be between 1 and {MAX_BATCH_COUNT}, not {self.batch_count}.")
        if self.init_image:
            if not 0 < self.strength <= 1:
                raise InputError(f"Denoising strength must be more than 0 and at most 1, not {self.strength:g}.")
            if int(self.steps * self.strength) < 1:
                raise InputError(
                    f"{self.steps} steps at strength {self.strength:g} leave no step to run.",
                    "Raise the steps or the denoising strength.",
                )

    @property
    def images(self) -> int:
        return self.batch_size * self.batch_count

    @property
    def steps_per_batch(self) -> int:
        """Denoising steps one pipeline call runs (image-to-image skips the first 1 - strength of them)."""
        return min(int(self.steps * self.strength), self.steps) if self.init_image else self.steps


@dataclass(frozen=True)
class ImageDefaults:
    """Settings a model works best with; the UI applies them when the model is picked."""

    steps: int
    cfg_scale: float
    width: int
    height: int
    sampler: str
    note: str = ""


TINY_SOURCE = "tiny-sd"  # the picker's value for the test pipeline
TINY_LABEL = "Test pipeline (random weights, draws noise)"
TINY_FOLDER = "tiny-sd-pipeline"  # under the data dir's models/
TINY_MARKER = "tiny-model.json"


def is_few_step(name: str) -> bool:
    lowered = name.lower()
    return "turbo" in lowered or "lightning" in lowered or "lcm" in lowered


def lcm_applies(spec: ModelSpec) -> bool:
    """Whether the LCM sampler suits the model: LCM-distilled and other few-step models, not ordinary SD."""
    return not is_tiny(spec) and is_few_step(f"{spec.source} {spec.label}")


def is_tiny(spec: ModelSpec) -> bool:
    return spec.label == TINY_LABEL or (spec.path is not None and spec.path.name == TINY_FOLDER)


def defaults_for(spec: ModelSpec) -> ImageDefaults:
    """Few-step models (SD-Turbo, SDXL-Turbo, LCM, Lightning) get 1-4 steps and no CFG; SDXL draws 1024 px."""
    name = f"{spec.source} {spec.label}".lower()
    if is_tiny(spec):
        return ImageDefaults(10, 7.0, 64, 64, "Euler a", "A test pipeline with random weights: it draws noise.")
    native = native_size(spec)
    if "lcm" in name:
        return ImageDefaults(4, 1.0, native, native, "LCM", "LCM model: 4 steps, CFG 1, the LCM sampler.")
    if is_few_step(name):
        return ImageDefaults(1, 0.0, native, native, "Euler a", "Few-step model: 1-4 steps, CFG 0.")
    if native >= 1024:
        return ImageDefaults(30, 6.0, native, native, "DPM++ 2M Karras")
    return ImageDefaults(25, 7.0, native, native, "DPM++ 2M Karras")


def native_size(spec: ModelSpec) -> int:
    """The size the model was trained at: from the catalog, a diffusers folder's configs, or the file's family."""
    entry = catalog_entry(spec.source)
    if entry is not None:
        from studio.models.estimate import KNOWN_IMAGE_SIZES

        return dict(KNOWN_IMAGE_SIZES).get(spec.source, 1024 if entry.params > 2_000_000_000 else 512)
    path = spec.path
    if path is not None and path.is_dir():
        try:
            unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
            vae = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
            sample = unet.get("sample_size")
            sample = sample[0] if isinstance(sample, (list, tuple)) else sample
            return int(sample) * 2 ** (len(vae.get("block_out_channels") or [0, 0, 0, 0]) - 1)
        except (OSError, ValueError, TypeError):
            return 512
    if path is not None and path.is_file() and path.stat().st_size > 4_000_000_000:
        return 1024  # SDXL-sized checkpoints
    return 512


def model_name(spec: ModelSpec) -> str:
    """The model's name in parameters texts and the API: a Hub id, a folder's name, a file's stem, or "tiny-sd"."""
    if is_tiny(spec):
        return TINY_SOURCE
    if spec.source_type == "file" and spec.path is not None:
        return spec.path.stem
    return spec.source if spec.source_type == "hub" else spec.name


def max_side_for(spec: ModelSpec) -> int:
    return max(MAX_SIDE, 2 * native_size(spec))


# ----- the AUTOMATIC1111 parameters text -----------------------------------------------------------------------

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # as A1111's infotext_utils
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
VERSION = "ML Studio"


def _quote(text: Any) -> str:
    text = str(text)
    return text if not any(c in text for c in ",\n:") else json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def infotext(params: ImageParams, seed: int, model: str) -> str:
    """The `parameters` text of one image, exactly as AUTOMATIC1111 writes it."""
    s = sampler_named(params.sampler)
    fields: list[tuple[str, Any]] = [
        ("Steps", params.steps),
        ("Sampler", s.a1111),
        ("Schedule type", s.schedule),
        ("CFG scale", _number(float(params.cfg_scale))),
        ("Seed", seed),
        ("Size", f"{params.width}x{params.height}"),
        ("Model", model),
    ]
    if params.init_image:
        fields.append(("Denoising strength", _number(float(params.strength))))
    fields.append(("Version", VERSION))
    lines = [params.prompt.strip()]
    if params.negative_prompt.strip():
        lines.append(f"Negative prompt: {params.negative_prompt.strip()}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, str]:
    """AUTOMATIC1111's parameters text -> {"Prompt", "Negative prompt", "Steps", ..., "Size-1", "Size-2"}."""
    res: dict[str, str] = {}
    prompt, negative, in_negative = "", "", False
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        if in_negative:
            negative += ("" if not negative else "\n") + line
        else:
            prompt += ("" if not prompt else "\n") + line
    for key, value in _RE_PARAM.findall(last):
        value = _unquote(value.strip())
        m = _RE_SIZE.match(value)
        if m is not None:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        else:
            res[key] = value
    res["Prompt"], res["Negative prompt"] = prompt, negative
    return res


@dataclass(frozen=True)
class Restored:
    """Settings read back from a PNG: the params, the model name it names, and what could not be restored."""

    params: ImageParams
    model: str
    notes: tuple[str, ...]


def params_from_infotext(text: str, base: ImageParams | None = None) -> Restored:
    """ImageParams from a parameters text; fields it lacks keep `base`'s values."""
    fields = parse_infotext(text)
    p = base or ImageParams()
    notes: list[str] = []
    changes: dict[str, Any] = {"prompt": fields["Prompt"], "negative_prompt": fields["Negative prompt"]}

    def number(key: str, kind: type) -> Any:
        try:
            return kind(float(fields[key])) if kind is int else kind(fields[key])
        except (KeyError, ValueError):
            return None

    for key, name, kind in (
        ("Steps", "steps", int),
        ("CFG scale", "cfg_scale", float),
        ("Seed", "seed", int),
        ("Size-1", "width", int),
        ("Size-2", "height", int),
        ("Denoising strength", "strength", float),
    ):
        value = number(key, kind)
        if value is not None:
            changes[name] = value
    if "Sampler" in fields:
        sampler = sampler_from_infotext(fields["Sampler"], fields.get("Schedule type"))
        if sampler is None:
            notes.append(f"Sampler {fields['Sampler']} is not available here; kept {p.sampler}.")
        else:
            changes["sampler"] = sampler
    return Restored(replace(p, **changes), fields.get("Model", ""), tuple(notes))


def read_png_parameters(path: str | Path) -> str:
    """The `parameters` text chunk of a PNG (as A1111 and this studio write it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            text = img.info.get("parameters") or getattr(img, "text", {}).get("parameters")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{Path(path).name}: not an image file ({type(exc).__name__}).") from None
    if not text:
        raise InputError(
            f"{Path(path).name} holds no generation parameters (no 'parameters' text chunk).",
            "Drop a PNG saved by this studio or by AUTOMATIC1111 / Forge.",
        )
    return str(text)


# ----- memory measures ---------------------------------------------------------------------------------------

ATTENTION_SLICING = "attention slicing"
VAE_TILING = "VAE tiling"
CPU_OFFLOAD = "model CPU offload"
ONE_AT_A_TIME = "one image at a time"
UNET_SHARE = 0.8  # the denoiser's share of a SD pipeline's weights (SD 1.5: 0.81, SDXL: 0.74): on the device
ATTENTION_SLICED = 0.5  # the UNet's activations left with attention computed in two slices
VAE_TILE_PIXELS = 512 * 512  # diffusers decodes in tiles of about this size, one image at a time


@dataclass(frozen=True)
class MemoryChoice:
    """How a run fits the budget: the measures switched on and the workload the manager accounts."""

    measures: tuple[str, ...]
    accounted: Workload  # what the lease is accounted as (smaller than the real one when measures are on)
    need: int  # bytes the run needs on the device with these measures
    room: int  # bytes the budget has, or can free by evicting idle models

    def describe(self) -> str:
        if not self.measures:
            return f"fits without memory measures ({fmt_bytes(self.need)} of {fmt_bytes(self.room)} available)"
        return (
            f"{', '.join(self.measures)} switched on: the run needs {fmt_bytes(self.need)} with them, "
            f"{fmt_bytes(self.room)} is available"
        )


def measure_stages(device: str) -> list[tuple[str, ...]]:
    stages = [(), (ATTENTION_SLICING,), (ATTENTION_SLICING, VAE_TILING)]
    if device == "cuda":  # offloading to the CPU means nothing when the model already runs there
        stages.append((ATTENTION_SLICING, VAE_TILING, CPU_OFFLOAD))
    return stages


def need_with(measures: tuple[str, ...], weights: int, fixed: int, per_pixel: float, pixels: int, batch: int) -> int:
    """Device bytes with `measures`: the runtime's pixel term is split between the UNet and the VAE decode."""
    unet = vae = per_pixel * pixels * batch / 2
    if ATTENTION_SLICING in measures:
        unet *= ATTENTION_SLICED
    if VAE_TILING in measures:  # tiled and sliced: one tile of one image at a time
        vae = per_pixel * min(pixels, VAE_TILE_PIXELS) / 2
    on_device = weights * UNET_SHARE if CPU_OFFLOAD in measures else weights
    return int(on_device + fixed + unet + vae)


# ----- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedImage:
    """One image on disk."""

    path: Path
    seed: int
    infotext: str


@dataclass(frozen=True)
class RunReport:
    """How a run went."""

    model: str
    seeds: tuple[int, ...]  # of the images written
    first_seed: int  # the seed the run started from (the random one when -1 was asked)
    measures: tuple[str, ...]  # memory measures chosen before the run
    recovered: tuple[str, ...]  # steps taken after running out of memory
    stopped: bool
    seconds: float
    planned: int  # images asked for

    def summary(self) -> str:
        n = len(self.seeds)
        seeds = ", ".join(str(s) for s in self.seeds[:8]) + (" …" if n > 8 else "")
        text = f"{n} image{'s' if n != 1 else ''} in {self.seconds:.1f} s · seed {seeds or self.first_seed}"
        if self.stopped:
            text += f" · stopped after {n} of {self.planned}"
        text += " · memory: " + (", ".join(self.measures) if self.measures else "no measures needed")
        if self.recovered:
            text += " · out of memory, recovered with: " + ", ".join(self.recovered)
        return text


@dataclass
class ImageUpdate:
    """What a run has produced so far."""

    images: list[SavedImage]  # written so far in this run, in order
    done_steps: int
    total_steps: int
    message: str
    report: RunReport | None = None  # set on the last update

    @property
    def finished(self) -> bool:
        return self.report is not None


class _Stopped(Exception):
    """Raised from the step callback to end a pipeline call after the current step."""


# ----- the engine ----------------------------------------------------------------------------------------------


def load_init_image(path: str | Path, width: int, height: int) -> Any:
    """The init image as RGB at the output size, or a specific error if the file is not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = Path(str(path)).name
    try:
        with Image.open(path) as img:
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise InputError(f"The init image {name} does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(
            f"The init image {name} is not an image ({type(exc).__name__}).", "Use a PNG, JPEG or WebP file."
        ) from None
    return rgb if rgb.size == (width, height) else rgb.resize((width, height), Image.Resampling.LANCZOS)


@dataclass
class ImageEngine:
    """Draws images with diffusion pipelines leased from the manager and writes them to `outputs`."""

    manager: ModelManager
    outputs: Path  # data_dir/outputs/images
    models_dir: Path  # data_dir/models: the test pipeline is built here on first use
    offline: bool = False
    lane: GpuLane = field(default_factory=GpuLane, repr=False)  # shared with the other engines in a studio
    _save_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ----- models --------------------------------------------------------------------------------------------

    def tiny_spec(self, precision: str = "fp32") -> ModelSpec:
        """The test pipeline (random weights); `generate` builds it under models/ on first use."""
        folder = self.models_dir / TINY_FOLDER
        return ModelSpec("image", str(folder), "folder", precision, self.manager.device, label=TINY_LABEL)

    def ensure_tiny(self) -> Path:
        from studio.models.tiny import FORMAT_VERSION, build_tiny_sd_pipeline

        target = self.models_dir / TINY_FOLDER
        stamp = {"kind": "sd-pipeline", "seed": 0, "format": FORMAT_VERSION}
        if folders.is_complete(target, TINY_MARKER, stamp):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with folders.locked(target.parent / f".{TINY_FOLDER}.lock"):
            if not folders.is_complete(target, TINY_MARKER, stamp):
                staging = target.parent / f".{TINY_FOLDER}.building-{os.getpid()}"
                build_tiny_sd_pipeline(staging, seed=0)
                (staging / TINY_MARKER).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
                folders.move_into_place(staging, target, TINY_MARKER, stamp)
        return target

    def check_available(self, spec: ModelSpec) -> None:
        """A Hub model not in the local cache needs the Hub: offline, or with the Hub out of reach (one quick
        connection, not a minute of retries), say so before trying."""
        if spec.source_type != "hub":
            return
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.source, "model_index.json", revision=spec.revision)
        except Exception:  # noqa: BLE001 - a malformed id: the loader says what is wrong
            return
        if isinstance(cached, str):
            return
        if self.offline:
            raise ModelLoadError(
                f"{spec.source} is not downloaded and the studio is offline.",
                "Start the studio without --offline to download it, or pick a local folder or .safetensors file.",
            )
        from studio.models.hub import NO_NETWORK_TIP, hub_unreachable

        why = hub_unreachable()
        if why:
            raise ModelLoadError(
                f"{spec.source} is not downloaded yet and the Hugging Face Hub is out of reach: {why}.", NO_NETWORK_TIP
            )

    def load(self, spec: ModelSpec, workload: Workload | None = None) -> ModelRecord:
        """Load the pipeline (building the test pipeline first, when it is that) and leave it loaded; its record."""
        if is_tiny(spec):
            self.ensure_tiny()
        self.check_available(spec)
        return self.manager.load(spec, workload)

    def is_loaded(self, spec: ModelSpec) -> bool:
        return self.manager.is_loaded(spec.key)

    # ----- memory --------------------------------------------------------------------------------------------

    def room(self, spec: ModelSpec) -> int:
        """Bytes the budget has for `spec`: free now plus what idle models (itself included) hold."""
        m = self.manager
        room = m.budget_bytes() - m.accounted_bytes()
        for rec in m.records():
            if rec.state == LOADED and rec.leases == 0:
                room += rec.accounted_bytes
        return room

    def plan_memory(self, spec: ModelSpec, params: ImageParams) -> MemoryChoice:
        """The first set of measures under which the estimate for this size and batch fits the budget."""
        real = Workload(batch=params.batch_size, width=params.width, height=params.height)
        est = self.manager.estimate(spec, real)
        small = self.manager.estimate(spec, Workload(batch=1, width=8, height=8))
        pixels = params.width * params.height
        per_pixel = max(0.0, (est.runtime_bytes - small.runtime_bytes) / max(1, pixels * params.batch_size - 64))
        fixed = max(0, small.runtime_bytes - int(per_pixel * 64))
        room = self.room(spec)
        stages = measure_stages(self.manager.device)
        for measures in stages:
            need = need_with(measures, est.weights_bytes, fixed, per_pixel, pixels, params.batch_size)
            if need <= room:
                break
        else:
            raise BudgetError(
                f"{params.width}x{params.height} x {params.batch_size} with {spec.name} needs about "
                f"{fmt_bytes(need)} even with {', '.join(measures)}, but the budget can free {fmt_bytes(room)}.",
                "Lower the size or the batch size, unload models in use, or raise --budget-gb.",
            )
        if not measures:
            return MemoryChoice((), real, need, room)
        # account the run as the workload whose estimate matches what it needs with these measures
        runtime = max(0, need - est.weights_bytes)
        side = math.sqrt(max(64.0, (runtime - fixed) / per_pixel)) if per_pixel > 0 else 8
        side = max(8, int(math.ceil(side / 8)) * 8)
        return MemoryChoice(measures, Workload(batch=1, width=side, height=side), need, room)

    # ----- outputs -------------------------------------------------------------------------------------------

    def save(self, image: Any, seed: int, text: str) -> SavedImage:
        """Write a PNG with its parameters chunk to today's folder (atomically: no half-written file is seen)."""
        from PIL import PngImagePlugin

        day = self.outputs / time.strftime("%Y-%m-%d")
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        with self._save_lock:
            path = tmp = None
            try:
                day.mkdir(parents=True, exist_ok=True)
                numbers = [int(m.group(1)) for f in day.iterdir() if (m := re.match(r"(\d{5,})-", f.name))]
                path = day / f"{max(numbers, default=0) + 1:05d}-{seed}.png"
                tmp = day / f".{path.name}.tmp"
                image.save(tmp, format="PNG", pnginfo=info)
                os.replace(tmp, path)
            except OSError as exc:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)  # never leave half a PNG (PIL may keep what it wrote)
                if not is_disk_full(exc):
                    raise
                raise DiskFullError(
                    f"The disk is full: {path.name if path else 'the image'} could not be saved in {day}.",
                    "Free some space on that disk (or start the studio with --data-dir on another one), then "
                    "generate again; the images saved before are kept.",
                ) from None
        return SavedImage(path, seed, text)

    def gallery(self, limit: int = 200) -> list[Path]:
        """Images of this and earlier sessions, newest first."""
        if not self.outputs.is_dir():
            return []
        files = [p for p in self.outputs.glob("*/*.png") if not p.name.startswith(".")]
        files.sort(key=lambda p: (p.parent.name, _number_of(p)), reverse=True)
        return files[:limit]

    # ----- generation ----------------------------------------------------------------------------------------

    def resolve_seed(self, params: ImageParams) -> ImageParams:
        if params.seed == -1:
            return replace(params, seed=random.randrange(MAX_SEED - MAX_BATCH_SIZE * MAX_BATCH_COUNT))
        return params

    def generate(
        self,
        spec: ModelSpec,
        params: ImageParams,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Iterator[ImageUpdate]:
        """Draw `params.images` images; yields after every batch (images already on disk) and a last update
        with the report. The seed used is in every update's images and in the report."""
        if is_tiny(spec):
            self.ensure_tiny()
        params.check_inputs(max_side_for(spec), spec.name, lcm_applies(spec))
        init = load_init_image(params.init_image, params.width, params.height) if params.init_image else None
        self.check_available(spec)
        params = self.resolve_seed(params)
        t0 = time.perf_counter()
        if not self.lane.wait(should_stop):  # stopped while another run was drawing
            report = RunReport(model_name(spec), (), params.seed, (), (), True, 0.0, params.images)
            yield ImageUpdate([], 0, 0, "Stopped before it started.", report)
            return
        try:
            yield from self._generate(spec, params, init, should_stop, on_step, t0)
        finally:
            self.lane.release()

    def _generate(
        self,
        spec: ModelSpec,
        params: ImageParams,
        init: Any,
        should_stop: Callable[[], bool],
        on_step: Callable[[int, int], None] | None,
        t0: float,
    ) -> Iterator[ImageUpdate]:
        choice = self.plan_memory(spec, params)
        saved: list[SavedImage] = []
        stopped = False
        with self.manager.acquire(spec, choice.accounted) as lease:
            run = _Run(lease.model, spec, params, init, choice.measures, self.manager.device, should_stop, on_step)
            try:
                for b in range(params.batch_count):
                    seeds = [params.seed + b * params.batch_size + k for k in range(params.batch_size)]
                    images = self.manager.run_with_recovery(
                        lambda seeds=seeds: run.batch(seeds), name=spec.name, exclude=spec.key, degrade=run.degrade()
                    )
                    for image, seed in zip(images, seeds, strict=True):
                        saved.append(self.save(image, seed, infotext(params, seed, model_name(spec))))
                    done = (b + 1) * params.batch_size
                    yield ImageUpdate(list(saved), run.done, run.total, f"{done} of {params.images} images")
                    if should_stop():
                        stopped = b + 1 < params.batch_count
                        break
            except _Stopped:
                stopped = True
            finally:
                run.restore()
        report = RunReport(
            model_name(spec),
            tuple(s.seed for s in saved),
            params.seed,
            choice.measures,
            tuple(run.recovered),
            stopped,
            time.perf_counter() - t0,
            params.images,
        )
        yield ImageUpdate(saved, run.done, run.total, report.summary(), report)


def _number_of(path: Path) -> int:
    m = re.match(r"(\d+)-", path.name)
    return int(m.group(1)) if m else 0


class _Run:
    """One run on one leased pipeline: scheduler, memory measures, the step callback, OOM degrade steps.

    Everything it changes on the shared pipeline (scheduler, attention processors, VAE tiling, offload hooks) is
    put back by `restore()`.
    """

    def __init__(
        self,
        pipe: Any,
        spec: ModelSpec,
        params: ImageParams,
        init: Any,
        measures: tuple[str, ...],
        device: str,
        should_stop: Callable[[], bool],
        on_step: Callable[[int, int], None] | None,
    ) -> None:
        import diffusers

        self.base, self.params, self.init, self.device = pipe, params, init, device
        self.should_stop, self.on_step = should_stop, on_step
        self.one_at_a_time = False
        self.recovered: list[str] = []
        self.done = 0
        self.total = params.steps_per_batch * params.batch_count
        sampler = sampler_named(params.sampler)
        scheduler = getattr(diffusers, sampler.scheduler).from_config(pipe.scheduler.config, **dict(sampler.options))
        if init is not None:
            self.pipe = diffusers.AutoPipelineForImage2Image.from_pipe(pipe, scheduler=scheduler)
            self._old_scheduler = None
        else:
            self.pipe, self._old_scheduler = pipe, pipe.scheduler
            pipe.scheduler = scheduler
        self.pipe.progress_bar = _NoBar  # progress goes to on_step only (see _NoBar); restore() removes it
        self._processors: dict | None = None  # the attention processors to put back after slicing
        self._tiling = self._offloaded = False
        for measure in measures:
            self.apply(measure)

    def apply(self, measure: str) -> None:
        if measure == ATTENTION_SLICING and self._processors is None and hasattr(self.base, "unet"):
            self._processors = dict(self.base.unet.attn_processors)
            self.pipe.enable_attention_slicing()
        elif measure == VAE_TILING and not self._tiling:
            self.pipe.vae.enable_tiling()
            self.pipe.vae.enable_slicing()
            self._tiling = True
        elif measure == CPU_OFFLOAD and self.device == "cuda" and not self._offloaded:
            self.pipe.enable_model_cpu_offload(device=self.device)
            self._offloaded = True
        elif measure == ONE_AT_A_TIME:
            self.one_at_a_time = True

    def degrade(self) -> list[tuple[str, Callable[[], None]]]:
        """The out-of-memory ladder after evicting idle models: steps not already in force."""
        steps = []
        for measure in (VAE_TILING, ONE_AT_A_TIME, CPU_OFFLOAD):
            if measure == VAE_TILING and self._tiling:
                continue
            if measure == ONE_AT_A_TIME and (self.one_at_a_time or self.params.batch_size == 1):
                continue
            if measure == CPU_OFFLOAD and (self._offloaded or self.device != "cuda"):
                continue
            steps.append((measure, lambda m=measure: self._degrade(m)))
        return steps

    def _degrade(self, measure: str) -> None:
        self.recovered.append(measure)
        self.apply(measure)

    def _callback(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, self.total)
        if self.should_stop():
            raise _Stopped
        return kwargs

    def batch(self, seeds: list[int]) -> list[Any]:
        """The images of one batch (PIL), one per seed."""
        before = self.done
        try:
            if self.one_at_a_time and len(seeds) > 1:
                return [img for s in seeds for img in self._call([s])]
            return self._call(seeds)
        except BaseException:
            self.done = before  # a retried batch counts its steps again
            raise

    def _call(self, seeds: list[int]) -> list[Any]:
        import torch

        p = self.params
        kwargs: dict[str, Any] = {
            "prompt": p.prompt,
            "negative_prompt": p.negative_prompt or None,
            "num_inference_steps": p.steps,
            "guidance_scale": p.cfg_scale,
            "num_images_per_prompt": len(seeds),
            "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
            "callback_on_step_end": self._callback,
        }
        if self.init is not None:
            kwargs.update(image=self.init, strength=p.strength)
        else:
            kwargs.update(width=p.width, height=p.height)
        with torch.inference_mode():
            return list(self.pipe(**kwargs).images)

    def restore(self) -> None:
        """Put the shared pipeline back as it was."""
        if self._offloaded:
            self.pipe.remove_all_hooks()
            self.base.to(self.device)
        if self._tiling:
            self.pipe.vae.disable_tiling()
            self.pipe.vae.disable_slicing()
        if self._processors is not None:
            self.base.unet.set_attn_processor(self._processors)
        if self._old_scheduler is not None:
            self.base.scheduler = self._old_scheduler
        self.pipe.__dict__.pop("progress_bar", None)


class _NoBar:
    """Stands in for a pipeline's per-step tqdm bar during a run. Progress goes to `on_step`; a tqdm bar, even a
    disabled one, is picked up by a UI that tracks tqdm (to show downloads), which would report every step twice."""

    def __init__(self, iterable: Any = None, total: int | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
