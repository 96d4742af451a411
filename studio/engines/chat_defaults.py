"""A chat model's own sampling defaults: its generation_config.json (a folder, or a Hub snapshot already in the
cache), its GGUF metadata (`general.sampling.*`), or for the starter the studio's settings for it; else none (the
studio's defaults apply).

No gradio, no torch: the Chat tab shows (and applies) these when a model is picked.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError
from studio.models.specs import ModelSpec

log = logging.getLogger(__name__)

# The fields a model may set, as ChatParams names them, with the range the Chat tab's widgets take.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "top_k": (0, 200),
    "repetition_penalty": (0.5, 2.0),
    "max_new_tokens": (1, 32768),
}
WHOLE = ("top_k", "max_new_tokens")
# generation_config.json's names -> ChatParams'
GENERATION_CONFIG_KEYS = {k: k for k in RANGES}
# GGUF `general.sampling.<key>` -> ChatParams'
GGUF_KEYS = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "penalty_repeat": "repetition_penalty"}
# The starter's files carry no sampling settings. Its model card samples at temperature 0.2, top_p 0.9; at 4 bits
# (Q4_1, as llama.cpp runs it) that named another "capital of France" for one seed in three, so it answers greedily
# (0), and a 135M model rambles past a few hundred tokens, so its replies stop at 256.
STARTER_DEFAULTS = {"temperature": 0.0, "top_p": 0.9, "max_new_tokens": 256}
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class SamplingDefaults:
    """What a model says to sample with, and where it said so."""

    values: tuple[tuple[str, float | int], ...] = ()  # (ChatParams field, value), only what the model sets
    source: str = ""  # "generation_config.json", "GGUF metadata" or "starter settings"; "" = none of its own
    ignored: tuple[str, ...] = ()  # settings the model names that the studio cannot take (out of range), said

    def get(self, name: str, default: float | int) -> float | int:
        return dict(self.values).get(name, default)


def take(raw: dict[str, object], names: dict[str, str]) -> tuple[tuple[tuple[str, float | int], ...], tuple[str, ...]]:
    """The numbers in `raw` named by `names` (file key -> ChatParams field) that the widgets can take, and the ones
    they cannot (as "key value"): never silently corrected."""
    values: list[tuple[str, float | int]] = []
    ignored: list[str] = []
    for key, field in names.items():
        value = raw.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = RANGES[field]
        if not low <= value <= high or (field in WHOLE and value != int(value)):
            ignored.append(f"{key} {value:g}")
            continue
        values.append((field, int(value) if field in WHOLE else round(float(value), 4)))
    return tuple(values), tuple(ignored)


def from_generation_config(path: Path) -> SamplingDefaults:
    """A generation_config.json's sampling settings; `do_sample: false` (transformers' greedy) is temperature 0."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("no sampling defaults from %s: %s", path, exc)
        return SamplingDefaults()
    if not isinstance(raw, dict):
        return SamplingDefaults()
    values, ignored = take(raw, GENERATION_CONFIG_KEYS)
    if raw.get("do_sample") is False:
        values = (*(v for v in values if v[0] != "temperature"), ("temperature", 0.0))
    return SamplingDefaults(values, GENERATION_CONFIG if values or ignored else "", ignored)


def from_gguf(path: Path) -> SamplingDefaults:
    from studio.models.formats import gguf_sampling

    try:
        raw = gguf_sampling(path)
    except StudioError as exc:
        log.info("no sampling defaults from %s: %s", path, exc.message)
        return SamplingDefaults()
    values, ignored = take(raw, GGUF_KEYS)
    return SamplingDefaults(values, "GGUF metadata" if values or ignored else "", ignored)


def _hub_generation_config(spec: ModelSpec) -> Path | None:
    """The Hub model's generation_config.json if the cache holds it (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(spec.source, GENERATION_CONFIG, revision=spec.revision or None)
    return Path(found) if isinstance(found, str) else None


def sampling_defaults(spec: ModelSpec) -> SamplingDefaults:
    """The model's own sampling defaults, read from small files only (never loads the model)."""
    if spec.source_type == "starter":
        return SamplingDefaults(tuple(STARTER_DEFAULTS.items()), "starter settings")
    if spec.source_type == "hub":
        found = _hub_generation_config(spec)
        return from_generation_config(found) if found else SamplingDefaults()
    path = Path(spec.source).expanduser()
    if path.is_dir() and (path / GENERATION_CONFIG).is_file():
        return from_generation_config(path / GENERATION_CONFIG)
    if path.is_file():
        from studio.models.formats import is_gguf

        if is_gguf(path):
            return from_gguf(path)
        if (path.parent / GENERATION_CONFIG).is_file():  # a single .safetensors file beside its config
            return from_generation_config(path.parent / GENERATION_CONFIG)
    return SamplingDefaults()
