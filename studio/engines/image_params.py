"""What to draw, and the AUTOMATIC1111 parameters text that records it.

`ImageParams` is one image run's settings, named as AUTOMATIC1111 names them, with its limits and checks. The
sampler table maps A1111's sampler and schedule names to diffusers schedulers. `infotext` writes the
`parameters` text chunk an image carries, exactly as A1111 does; `parse_infotext` and `params_from_infotext`
read one back (from this studio, A1111 or Forge), and `read_png_parameters` takes it out of a PNG.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
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
MAX_RESTORED_INT = 10**18  # a step count, seed or side read back beyond this is not one
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
KEYWORD = b"parameters\0"  # a text chunk's data: its keyword, a NUL, then the text
MAX_PARAMETERS_BYTES = 1 << 20  # a parameters text is a few hundred bytes; 1 MB is far past any real one


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


def params_from_infotext(text: str, base: ImageParams | None = None, where: str = "The parameters text") -> Restored:
    """ImageParams from a parameters text; fields it lacks keep `base`'s values. A number no setting can hold
    (inf, nan, 400 digits) raises InputError starting with `where`."""
    fields = parse_infotext(text)
    p = base or ImageParams()
    notes: list[str] = []
    changes: dict[str, Any] = {"prompt": fields["Prompt"], "negative_prompt": fields["Negative prompt"]}

    def number(key: str, kind: type) -> Any:
        """The field as a number; None when it is missing or not a number (the setting stays as it is)."""
        raw = fields.get(key)
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            return None
        if value is None:
            return None
        whole = math.isfinite(value) and value == int(value) and abs(value) <= MAX_RESTORED_INT
        if not math.isfinite(value) or (kind is int and not whole):
            shown = raw if len(raw) <= 40 else f"{raw[:20]}… ({len(raw)} characters)"
            raise InputError(
                f"{where} says {key.split('-')[0]}: {shown}, which is not a number the studio can use.",
                "Type the setting in by hand.",
            )
        return int(value) if kind is int else value

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
    """The `parameters` text chunk of a PNG (tEXt, zTXt or iTXt, as A1111 and this studio write it). Only the
    chunks are read, never the pixels (a header may claim any size), and at most MAX_PARAMETERS_BYTES of text."""
    name = Path(path).name
    try:
        with open(path, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise InputError(f"{name}: not an image file (a PNG starts with its signature; this does not).")
            text = _parameters_chunk(f, name)
    except OSError as exc:
        raise InputError(f"{name}: the file cannot be read ({exc.strerror or type(exc).__name__}).") from None
    if not text:
        raise InputError(
            f"{name} holds no generation parameters (no 'parameters' text chunk).",
            "Drop a PNG saved by this studio or by AUTOMATIC1111 / Forge.",
        )
    return text


def _parameters_chunk(f: Any, name: str) -> str | None:
    """Walk the PNG's chunks (length, type, data, CRC) to the first text chunk whose keyword is `parameters`."""
    too_large = InputError(
        f"{name}: its parameters text is larger than the {MAX_PARAMETERS_BYTES // 1024**2} MB the studio reads.",
        "A parameters text is a few hundred bytes: this PNG does not hold one the studio can restore.",
    )
    while True:
        head = f.read(8)
        if len(head) < 8:
            return None  # the file ends before IEND: whatever it held is read
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return None
        start = f.tell()
        if kind in TEXT_CHUNKS and length >= len(KEYWORD) and f.read(len(KEYWORD)) == KEYWORD:
            if length > MAX_PARAMETERS_BYTES:
                raise too_large
            data = f.read(length - len(KEYWORD))
            try:
                return _chunk_text(kind, data, too_large)
            except (zlib.error, ValueError, IndexError):
                raise InputError(f"{name}: its parameters text chunk is damaged and cannot be read.") from None
        f.seek(start + length + 4)  # past the data and its CRC


def _chunk_text(kind: bytes, data: bytes, too_large: InputError) -> str:
    """The text of a tEXt (Latin-1), zTXt (Latin-1, compressed) or iTXt (UTF-8, maybe compressed) chunk's data
    after its keyword; decompressing stops at MAX_PARAMETERS_BYTES."""
    compressed = kind == b"zTXt"
    encoding = "latin-1"
    if kind == b"zTXt":
        data = data[1:]  # the compression method (0: zlib)
    elif kind == b"iTXt":
        compressed, encoding = data[0] == 1, "utf-8"
        data = data[2:].split(b"\0", 2)[2]  # past the method, the language tag and the translated keyword
    if compressed:
        inflate = zlib.decompressobj()
        data = inflate.decompress(data, MAX_PARAMETERS_BYTES + 1)
        if len(data) > MAX_PARAMETERS_BYTES or inflate.unconsumed_tail:
            raise too_large
    return data.decode(encoding)
