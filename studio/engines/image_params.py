"""What to draw, and the AUTOMATIC1111 parameters text that records it.

`ImageParams` is one image run's settings, named as AUTOMATIC1111 names them, with its limits and checks. The
sampler table maps A1111's sampler and schedule names to diffusers schedulers. `infotext` writes the
`parameters` text chunk an image carries, exactly as A1111 does; `parse_infotext` and `params_from_infotext`
read one back (from this studio, A1111 or Forge), and `read_png_parameters` takes it out of a PNG.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import InputError
from studio.text import blank, invalid_text

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
