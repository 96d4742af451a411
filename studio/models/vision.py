"""Vision-language models (image-text-to-text) before they are loaded: which sources are one, how many context
tokens an image costs at the model's resolution, and the memory estimate (vision tower + projector + language
model + KV cache, the image tokens counted in the context).

Everything here reads the model's small JSON files (config.json, processor_config.json / preprocessor_config.json)
or the catalog; nothing loads weights or imports transformers.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from studio.models.estimate import Estimate, Workload, estimate, load_precision
from studio.models.specs import ModelSpec, catalog_entry

# architectures names of image-text-to-text models (config.json "architectures"), for configs without vision_config
_VISION_ARCHITECTURES = ("ForConditionalGeneration", "ForImageTextToText", "VLForCausalLM")
_NOT_VISION = ("Whisper", "T5", "Bart", "Pegasus", "Marian", "MBart", "Speech", "Audio", "Blip2")


def _model_folder(spec: ModelSpec) -> Path | None:
    """The folder holding `spec`'s files: the folder itself, or the Hub snapshot already in the cache."""
    path = spec.path
    if path is not None:
        return path if path.is_dir() else None
    if spec.source_type != "hub":
        return None
    from studio.models.estimate import _hub_snapshot

    return _hub_snapshot(spec.source, spec.revision)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_config(spec: ModelSpec) -> dict[str, Any]:
    """config.json of a folder or cached Hub model ({} when there is none)."""
    folder = _model_folder(spec)
    return _read_json(folder / "config.json") if folder is not None else {}


def is_vision_config(config: dict[str, Any]) -> bool:
    """Whether a config.json describes an image-text-to-text model: it has a vision_config, or its architecture is
    a vision-language one (LLaVA, Qwen2-VL, Idefics3/SmolVLM, Gemma 3 ...)."""
    if isinstance(config.get("vision_config"), dict):
        return True
    archs = [a for a in config.get("architectures") or () if isinstance(a, str)]
    return any(a.endswith(_VISION_ARCHITECTURES) and not a.startswith(_NOT_VISION) for a in archs) and any(
        key in config for key in ("image_token_id", "image_token_index", "mm_tokens_per_image")
    )


def is_vision_source(spec: ModelSpec) -> bool:
    """Whether `spec` is a vision-language model: its kind says so, the catalog marks it as taking images, or its
    config.json (a folder, or a Hub model in the local cache) is an image-text-to-text one. GGUF files are text-only
    here (llama.cpp's projector files are not wired yet)."""
    if spec.kind == "vision":
        return True
    if spec.kind != "chat" or spec.backend == "llama.cpp" or spec.source_type in ("file", "starter"):
        return False
    entry = catalog_entry(spec.source)
    if entry is not None:
        return entry.images
    return is_vision_config(model_config(spec))


def vision_spec(spec: ModelSpec) -> ModelSpec:
    """`spec` as the manager holds it: kind "vision" when it is a vision-language model, else unchanged."""
    if spec.kind == "chat" and is_vision_source(spec):
        return replace(spec, kind="vision")
    return spec


# ----- image tokens ---------------------------------------------------------------------------------------


def processor_settings(spec: ModelSpec) -> dict[str, Any]:
    """The processor's settings from its files: processor_config.json (transformers 5 keeps the image processor's
    settings under "image_processor"), else preprocessor_config.json."""
    folder = _model_folder(spec)
    if folder is None:
        return {}
    data = _read_json(folder / "processor_config.json")
    image = data.get("image_processor") if isinstance(data.get("image_processor"), dict) else {}
    if not image:
        image = _read_json(folder / "preprocessor_config.json")
    return {**image, **{k: v for k, v in data.items() if k != "image_processor"}}


