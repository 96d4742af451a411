"""Images: Stable Diffusion text-to-image and image-to-image on the shared model manager.

No gradio here. The Image tab and /v1/images/generations both call `ImageEngine.generate()`, a generator that
yields after every finished batch; per-step progress goes to an `on_step` callback and to `progress()` (what any
page shows, a page opened mid-run too), and `should_stop` is checked after every step: Stop ends after the current
step, keeps the images already finished and, as AUTOMATIC1111 does, decodes the latents where it landed and saves
them as partial images (`NNNNN-SEED-partial.png`, "Stopped at: step S of N" in their parameters).

Every image is written to `outputs/images/YYYY-MM-DD/NNNNN-SEED.png` before it is handed out, with a `parameters`
text chunk in the AUTOMATIC1111 format (`studio.engines.image_params`), which `parse_infotext` reads back. It is
written under a hidden temporary name and renamed, so a full disk leaves no partial file: the run ends with a
DiskFullError saying where.

Memory: before a run, the manager's estimate for the size and batch is compared with what the budget can free; if
it does not fit, attention slicing, then VAE tiling, then model CPU offload (CUDA) are switched on
(`studio.engines.image_memory`), and the run is accounted with the smaller runtime they leave. Out of memory during
a run: evict idle models and retry, then VAE tiling, then one image at a time, then CPU offload, then
StudioOutOfMemory.
"""

from __future__ import annotations

import json
import logging
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

from studio.engines.image_memory import (
    ATTENTION_SLICING,
    CPU_OFFLOAD,
    ONE_AT_A_TIME,
    VAE_TILING,
    MemoryChoice,
    measure_stages,
    need_with,
)
from studio.engines.image_params import (
    MAX_BATCH_COUNT,
    MAX_BATCH_SIZE,
    MAX_SEED,
    MAX_SIDE,
    ImageParams,
    infotext,
    sampler_named,
)
from studio.engines.lane import GpuLane
from studio.errors import BudgetError, DiskFullError, InputError, ModelLoadError, is_disk_full
from studio.models import folders
from studio.models.estimate import Workload
from studio.models.manager import ModelManager
from studio.models.records import LOADED, ModelRecord
from studio.models.specs import ModelSpec, catalog_entry
from studio.text import fmt_bytes

log = logging.getLogger(__name__)

# ----- models: defaults, sizes, names --------------------------------------------------------------------------


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
        from studio.models.dims import KNOWN_IMAGE_SIZES

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
    partial: tuple[int, ...] = ()  # seeds of the partially denoised images saved where Stop landed
    stopped_at: tuple[int, int] | None = None  # (step, steps) of the batch Stop ended

    def summary(self) -> str:
        n = len(self.seeds)
        seeds = ", ".join(str(s) for s in self.seeds[:8]) + (" …" if n > 8 else "")
        text = f"{n} image{'s' if n != 1 else ''} in {self.seconds:.1f} s · seed {seeds or self.first_seed}"
        if self.stopped:
            text += f" · stopped after {n} of {self.planned}"
        if self.partial and self.stopped_at:
            k = len(self.partial)
            text += (
                f" · {k} partial image{'s' if k != 1 else ''} kept (step {self.stopped_at[0]} of {self.stopped_at[1]})"
            )
        text += " · memory: " + (", ".join(self.measures) if self.measures else "no measures needed")
        if self.recovered:
            text += " · out of memory, recovered with: " + ", ".join(self.recovered)
        return text


