"""What a model is, independent of whether it is loaded: `ModelSpec` (the manager's cache key) and the catalog."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import InputError
from studio.text import control_char, lone_surrogate

KINDS = ("chat", "image", "speech", "embedding", "base-for-training", "vision")
PRECISIONS = ("nf4", "int8", "fp16", "bf16", "fp32")
DEVICES = ("cuda", "cpu")
SOURCE_TYPES = ("hub", "folder", "file", "starter")

# Bytes per parameter at each precision. NF4 with double quantization stores 4 bits per weight plus a small
# block-scale overhead (about 0.127 bits); int8 (LLM.int8) keeps a per-row scale.
BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.02, "nf4": 0.516}


@dataclass(frozen=True)
class ModelSpec:
    """A model the manager can load. Hashable: two equal specs are the same cache entry."""

    kind: str  # chat | image | speech | embedding | base-for-training | vision (a chat model that takes images)
    source: str  # Hub id, a local folder or file path, or a starter model name
    source_type: str = "folder"  # hub | folder | file | starter
    precision: str = "fp32"  # nf4 | int8 | fp16 | bf16 | fp32
    device: str = "cpu"  # cuda | cpu
    revision: str | None = None  # Hub revision (branch, tag or commit); None = the default branch
    backend: str = ""  # engine-specific loader choice, e.g. "faster-whisper", "openai-whisper" or "llama.cpp"
    # what a backend fixes at load time, as (name, value) pairs: llama.cpp's context, KV cache type, flash attention
    options: tuple[tuple[str, str], ...] = ()
    label: str = field(default="", compare=False)  # display name; not part of the identity

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.source_type not in SOURCE_TYPES:
            raise ValueError(f"source_type must be one of {', '.join(SOURCE_TYPES)}, not {self.source_type!r}")
        if not self.source.strip():
            raise ValueError("source must not be empty")

    @property
    def name(self) -> str:
        """What the UI calls this model."""
        if self.label:
            return self.label
        if self.source_type in ("folder", "file"):
            return Path(self.source).name or self.source
        return self.source

    @property
    def key(self) -> str:
        """A stable string identity (used for calibration records and UI selection)."""
        raw = "|".join(
            [self.kind, self.source_type, self.source, self.revision or "", self.precision, self.device, self.backend]
        )
        if self.options:  # keys of specs without options stay what they were (calibration records use them)
            raw += "|" + ",".join(f"{k}={v}" for k, v in self.options)
        if self.backend == "llama.cpp":
            return f"{self.name}@llama.cpp/{self.device}#{hashlib.sha1(raw.encode()).hexdigest()[:10]}"
        return f"{self.name}@{self.precision}/{self.device}#{hashlib.sha1(raw.encode()).hexdigest()[:10]}"

    @property
    def path(self) -> Path | None:
        """The local path of a folder or file source, else None."""
        return Path(self.source).expanduser() if self.source_type in ("folder", "file") else None


@dataclass(frozen=True)
class CatalogEntry:
    """A recommended model with its known dimensions, so it can be estimated before it is downloaded."""

    hub_id: str
    kind: str
    params: int  # parameter count of the weights that are loaded
    label: str
    notes: str = ""
    default_precision: str = "nf4"
    # transformer shape for the KV-cache estimate (chat models): layers, KV heads, head dim
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    images: bool = False  # a vision-language model: the chat takes images with the text (kind "vision" loaded)
    image_tokens: int = 0  # context tokens one image costs at the model's default resolution (vision models)


# Models that run well on a 12 GB card. Dimensions are from the models' published configs.
CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "Qwen/Qwen2.5-7B-Instruct",
        "chat",
        7_615_616_512,
        "Qwen2.5 7B Instruct",
        "strong all-rounder",
        "nf4",
        28,
        4,
        128,
    ),
    CatalogEntry(
        "meta-llama/Llama-3.1-8B-Instruct",
        "chat",
        8_030_261_248,
        "Llama 3.1 8B Instruct",
        "gated on the Hub",
        "nf4",
        32,
        8,
        128,
    ),
    CatalogEntry(
        "mistralai/Mistral-7B-Instruct-v0.3", "chat", 7_248_023_552, "Mistral 7B Instruct v0.3", "", "nf4", 32, 8, 128
    ),
    CatalogEntry(
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "chat",
        1_711_376_384,
        "SmolLM2 1.7B Instruct",
        "small and fast",
        "bf16",
        24,
        32,
        64,
    ),
    # vision-language models (chat with images); image_tokens: one image at the processor's default size
    CatalogEntry(
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "chat",
        3_754_622_976,
        "Qwen2.5-VL 3B Instruct",
        "takes images; about 1 token per 28x28 pixels",
        "nf4",
        36,
        2,
        128,
        images=True,
        image_tokens=256,
    ),
    CatalogEntry(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "chat",
        8_292_166_656,
        "Qwen2.5-VL 7B Instruct",
        "takes images; about 1 token per 28x28 pixels",
        "nf4",
        28,
        4,
        128,
        images=True,
        image_tokens=256,
    ),
    CatalogEntry(
        "google/gemma-3-4b-it",
        "chat",
        4_300_079_472,
        "Gemma 3 4B it",
        "takes images (256 tokens each); gated on the Hub",
        "nf4",
        34,
        4,
        256,
        images=True,
        image_tokens=256,
    ),
    CatalogEntry(
        "HuggingFaceTB/SmolVLM-Instruct",
        "chat",
        2_246_272_880,
        "SmolVLM Instruct",
        "takes images; small and fast",
        "bf16",
        24,
        32,
        64,
        images=True,
        image_tokens=81,
    ),
    CatalogEntry(
        "llava-hf/llava-1.5-7b-hf",
        "chat",
        7_063_427_072,
        "LLaVA 1.5 7B",
        "takes images (576 tokens each)",
        "nf4",
        32,
        32,
        128,
        images=True,
        image_tokens=576,
    ),
    CatalogEntry(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "image",
        1_066_235_307,
        "Stable Diffusion 1.5",
        "512x512, 20-30 steps",
        "fp16",
    ),
    CatalogEntry("stabilityai/sd-turbo", "image", 1_300_000_000, "SD-Turbo", "1-4 steps, CFG 0", "fp16"),
    CatalogEntry("stabilityai/sdxl-turbo", "image", 3_500_000_000, "SDXL-Turbo", "1-4 steps, CFG 0", "fp16"),
    CatalogEntry(
        "stabilityai/stable-diffusion-xl-base-1.0",
        "image",
        3_500_000_000,
        "SDXL base 1.0",
        "1024x1024, 25-40 steps",
        "fp16",
    ),
    CatalogEntry("tiny", "speech", 39_000_000, "Whisper tiny", "", "fp16"),
    CatalogEntry("base", "speech", 74_000_000, "Whisper base", "", "fp16"),
    CatalogEntry("small", "speech", 244_000_000, "Whisper small", "", "fp16"),
    CatalogEntry("medium", "speech", 769_000_000, "Whisper medium", "", "fp16"),
    CatalogEntry("large-v3", "speech", 1_550_000_000, "Whisper large-v3", "", "fp16"),
    CatalogEntry("turbo", "speech", 809_000_000, "Whisper turbo", "large-v3 with 4 decoder layers", "fp16"),
    CatalogEntry(
        "BAAI/bge-small-en-v1.5",
        "embedding",
        33_360_000,
        "BGE small en v1.5",
        "384-dim text embeddings for /v1/embeddings (CLS pooling, normalised)",
        "fp16",
    ),
)


def catalog_entry(source: str) -> CatalogEntry | None:
    """The catalog entry for a Hub id or Whisper model name, if it is one we know."""
    for entry in CATALOG:
        if entry.hub_id == source:
            return entry
    return None


EMPTY_SOURCE = "Type a folder, a file path or a Hugging Face id to load."
BAD_SOURCE_CHAR = (
    "The model name has a character that no folder, file or Hugging Face id contains ({code}, character {at}). "
    "Type or paste the name again."
)


def check_name_chars(source: str) -> None:
    """Refuse a model name with a NUL, another control character or a lone surrogate (pasted or sent by a script)."""
    bad = control_char(source)
    if bad is None:
        bad = lone_surrogate(source)
    if bad is not None:
        raise InputError(BAD_SOURCE_CHAR.format(code=f"U+{ord(source[bad]):04X}", at=bad + 1))


def spec_from_form(device: str, kind: str, source: str, precision: str) -> ModelSpec:
    """A model typed or picked in a form (a folder, a file or a Hub id) as a ModelSpec, or what is wrong with it."""
    source = (source or "").strip()
    if not source:
        raise InputError(EMPTY_SOURCE)
    check_name_chars(source)
    if kind not in KINDS:
        raise InputError(f"Kind must be one of {', '.join(KINDS)}.")
    if precision not in PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}.")
    path = Path(source).expanduser()
    if path.is_dir():
        source_type, source = "folder", str(path.resolve())
    elif path.is_file():
        source_type, source = "file", str(path.resolve())
    elif source.startswith(("/", "./", "~", "..")) or "\\" in source:
        raise InputError(f"{source}: no such file or folder on the studio's machine.")
    else:
        source_type = "hub"
    backend = "faster-whisper" if kind == "speech" and source_type == "folder" else ""
    return ModelSpec(
        kind=kind, source=source, source_type=source_type, precision=precision, device=device, backend=backend
    )