def image_tokens(spec: ModelSpec, width: int = 0, height: int = 0) -> int:
    """Context tokens one image of width x height costs on `spec` at the model's resolution, as its processor
    counts them (0 x 0: the model's native size). Known families: LLaVA (one token per patch of the resized image),
    Qwen2-VL / Qwen2.5-VL (the image resized within min/max pixels, one token per 2x2 patches), Gemma 3 (a fixed
    count), Idefics3 / SmolVLM (a fixed count per tile, the image split into tiles plus a global one)."""
    config = model_config(spec)
    settings = processor_settings(spec)
    model_type = str(config.get("model_type", ""))
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    if model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        return _qwen_tokens(settings, vision, width, height)
    if model_type == "gemma3":
        return int(config.get("mm_tokens_per_image") or 256)
    if model_type in ("idefics3", "smolvlm"):
        return _idefics3_tokens(config, settings, width, height)
    if model_type == "llava" or settings.get("processor_class") == "LlavaProcessor":
        return _llava_tokens(config, settings, vision)
    entry = catalog_entry(spec.source)
    return (
        entry.image_tokens if entry is not None and entry.image_tokens else int(config.get("image_seq_length") or 576)
    )


def _llava_tokens(config: dict, settings: dict, vision: dict) -> int:
    crop = settings.get("crop_size") or {}
    size = settings.get("size") or {}
    side = int(vision.get("image_size") or 336)
    h = int(crop.get("height") or size.get("height") or size.get("shortest_edge") or side)
    w = int(crop.get("width") or size.get("width") or size.get("shortest_edge") or side)
    patch = int(settings.get("patch_size") or vision.get("patch_size") or 14)
    extra = int(settings.get("num_additional_image_tokens", 0))
    tokens = (h // patch) * (w // patch) + extra
    if (settings.get("vision_feature_select_strategy") or config.get("vision_feature_select_strategy")) == "default":
        tokens -= 1  # the CLS embedding is dropped
    return tokens


def _smart_resize(height: int, width: int, factor: int, low: int, high: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule (transformers' `smart_resize`, whose module needs torchvision): both sides a multiple
    of `factor`, the pixel count within [low, high], the aspect kept as closely as possible."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > high:
        beta = math.sqrt(height * width / high)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < low:
        beta = math.sqrt(low / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def _qwen_tokens(settings: dict, vision: dict, width: int, height: int) -> int:
    patch = int(settings.get("patch_size") or vision.get("patch_size") or 14)
    merge = int(settings.get("merge_size") or vision.get("spatial_merge_size") or 2)
    size = settings.get("size") or {}
    low = int(settings.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
    high = int(settings.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)
    h, w = _smart_resize(height or 448, width or 448, patch * merge, low, high)
    return (h // patch) * (w // patch) // (merge * merge)


def _idefics3_tokens(config: dict, settings: dict, width: int, height: int) -> int:
    per_tile = int(config.get("image_seq_len") or settings.get("image_seq_len") or 81)
    tile = int((settings.get("max_image_size") or {}).get("longest_edge") or 384)
    longest = int((settings.get("size") or {}).get("longest_edge") or 4 * tile)
    if not (width and height):
        return per_tile
    scale = min(1.0, longest / max(width, height))
    tiles = math.ceil(height * scale / tile) * math.ceil(width * scale / tile)
    return per_tile * (tiles + 1 if tiles > 1 else 1)


# ----- memory -----------------------------------------------------------------------------------------------


def estimate_vision(spec: ModelSpec, workload: Workload | None = None) -> Estimate:
    """Weights of the vision tower, the projector and the language model (all in the files, at the load precision)
    plus the language model's runtime for the context (KV cache, logits, one prompt pass: image tokens are prompt
    tokens, so they count in the context) and one pass of the vision tower over the workload's images."""
    workload = workload or Workload()
    text = estimate(replace(spec, kind="chat"), workload)  # chat's rules read the text model's shape (see below)
    config = model_config(spec)
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    element = 4 if load_precision(spec) == "fp32" else 2
    hidden = int(vision.get("hidden_size") or vision.get("embed_dim") or 1024)
    inner = int(vision.get("intermediate_size") or 4 * hidden)
    heads = int(vision.get("num_attention_heads") or vision.get("num_heads") or 16)
    tokens = image_tokens(spec) * 4 if vision.get("spatial_merge_size") else image_tokens(spec)  # patches
    images = max(1, workload.batch)
    tower = images * tokens * (4 * hidden + inner) * element + images * heads * tokens * tokens * element
    return Estimate(
        weights_bytes=text.weights_bytes,
        runtime_bytes=text.runtime_bytes + tower,
        params=text.params,
        method=f"{text.method}; vision: an image costs {image_tokens(spec)} tokens at the model's size",
    )