@dataclass(frozen=True)
class RunProgress:
    """Where the run being drawn stands (the engine draws one run at a time); `idle` when none runs."""

    phase: str = "idle"  # idle | waiting (for another run) | loading (the model) | drawing
    image: int = 0  # first image of the batch being drawn, from 1
    batch_size: int = 1
    images: int = 0  # images the run draws
    step: int = 0  # steps done in this batch
    steps: int = 0  # steps per batch
    eta: float | None = None  # seconds left for the whole run, once a step has been timed
    finished_runs: int = 0  # runs ended since the engine started: a page refreshes its gallery when this moves

    @property
    def running(self) -> bool:
        return self.phase != "idle"

    def line(self) -> str:
        """One line: "Image 2 of 4 · step 3 of 10 · about 5 s left" ("" when idle)."""
        if self.phase == "waiting":
            return "Waiting for another run to finish…"
        if self.phase == "loading":
            return "Loading the model…"
        if self.phase != "drawing":
            return ""
        last = min(self.images, self.image + self.batch_size - 1)
        which = f"Image {self.image}" if last == self.image else f"Images {self.image}–{last}"
        text = f"{which} of {self.images} · step {self.step} of {self.steps}"
        if self.eta is not None:
            text += f" · about {self.eta:.0f} s left" if self.eta < 90 else f" · about {self.eta / 60:.0f} min left"
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
    """Raised from the step callback to end a pipeline call after the current step; carries the latents there."""

    def __init__(self, latents: Any = None, step: int = 0, steps: int = 0) -> None:
        super().__init__("stopped")
        self.latents, self.step, self.steps = latents, step, steps


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
    _progress: RunProgress = field(default_factory=RunProgress, repr=False)

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
        from studio.models.hub import hub_unreachable, no_network_tip

        why = hub_unreachable()
        if why:
            raise ModelLoadError(
                f"{spec.source} is not downloaded yet and the Hugging Face Hub is out of reach: {why}.",
                no_network_tip(why),
            )

    def prepare(self, spec: ModelSpec) -> None:
        """What must be there before the model can be planned or loaded: the test pipeline is built on first use, a
        Hub model not downloaded needs the Hub."""
        if is_tiny(spec):
            self.ensure_tiny()
        self.check_available(spec)

    def load(self, spec: ModelSpec, workload: Workload | None = None) -> ModelRecord:
        """Load the pipeline (see `prepare`) and leave it loaded; its record afterwards."""
        self.prepare(spec)
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

    def progress(self) -> RunProgress:
        """Where the run being drawn stands, for any page (one opened mid-run too)."""
        return self._progress

    def _set_progress(self, **changes: Any) -> None:
        self._progress = replace(self._progress, **changes)

    def save(self, image: Any, seed: int, text: str, suffix: str = "") -> SavedImage:
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
                path = day / f"{max(numbers, default=0) + 1:05d}-{seed}{suffix}.png"
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
            self._set_progress(phase="drawing" if self.is_loaded(spec) else "loading", images=params.images, eta=None)
            yield from self._generate(spec, params, init, should_stop, on_step, t0)
        finally:
            self._set_progress(phase="idle", finished_runs=self._progress.finished_runs + 1, eta=None)
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
        partial: list[SavedImage] = []
        stopped, stopped_at = False, None
        with self.manager.acquire(spec, choice.accounted) as lease:
            run = _Run(lease.model, spec, params, init, choice.measures, self.manager.device, should_stop, on_step)
            run.on_progress = self._step_progress(params, time.perf_counter())
            seeds: list[int] = []
            try:
                for b in range(params.batch_count):
                    seeds = [params.seed + b * params.batch_size + k for k in range(params.batch_size)]
                    self._set_progress(
                        phase="drawing",
                        image=b * params.batch_size + 1,
                        batch_size=params.batch_size,
                        step=0,
                        steps=params.steps_per_batch,
                    )
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
            except _Stopped as stop:
                stopped, stopped_at = True, (stop.step, stop.steps)
                for image, seed in zip(run.decode(stop.latents), seeds, strict=False):
                    text = infotext(params, seed, model_name(spec)) + f", Stopped at: step {stop.step} of {stop.steps}"
                    partial.append(self.save(image, seed, text, suffix="-partial"))
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
            tuple(s.seed for s in partial),
            stopped_at,
        )
        yield ImageUpdate(saved + partial, run.done, run.total, report.summary(), report)

    def _step_progress(self, params: ImageParams, t0: float) -> Callable[[int, int, int, int], None]:
        """The step callback's report to `progress()`: the step in this batch and the time left for the run."""

        def report(done: int, total: int, step: int, steps: int) -> None:
            eta = (time.perf_counter() - t0) / done * (total - done) if done else None
            self._set_progress(phase="drawing", step=step, steps=steps, eta=eta)

        return report


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
        self.on_progress: Callable[[int, int, int, int], None] | None = None  # done, total, batch's step, steps
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
        steps = getattr(pipe, "num_timesteps", None) or self.params.steps_per_batch
        if self.on_progress is not None:
            self.on_progress(self.done, self.total, step + 1, steps)
        if self.on_step is not None:
            self.on_step(self.done, self.total)
        if self.should_stop():
            raise _Stopped(kwargs.get("latents"), step + 1, steps)
        return kwargs

    def decode(self, latents: Any) -> list[Any]:
        """The partially denoised images (PIL) of latents a Stop left, or [] when there are none or they cannot be
        decoded (a partial image is a courtesy: the finished images are kept either way)."""
        if latents is None:
            return []
        import torch

        vae = self.pipe.vae
        try:
            with torch.inference_mode():
                scaled = latents.to(vae.dtype) / vae.config.scaling_factor
                decoded = vae.decode(scaled, return_dict=False)[0]
                return list(self.pipe.image_processor.postprocess(decoded, output_type="pil"))
        except (RuntimeError, ValueError, AttributeError) as exc:  # out of memory or an unusual pipeline
            log.warning("the partial image could not be decoded: %s", exc)
            return []

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
