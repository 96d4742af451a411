"""GGUF vision models before they are loaded: a llama.cpp language model plus its projector file (`mmproj-*.gguf`,
llama.cpp's CLIP-style image encoder and projector), what the projector's header says, and its share of the memory
estimate.

A spec names its projector as the option ("mmproj", path), given explicitly or found beside the model: the
`mmproj*.gguf` file in the model's folder named like the model, or any one when the model is the folder's only
model (`find_projector`). Everything here reads GGUF headers through the `gguf` package; nothing imports llama_cpp.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.formats import BAD_FILE_TIP, gguf_info, is_gguf
from studio.models.specs import ModelSpec
from studio.text import fmt_bytes

OPTION = "mmproj"  # the spec option naming the projector file
NOT_A_PROJECTOR_TIP = "Pick the mmproj-*.gguf file published with the model (llama.cpp's vision projector)."


@dataclass(frozen=True)
class GgufVisionEntry:
    """A recommended GGUF vision model: its Hub repo, the model file and the projector file to fetch with it."""

    repo: str
    model_file: str
    projector_file: str
    label: str
    params: int  # of the language model and the vision encoder together
    image_tokens: int  # context tokens an image costs at the projector's size
    notes: str = ""


# GGUF vision models for a 12 GB card (ggml-org's own conversions, which llama.cpp's docs list for mtmd).
CATALOG: tuple[GgufVisionEntry, ...] = (
    GgufVisionEntry(
        "ggml-org/gemma-3-4b-it-GGUF",
        "gemma-3-4b-it-Q4_K_M.gguf",
        "mmproj-model-f16.gguf",
        "Gemma 3 4B it (GGUF Q4_K_M)",
        4_300_079_472,
        256,
        "takes images (256 tokens each); llama.cpp",
    ),
    GgufVisionEntry(
        "ggml-org/Qwen2.5-VL-3B-Instruct-GGUF",
        "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf",
        "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf",
        "Qwen2.5-VL 3B Instruct (GGUF Q4_K_M)",
        3_754_622_976,
        256,
        "takes images; about 1 token per 28x28 pixels; llama.cpp",
    ),
)


def catalog_value(entry: GgufVisionEntry) -> str:
    """What the Chat picker gives for a catalog entry: "owner/repo/model-file.gguf"."""
    return f"{entry.repo}/{entry.model_file}"


def catalog_for(source: str) -> GgufVisionEntry | None:
    return next((e for e in CATALOG if catalog_value(e) == source.strip()), None)


def catalog_files(entry: GgufVisionEntry, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """The model and projector files of a catalog entry in the Hugging Face cache (never networks), or a
    ModelLoadError with the command that downloads them (both files: several GB, so not on a pick)."""
    from huggingface_hub import try_to_load_from_cache

    found = []
    for name in (entry.model_file, entry.projector_file):
        hit = try_to_load_from_cache(entry.repo, name, cache_dir=cache_dir)
        if isinstance(hit, str) and Path(hit).is_file():
            found.append(Path(hit))
    if len(found) < 2:
        raise ModelLoadError(
            f"{entry.label} is not downloaded yet: it needs {entry.model_file} and its projector "
            f"{entry.projector_file} from {entry.repo}.",
            f"Download both once with `hf download {entry.repo} {entry.model_file} {entry.projector_file}`, then pick "
            "it again.",
        )
    return found[0], found[1]


def catalog_spec(source: str, device: str, cache_dir: Path | None = None) -> ModelSpec | None:
    """A GGUF vision catalog entry picked by its value as a llama.cpp spec of its cached file and projector, or None
    when `source` is no such entry."""
    entry = catalog_for(source)
    if entry is None:
        return None
    model, projector = catalog_files(entry, cache_dir)
    spec = ModelSpec("chat", str(model), "file", device=device, backend="llama.cpp", label=entry.label)
    return with_projector(spec, projector)


def is_projector_name(path: Path) -> bool:
    return path.name.lower().endswith(".gguf") and "mmproj" in path.name.lower()


def find_projector(model: Path) -> Path | None:
    """The projector beside a GGUF model file: the mmproj*.gguf in its folder whose name holds the model's stem
    (before its quantization suffix); when the model is the folder's only one, else the first projector by name.
    None when there is none (or, among several models, none named like this one)."""
    if is_projector_name(model):
        return None
    try:
        ggufs = sorted(p for p in model.parent.iterdir() if p.name.lower().endswith(".gguf"))
    except OSError:
        return None
    found = [p for p in ggufs if is_projector_name(p) and p.is_file()]
    stem = model.stem.lower().split("-q")[0].split(".q")[0]
    named = next((p for p in found if stem and stem in p.name.lower()), None)
    alone = all(p == model or is_projector_name(p) for p in ggufs)
    return named or (found[0] if alone and found else None)


def projector_path(spec: ModelSpec) -> Path | None:
    """The projector of a GGUF model spec: its "mmproj" option, else the file found beside the model."""
    explicit = dict(spec.options).get(OPTION)
    if explicit:
        return Path(explicit)
    path = spec.path
    if spec.source_type != "file" or path is None or not path.is_file():
        return None
    return find_projector(path)


def with_projector(spec: ModelSpec, projector: str | Path | None = None) -> ModelSpec:
    """`spec` naming its projector in its options (given, or found beside the model); unchanged without one."""
    found = Path(projector).expanduser().resolve() if projector else projector_path(spec)
    if found is None:
        return spec
    options = tuple((k, v) for k, v in spec.options if k != OPTION) + ((OPTION, str(found)),)
    return replace(spec, options=options)


def sees_images(spec: ModelSpec) -> bool:
    """Whether a GGUF model spec has a projector (explicit or beside it): the picker's and /v1/models' mark."""
    return projector_path(spec) is not None


# ----- the projector's header --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorInfo:
    """What a projector GGUF says about itself (clip.* metadata) and its weights."""

    path: Path
    projector_type: str  # "mlp" (LLaVA), "gemma3", "qwen2.5vl_merger", ... (llama.cpp's names)
    image_size: int  # the encoder's input side in pixels
    patch_size: int
    hidden: int  # the encoder's width
    ffn: int
    heads: int
    blocks: int
    projection_dim: int  # what an image token is projected to: the language model's embedding length
    merge: int  # patches merged into one image token per side (1: one token per patch)
    weights_bytes: int

    @property
    def image_tokens(self) -> int:
        """Context tokens one image costs at the encoder's own size."""
        side = self.image_size // max(self.patch_size, 1)
        return max(1, side * side // (self.merge * self.merge))

    def runtime_bytes(self, images: int = 1) -> int:
        """One pass of the encoder over `images` images (f32 activations and one layer's attention scores)."""
        patches = (self.image_size // max(self.patch_size, 1)) ** 2
        per_image = patches * (4 * self.hidden + self.ffn) * 4 + self.heads * patches * patches * 4
        return int(max(1, images) * per_image + 16 * 1024**2)


def _metadata(path: Path) -> dict[str, Any]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (OSError, ValueError, IndexError, struct.error) as exc:
        raise ModelLoadError(f"{path.name}: a damaged GGUF file ({exc}).", BAD_FILE_TIP) from None
    out: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if name.startswith(("clip.", "general.architecture")):
            try:
                out[name] = fld.contents()
            except (ValueError, IndexError):
                continue
    return out


@functools.lru_cache(maxsize=32)
def _info(path: str, size: int, mtime: float) -> ProjectorInfo:
    file = Path(path)
    weights = gguf_info(file)  # the studio's own header reader: a damaged header is one clear line
    if weights.config.get("data_end", 0) > size:
        raise ModelLoadError(
            f"{file.name}: the projector file is cut short ({fmt_bytes(size)} of the "
            f"{fmt_bytes(weights.config['data_end'])} its header describes).",
            "The download or copy was interrupted; fetch the file again.",
        )
    meta = _metadata(file)
    if meta.get("general.architecture") != "clip" or not meta.get("clip.has_vision_encoder", True):
        raise ModelLoadError(
            f"{file.name} is not a vision projector (its architecture is {meta.get('general.architecture')!r}, not "
            "'clip' with a vision encoder).",
            NOT_A_PROJECTOR_TIP,
        )

    def num(key: str, default: int = 0) -> int:
        value = meta.get(f"clip.vision.{key}")
        return int(value) if isinstance(value, (int, float)) else default

    scale = num("projector.scale_factor") or num("spatial_merge_size") or 1
    return ProjectorInfo(
        path=file,
        projector_type=str(meta.get("clip.projector_type") or meta.get("clip.vision.projector_type") or "mlp"),
        image_size=num("image_size", 336),
        patch_size=num("patch_size", 14),
        hidden=num("embedding_length", 1024),
        ffn=num("feed_forward_length", 4096),
        heads=num("attention.head_count", 16),
        blocks=num("block_count", 24),
        projection_dim=num("projection_dim"),
        merge=int(scale),
        weights_bytes=weights.stored_bytes,
    )


def projector_info(path: Path) -> ProjectorInfo:
    """The projector's header (cached per path, size and modification time), or a ModelLoadError saying what the
    file is instead."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such projector file.", "Check the path of the mmproj-*.gguf file.")
    if not is_gguf(path):
        raise ModelLoadError(f"{path.name}: not a GGUF file (no GGUF magic bytes).", NOT_A_PROJECTOR_TIP)
    st = path.stat()
    return _info(str(path), st.st_size, st.st_mtime)


def check_pair(model: Path, embedding_length: int, info: ProjectorInfo) -> None:
    """Refuse a projector made for another model before anything loads (its image tokens would not fit the model's
    embeddings; llama.cpp refuses it too, but says why only in its log)."""
    if info.projection_dim and embedding_length and info.projection_dim != embedding_length:
        raise ModelLoadError(
            f"{info.path.name} projects images to {info.projection_dim} numbers per token, but {model.name}'s "
            f"embeddings have {embedding_length}: the projector belongs to another model.",
            "Use the mmproj file published with this model (or give it explicitly).",
        )


def estimate_note(info: ProjectorInfo) -> str:
    return (
        f"vision projector {info.path.name} ({fmt_bytes(info.weights_bytes)}): an image costs {info.image_tokens} "
        "tokens of the context"
    )


def takes_images(spec: ModelSpec) -> bool:
    """Whether a chat spec is a GGUF vision model through llama.cpp: a llama.cpp spec with a projector."""
    return spec.backend == "llama.cpp" and sees_images(spec)
