"""How many bytes a model will take, before it is loaded.

Weights are sized from what the files say about themselves — safetensors headers, GGUF metadata, the entries of
a torch checkpoint archive, a CTranslate2 `model.bin` header — or from known dimensions (the catalog). The
weights are never read: a restricted unpickler sees only shapes and dtypes, and the other formats are parsed
with the stdlib. The size is scaled to the precision the loader really uses, and the runtime memory for a
workload (KV cache, diffusion activations, Whisper decoder state) is added. `tensor_bytes` measures a loaded
model the same way, so the manager can compare and calibrate.
"""

from __future__ import annotations

import collections
import json
import math
import mmap
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.specs import BYTES_PER_PARAM, ModelSpec, catalog_entry

MIB = 1024**2

# Element sizes of the dtypes safetensors headers name. Integer and bool tensors (position ids, masks) keep
# their stored size when a model is loaded; floating tensors are cast to the load precision.
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "U64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
INTEGER_DTYPES = frozenset({"I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"})
# torch storage classes in a checkpoint pickle -> safetensors dtype names
TORCH_STORAGE_DTYPES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
# CTranslate2 model.bin dtype ids (include/ctranslate2/types.h); its int8 tensors are quantized float weights
CT2_DTYPES = ("F32", "Q8", "I16", "I32", "F16", "BF16")
# Tensor names that bitsandbytes leaves in 16-bit: embeddings, the output head, norms (GGUF names included)
NOT_QUANTIZED = ("embed", "lm_head", "wte", "wpe", "shared", "norm", "token_embd")
# Dimensions of catalog chat models that the catalog does not carry: (hub id, hidden, intermediate, vocab, tied)
KNOWN_CHAT_DIMS = (
    ("Qwen/Qwen2.5-7B-Instruct", 3584, 18944, 152064, False),
    ("meta-llama/Llama-3.1-8B-Instruct", 4096, 14336, 128256, False),
    ("mistralai/Mistral-7B-Instruct-v0.3", 4096, 14336, 32768, False),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", 2048, 8192, 49152, True),
)
# openai-whisper model dimensions: name, n_mels, audio (layers, state, heads), text (layers, state, heads), vocab
WHISPER_DIMS = (
    ("tiny", 80, 4, 384, 6, 4, 384, 6, 51865),
    ("base", 80, 6, 512, 8, 6, 512, 8, 51865),
    ("small", 80, 12, 768, 12, 12, 768, 12, 51865),
    ("medium", 80, 24, 1024, 16, 24, 1024, 16, 51865),
    ("large-v1", 80, 32, 1280, 20, 32, 1280, 20, 51865),
    ("large-v2", 80, 32, 1280, 20, 32, 1280, 20, 51865),
    ("large-v3", 128, 32, 1280, 20, 32, 1280, 20, 51866),
    ("large", 128, 32, 1280, 20, 32, 1280, 20, 51866),
    ("turbo", 128, 32, 1280, 20, 4, 1280, 20, 51866),
    ("large-v3-turbo", 128, 32, 1280, 20, 4, 1280, 20, 51866),
)
# Native image size of catalog diffusion models (SDXL-Turbo was trained at 512 despite its SDXL UNet)
KNOWN_IMAGE_SIZES = (
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", 512),
    ("stabilityai/sd-turbo", 512),
    ("stabilityai/sdxl-turbo", 512),
    ("stabilityai/stable-diffusion-xl-base-1.0", 1024),
)
DEFAULT_CONTEXT = 4096  # chat context when the workload and the model say nothing (also the cap on the default)
MAX_HEADER_BYTES = 100 * MIB  # a safetensors JSON header larger than this is a damaged file
BAD_FILE_TIP = "The file may be incomplete or damaged; download or convert it again."
# What reading a damaged or hostile checkpoint archive can raise (the unpickler refuses globals it does not know)
ARCHIVE_ERRORS = (
    OSError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    EOFError,
    IndexError,
)


@dataclass(frozen=True)
class Workload:
    """What the model will be asked to do; sizes its runtime memory."""

    context_len: int = 0  # chat: tokens held in the KV cache (0 = the model's default, capped at 4096)
    batch: int = 1  # sequences (chat) / images (image) / beams (speech)
    width: int = 0  # image: pixels (0 = the model's native size)
    height: int = 0  # image: pixels (0 = the model's native size)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")
        for name in ("context_len", "width", "height"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")

    @property
    def key(self) -> str:
        """A stable short string ("default", "ctx2048", "b2-768x512"), used for calibration records."""
        parts = [f"ctx{self.context_len}"] if self.context_len else []
        parts += [f"b{self.batch}"] if self.batch != 1 else []
        parts += [f"{self.width}x{self.height}"] if self.width or self.height else []
        return "-".join(parts) or "default"


@dataclass(frozen=True)
class WeightsInfo:
    """What the files (or the catalog) say about a model's weights, without loading them."""

    params: int  # number of parameters (elements) in the stored weights
    stored_bytes: int  # bytes on disk for the weights as stored
    dtypes: dict[str, int]  # element count per stored dtype, e.g. {"F32": 123, "F16": 456}
    method: str  # how it was found: "safetensors header", "gguf metadata", "checkpoint archive", ...
    config: dict  # architecture facts that were found (layers, heads, sizes; whisper dims; components)
    quantizable_params: int = 0  # elements in 2-D linear weights that bitsandbytes would quantize


@dataclass(frozen=True)
class Estimate:
    """Bytes a model needs: its weights at the load precision, plus runtime memory for a workload."""

    weights_bytes: int
    runtime_bytes: int
    params: int
    method: str  # human-readable: e.g. "safetensors header, fp16" or "measured peak (calibrated)"

    @property
    def total(self) -> int:
        return self.weights_bytes + self.runtime_bytes


# ----- the public functions -------------------------------------------------------------------------------


def estimate(spec: ModelSpec, workload: Workload | None = None) -> Estimate:
    """Bytes `spec` will need once loaded, for `workload` (default: the model's usual one). Reads headers only."""
    info = weights_info(spec)
    precision = load_precision(spec)
    how = f"{info.method}, {precision}"
    if precision != spec.precision:
        how += f" ({spec.precision} loads as {precision} on {spec.device})"
    return Estimate(
        weights_bytes=weights_bytes(info, precision),
        runtime_bytes=runtime_bytes(spec, info, workload or Workload()),
        params=info.params,
        method=how,
    )


def load_precision(spec: ModelSpec) -> str:
    """The precision the studio's loaders really use for `spec` (studio.models.loading), which the size follows.

    Chat models load at their precision (bitsandbytes nf4/int8 also runs on the CPU); diffusers pipelines run fp16 as
    fp32 on the CPU and never quantize; openai-whisper runs fp16 only on CUDA; CTranslate2 picks a compute type.
    """
    p, cpu = spec.precision, spec.device == "cpu"
    if spec.kind == "image":
        p = p if p in ("fp16", "bf16", "fp32") else "fp16"
        return "fp32" if cpu and p == "fp16" else p
    if spec.kind == "speech":
        if _is_ctranslate2(spec):
            if cpu:
                return "int8" if p in ("int8", "nf4") else "fp32"
            return "int8" if p == "nf4" else p
        return "fp16" if p == "fp16" and not cpu else "fp32"
    return p  # chat: bitsandbytes quantises nf4/int8 on CUDA and on the CPU alike


def weights_bytes(info: WeightsInfo, precision: str) -> int:
    """Bytes of the weights once loaded at `precision`.

    Floating tensors take BYTES_PER_PARAM[precision]; integer and bool tensors keep their stored size. For nf4
    and int8 only `quantizable_params` shrink: bitsandbytes leaves embeddings, the output head and norms in 16-bit.
    The same rule serves CTranslate2 int8 and GGUF (which transformers dequantizes to `precision`); the caller
    passes the precision the loader will really use (see `load_precision`). Known non-persistent buffers that
    the files do not hold (the Whisper decoder's causal mask) are added.
    """
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_PARAM)}, not {precision!r}")
    int_elems = sum(n for dtype, n in info.dtypes.items() if dtype in INTEGER_DTYPES)
    int_bytes = sum(n * SAFETENSORS_DTYPE_BYTES[dtype] for dtype, n in info.dtypes.items() if dtype in INTEGER_DTYPES)
    floats = max(0, info.params - int_elems)
    if precision in ("nf4", "int8"):
        quantized = min(info.quantizable_params, floats)
        nbytes = quantized * BYTES_PER_PARAM[precision] + (floats - quantized) * 2
    else:
        nbytes = floats * BYTES_PER_PARAM[precision]
    return int(round(nbytes + int_bytes + _buffer_bytes(info.config, precision)))


def runtime_bytes(spec: ModelSpec, info: WeightsInfo, workload: Workload) -> int:
    """Memory beyond the weights that running `workload` takes: KV cache, activations, decoder state."""
    element = 4 if load_precision(spec) == "fp32" else 2  # compute dtype: nf4/int8 compute in 16-bit
    if spec.kind == "chat":
        return _chat_runtime(info, workload, element)
    if spec.kind == "image":
        return _image_runtime(info, workload, element)
    if spec.kind == "speech":
        return _speech_runtime(info, workload, element)
    return 0  # base-for-training: training memory is estimated with the job, not here


def tensor_bytes(obj: Any) -> int:
    """Measured size of a loaded model: bytes of all parameters and buffers of every torch module in `obj`.

    `obj` is a module, a diffusers pipeline (its `components`) or a wrapper with a `.model`. Tensors that share
    storage (tied embeddings, components sharing a module) count once; bitsandbytes scales are included.
    """
    import torch

    seen: set[tuple[str, int]] = set()
    total = 0
    for module in _torch_modules(obj, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            for t in (tensor, *_quant_state_tensors(tensor)):
                total += _storage_bytes(t, seen)
    return total


def weights_info(spec: ModelSpec) -> WeightsInfo:
    """What the files (or the catalog) say about `spec`'s weights. Never loads them."""
    path = spec.path
    if path is None and spec.source_type == "starter" and Path(spec.source).expanduser().exists():
        path = Path(spec.source).expanduser()
    if path is None and spec.source_type == "starter":
        from studio.models.starter import starter_weights_info  # it sizes its files with this module's readers

        return starter_weights_info()
    if path is not None:
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file or folder.", "Check the path, or pick a model from the list.")
        return _folder_info(path) if path.is_dir() else _file_info(path, spec.kind)
    known = _catalog_info(spec.source)
    if known is not None:
        return known
    snapshot = _hub_snapshot(spec.source, spec.revision)
    if snapshot is not None:
        return _folder_info(snapshot)
    raise ModelLoadError(
        f"{spec.source}: not in the model list and not downloaded, so its size is unknown.",
        "Download it first, or pick a local folder or a model from the list.",
    )


# ----- dispatch on what is on disk ------------------------------------------------------------------------


def _file_info(path: Path, kind: str) -> WeightsInfo:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        info = _safetensors_info([path], {})
        if kind == "image":  # a single-file checkpoint: SDXL-sized ones are native 1024, the rest 512
            info = _replace_config(info, {"native_size": 1024 if info.params > 2_000_000_000 else 512})
        return info
    if suffix == ".gguf":
        return _gguf_info(path)
    if path.name == "model.bin" and not zipfile.is_zipfile(path):
        return _ctranslate2_info(path.parent)
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return _checkpoint_info([path], {})
    raise ModelLoadError(
        f"{path}: unsupported file type {suffix or '(none)'!r}.",
        "Pick a .safetensors, .gguf or openai-whisper .pt file, or a model folder.",
    )


def _folder_info(folder: Path) -> WeightsInfo:
    if (folder / "model_index.json").is_file():
        return _diffusers_info(folder)
    config = _flat_config(_read_json(folder / "config.json"))
    files = _safetensors_set(folder)
    if files:
        return _safetensors_info(files, config)
    if (folder / "model.bin").is_file() and not zipfile.is_zipfile(folder / "model.bin"):
        return _ctranslate2_info(folder)
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return _checkpoint_info(bins, config)
    for pattern, reader in (("*.gguf", _gguf_info), ("*.pt", lambda p: _checkpoint_info([p], config))):
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return reader(found[0])
        if found:
            raise ModelLoadError(
                f"{folder} holds {len(found)} {pattern[1:]} files, so which one to load is unclear.",
                f"Pick one file: {found[0].name}, {found[1].name}, ...",
            )
    raise ModelLoadError(
        f"No .safetensors, .gguf, .pt or model.bin found in {folder}.",
        "Pick a model folder (config.json and weights), a single weights file, or a model from the list.",
    )


def _diffusers_info(folder: Path) -> WeightsInfo:
    """Sum the components' subfolders. The safety checker is skipped: the studio drops it after loading."""
    index = _read_json(folder / "model_index.json")
    names = [n for n, v in index.items() if isinstance(v, list) and n != "safety_checker"]
    parts: list[WeightsInfo] = []
    config: dict[str, Any] = {"components": {}}
    for name in names:
        sub = folder / name
        if not sub.is_dir():
            continue
        files = _safetensors_set(sub)
        bins = [] if files else sorted(sub.glob("*pytorch_model*.bin"))
        if not files and not bins:
            continue  # tokenizer, scheduler, feature extractor: no weights
        sub_config = _flat_config(_read_json(sub / "config.json"))
        part = _safetensors_info(files, sub_config) if files else _checkpoint_info(bins, sub_config)
        parts.append(part)
        config[name] = sub_config
        config["components"][name] = part.params
    if not parts:
        raise ModelLoadError(
            f"No component weights (.safetensors) found in {folder}.",
            "The download may be incomplete; a diffusers folder has unet/, vae/ and text_encoder/.",
        )
    denoiser = config.get("unet") or config.get("transformer") or {}
    vae = config.get("vae") or {}
    scale = 2 ** (len(vae["block_out_channels"]) - 1) if vae.get("block_out_channels") else 8
    sample = denoiser.get("sample_size")
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    config["vae_scale_factor"] = scale
    if isinstance(sample, int) and sample > 0:
        config["native_size"] = sample * scale
    methods = sorted({p.method for p in parts})
    return _merge(parts, " + ".join(methods), config)


def _safetensors_set(folder: Path) -> list[Path]:
    """The one set of .safetensors files a loader would read from `folder` (never both fp16 and full files)."""
    for base in ("model", "diffusion_pytorch_model"):
        index = folder / f"{base}.safetensors.index.json"
        if index.is_file():
            return _index_files(index)
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if re.fullmatch(r"(model|diffusion_pytorch_model)(-\d+-of-\d+)?", f.stem)]
    if plain:
        return plain
    indexes = sorted(folder.glob("*.safetensors.index.*.json"))  # variant index, e.g. ...index.fp16.json
    if indexes:
        return _index_files(indexes[0])
    variants: dict[str, list[Path]] = {}
    for f in files:
        match = re.fullmatch(r"(?:model|diffusion_pytorch_model)(?:-\d+-of-\d+)?\.(\w+)(?:-\d+-of-\d+)?", f.stem)
        if match:
            variants.setdefault(match.group(1), []).append(f)
    if variants:
        return variants["fp16"] if "fp16" in variants else variants[sorted(variants)[0]]
    return files  # a folder with differently named weights: count them all


def _index_files(index: Path) -> list[Path]:
    weight_map = _read_json(index).get("weight_map") or {}
    files = sorted({index.parent / name for name in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"{index.parent}: {len(missing)} shard(s) listed in {index.name} are missing ({missing[0]}, ...).",
            "The download is incomplete; fetch the model again.",
        )
    return files


# ----- safetensors ----------------------------------------------------------------------------------------


def _safetensors_info(files: list[Path], config: dict) -> WeightsInfo:
    tally = _Tally()
    for path in files:
        for name, entry in _safetensors_header(path).items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            start, end = entry.get("data_offsets", (0, 0))
            tally.add(name, entry.get("dtype", "F32"), tuple(entry.get("shape", ())), end - start)
    return tally.info("safetensors header", config)


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: 8 bytes of little-endian length, then the JSON."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            size = path.stat().st_size
            if len(raw) < 8:
                raise ModelLoadError(f"{path}: too short to be a .safetensors file.", BAD_FILE_TIP)
            (length,) = struct.unpack("<Q", raw)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ModelLoadError(f"{path}: not a valid .safetensors file (header length {length}).", BAD_FILE_TIP)
            header = json.loads(f.read(length))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read the .safetensors header ({exc}).", BAD_FILE_TIP) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: not a valid .safetensors file (header is not an object).", BAD_FILE_TIP)
    return header


# ----- GGUF -----------------------------------------------------------------------------------------------


def _gguf_info(path: Path) -> WeightsInfo:
    """Parse the GGUF header, metadata and tensor infos through a memory map (the tensor data is never touched)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            meta, tensors = _GGUFCursor(buf).parse()
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({exc}).", BAD_FILE_TIP) from None
    tally = _Tally()
    for name, shape, type_id in tensors:
        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ModelLoadError(
                f"{path}: tensor {name} has GGML type {type_id}, unknown to this gguf version.",
                "Update the gguf package, or use a more common quantization.",
            ) from None
        numel = math.prod(shape)
        tally.add(
            name, qtype.name, shape, numel // block * type_size, quantizable=False if name == "output.weight" else None
        )
    arch = str(meta.get("general.architecture", ""))
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731 - a local shorthand
    config = {
        "architecture": arch,
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": get("attention.head_count_kv") or get("attention.head_count"),
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "max_position_embeddings": get("context_length"),
        "head_dim": get("attention.key_length"),
        "vocab_size": get("vocab_size") or meta.get("tokenizer.ggml.tokens"),
    }
    if not config["head_dim"] and config["hidden_size"] and config["num_attention_heads"]:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    config = {k: v for k, v in config.items() if isinstance(v, (int, str)) and v != ""}  # per-layer lists dropped
    return tally.info("gguf metadata", config)


class _GGUFCursor:
    """A minimal GGUF (v2/v3) reader: metadata scalars, array lengths, and tensor infos."""

    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def value(self, type_id: int):
        if type_id in self.SCALARS:
            return self.take(self.SCALARS[type_id])
        if type_id == 8:
            return self.string()
        if type_id == 9:  # array: keep small numeric ones (per-layer head counts), else only the length
            item_type, count = self.take("<I"), self.take("<Q")
            if item_type in self.SCALARS and count <= 1024:
                return [self.value(item_type) for _ in range(count)]
            if item_type in self.SCALARS:
                self.pos += struct.calcsize(self.SCALARS[item_type]) * count
            else:
                for _ in range(count):
                    self.value(item_type)
            return count
        raise ValueError(f"unknown metadata value type {type_id}")

    def parse(self) -> tuple[dict, list[tuple[str, tuple[int, ...], int]]]:
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        self.pos = 4
        version = self.take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self.take("<Q"), self.take("<Q")
        meta = {}
        for _ in range(n_kv):
            key = self.string()
            meta[key] = self.value(self.take("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = self.string()
            shape = tuple(self.take("<Q") for _ in range(self.take("<I")))
            tensors.append((name, shape, self.take("<I")))
            self.take("<Q")  # offset of the data: not needed
        return meta, tensors


# ----- torch checkpoint archives (openai-whisper .pt, pytorch_model.bin) ----------------------------------


def _checkpoint_info(files: list[Path], config: dict) -> WeightsInfo:
    """Shapes and dtypes from a torch zip archive's pickle, read by an unpickler that never builds a tensor."""
    tally = _Tally()
    cfg = dict(config)
    for path in files:
        try:
            tensors, dims = _read_archive(path)
        except ARCHIVE_ERRORS as exc:
            if len(files) == 1 and path.suffix == ".bin":
                return _file_size_info(files, config)
            raise ModelLoadError(
                f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc}).",
                "Only plain tensor checkpoints are accepted; prefer .safetensors.",
            ) from None
        for name, dtype, shape, nbytes in tensors:
            tally.add(name, dtype, shape, nbytes)
        cfg.update(dims)
    return tally.info("checkpoint archive", cfg)


def _read_archive(path: Path) -> tuple[list[tuple[str, str, tuple[int, ...], int]], dict]:
    """(name, dtype, shape, stored bytes) per unique tensor, and the whisper `dims` if the checkpoint has them."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ValueError("no data.pkl: not a torch zip checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        sizes = {
            i.filename[len(prefix) + 5 :]: i.file_size
            for i in archive.infolist()
            if i.filename.startswith(prefix + "data/")
        }
        with archive.open(pickles[0]) as f:
            root = _StubUnpickler(f).load()
    found: dict[tuple, tuple[str, str, tuple[int, ...], int]] = {}
    counted: set[str] = set()

    def walk(obj: Any, name: str) -> None:
        if isinstance(obj, _TensorStub):
            key = (obj.storage.key, obj.offset, obj.shape)
            if key not in found:  # tied tensors are stored once and loaded once
                numel = math.prod(obj.shape)
                nbytes = 0 if obj.storage.key in counted else sizes.get(obj.storage.key, 0)
                counted.add(obj.storage.key)
                found[key] = (name, obj.storage.dtype(nbytes, numel), obj.shape, nbytes)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}.{i}")

    walk(root, "")
    dims = root.get("dims") if isinstance(root, dict) else None
    dims = {k: v for k, v in dims.items() if isinstance(v, int)} if isinstance(dims, dict) else {}
    return list(found.values()), dims


class _StorageStub:
    """Stands in for a torch storage: its archive key, dtype and element count."""

    def __init__(self, type_name: str, key: str, numel: int) -> None:
        self.type_name, self.key, self.numel = type_name, str(key), int(numel)

    def dtype(self, nbytes: int, numel: int) -> str:
        known = TORCH_STORAGE_DTYPES.get(self.type_name)
        if known:
            return known
        size = nbytes // max(numel, 1)  # an untyped storage: guess from the bytes per element
        return {8: "F64", 4: "F32", 2: "F16", 1: "U8"}.get(size, "U8")


@dataclass(frozen=True)
class _TensorStub:
    storage: _StorageStub
    offset: int
    shape: tuple[int, ...]


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


def _rebuild_tensor(storage, offset, size, *args, **kwargs) -> _TensorStub:
    return _TensorStub(storage, int(offset), tuple(int(s) for s in size))


def _rebuild_parameter(data, *args, **kwargs):
    return data


class _StubUnpickler(pickle.Unpickler):
    """Unpickles only containers and tensor records: tensors become stubs, every other global is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): lambda text, encoding="latin1": str(text).encode(encoding),
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "torch" and name in (
            "float32",
            "float16",
            "bfloat16",
            "float64",
            "int64",
            "int32",
            "uint8",
            "int8",
            "int16",
            "bool",
        ):
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights checkpoint")

    def persistent_load(self, pid: Any) -> _StorageStub:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type = pid[1]
        return _StorageStub(storage_type.name if isinstance(storage_type, _StorageType) else "", pid[2], pid[4])


def _file_size_info(files: list[Path], config: dict) -> WeightsInfo:
    """Last resort for a pickle we will not read: the size on disk, at the dtype the config names (else fp32)."""
    stored = sum(f.stat().st_size for f in files)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    element, name = (2, "F16") if dtype in ("float16", "bfloat16") else (4, "F32")
    params = stored // element
    return WeightsInfo(params, stored, {name: params}, "file size", config, int(params * 0.9))


# ----- CTranslate2 ----------------------------------------------------------------------------------------


def _ctranslate2_info(folder: Path) -> WeightsInfo:
    """Variables listed in a CTranslate2 model.bin (data skipped with seeks); whisper dims from their shapes."""
    path = folder / "model.bin"
    tally = _Tally()
    shapes: dict[str, tuple[int, ...]] = {}
    scalars: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            take = lambda fmt: struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))  # noqa: E731

            def string() -> str:
                return f.read(take("H")[0])[:-1].decode("utf-8")

            version = take("I")[0]
            if version < 5:
                raise ValueError(f"model.bin version {version} is too old to read")
            string(), take("I")  # spec name, spec revision
            for _ in range(take("I")[0]):
                name = string()
                shape = take("I" * take("B")[0])
                type_id, nbytes = take("B")[0], take("I")[0]
                if not shape:  # a scalar setting, e.g. encoder/num_heads
                    raw = f.read(nbytes)
                    scalars[name] = int.from_bytes(raw, "little", signed=True) if type_id in (1, 2, 3) else 0
                    continue
                f.seek(nbytes, 1)
                shapes[name] = shape
                # CTranslate2 int8 quantizes every weight matrix it has a scale for, embeddings included
                tally.add(
                    name, CT2_DTYPES[type_id], shape, nbytes, quantizable=name.endswith("weight") and len(shape) > 1
                )
    except (OSError, struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        return _ct2_size_only(folder, exc)
    config = _flat_config(_read_json(folder / "config.json"))
    config.update(_ct2_whisper_dims(shapes, scalars), format="ctranslate2")
    return tally.info("ctranslate2 header", config)


def _ct2_size_only(folder: Path, why: Exception) -> WeightsInfo:
    """A model.bin we cannot parse: size from the file, params from the quantization its config names."""
    stored = (folder / "model.bin").stat().st_size
    quant = str(_read_json(folder / "config.json").get("quantization", ""))
    element, name = (1, "Q8") if quant.startswith("int8") else (2, "F16") if "16" in quant else (4, "F32")
    params = stored // element
    return WeightsInfo(params, stored, {name: params}, "file size", {"unreadable_header": str(why)}, params)


def _ct2_whisper_dims(shapes: dict[str, tuple[int, ...]], scalars: dict[str, int]) -> dict[str, int]:
    def layers(side: str) -> int:
        return len({m.group(1) for n in shapes if (m := re.match(rf"{side}/layer_(\d+)/", n))})

    dims: dict[str, int] = {}
    if "decoder/embeddings/weight" in shapes:
        dims["n_vocab"], dims["n_text_state"] = shapes["decoder/embeddings/weight"][:2]
        dims["n_text_layer"] = layers("decoder")
    if "decoder/position_encodings/encodings" in shapes:
        dims["n_text_ctx"] = shapes["decoder/position_encodings/encodings"][0]
    if "encoder/position_encodings/encodings" in shapes:
        dims["n_audio_ctx"], dims["n_audio_state"] = shapes["encoder/position_encodings/encodings"][:2]
        dims["n_audio_layer"] = layers("encoder")
    if "encoder/conv1/weight" in shapes:
        dims["n_mels"] = shapes["encoder/conv1/weight"][1]
    for side, key in (("encoder", "n_audio_head"), ("decoder", "n_text_head")):
        if scalars.get(f"{side}/num_heads"):
            dims[key] = scalars[f"{side}/num_heads"]
    return dims


# ----- known dimensions (the catalog) and the Hugging Face cache ------------------------------------------


def _catalog_info(source: str) -> WeightsInfo | None:
    entry = catalog_entry(source)
    whisper = _whisper_dims(source)
    if entry is None and whisper is None:
        return None
    config: dict[str, Any] = {}
    params = entry.params if entry else 0
    quantizable = int(params * 0.9)
    if entry is not None and entry.kind == "chat":
        config = {"num_hidden_layers": entry.layers, "num_key_value_heads": entry.kv_heads, "head_dim": entry.head_dim}
        for hub_id, hidden, intermediate, vocab, tied in KNOWN_CHAT_DIMS:
            if hub_id == source:
                config.update(hidden_size=hidden, intermediate_size=intermediate, vocab_size=vocab)
                quantizable = params - vocab * hidden * (1 if tied else 2)
    elif entry is not None and entry.kind == "image":
        config = {"native_size": dict(KNOWN_IMAGE_SIZES).get(source, 1024 if params > 2_000_000_000 else 512)}
    if whisper is not None:
        config = whisper
        params = params or _whisper_params(whisper)
        quantizable = params - whisper["n_vocab"] * whisper["n_text_state"]
    return WeightsInfo(params, params * 2, {"F16": params}, "known dimensions", config, max(0, quantizable))


def _whisper_dims(name: str) -> dict[str, int] | None:
    """openai-whisper dims for a model name ("small", "small.en", "turbo", ...)."""
    english = name.endswith(".en")
    base = name[:-3] if english else name
    for row in WHISPER_DIMS:
        if row[0] == base:
            n_mels, a_layer, a_state, a_head, t_layer, t_state, t_head, vocab = row[1:]
            return {
                "n_mels": n_mels,
                "n_audio_ctx": 1500,
                "n_audio_state": a_state,
                "n_audio_head": a_head,
                "n_audio_layer": a_layer,
                "n_vocab": vocab - 1 if english else vocab,
                "n_text_ctx": 448,
                "n_text_state": t_state,
                "n_text_head": t_head,
                "n_text_layer": t_layer,
            }
    return None


def _whisper_params(d: dict[str, int]) -> int:
    """Parameter count from whisper dims (stored buffers included), for names the catalog does not list."""
    a, t = d["n_audio_state"], d["n_text_state"]
    encoder = d["n_mels"] * a * 3 + a * a * 3 + 2 * a + d["n_audio_layer"] * (12 * a * a + 13 * a)
    decoder = d["n_text_layer"] * (16 * t * t + 19 * t)
    embeddings = d["n_vocab"] * t + d["n_text_ctx"] * t + d["n_audio_ctx"] * a
    return encoder + decoder + embeddings + 2 * a + 2 * t


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` in the local Hugging Face cache, if it was downloaded. Never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a valid id, or no huggingface_hub: all mean "unknown"
        return None


# ----- runtime memory -------------------------------------------------------------------------------------


def _chat_runtime(info: WeightsInfo, workload: Workload, element: int) -> int:
    """KV cache for the context, logits of one step (fp32, twice for sampling), and one prompt forward pass."""
    c = info.config
    heads = c.get("num_attention_heads") or 0
    hidden = c.get("hidden_size") or 0
    layers = c.get("num_hidden_layers") or 0
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or (hidden // heads if heads else 0)
    max_pos = c.get("max_position_embeddings") or DEFAULT_CONTEXT
    context = workload.context_len or min(max_pos, DEFAULT_CONTEXT)
    batch = workload.batch
    if not (layers and kv_heads and head_dim):  # unknown shape: a fifth of the 16-bit weights
        return int(info.params * 2 * 0.2)
    kv = 2 * layers * kv_heads * head_dim * context * batch * element
    logits = batch * (c.get("vocab_size") or 128_000) * 4 * 2
    if not hidden:  # a dense transformer has about 12 * layers * hidden^2 parameters
        hidden = int(math.sqrt(info.params / (12 * layers)))
    intermediate = c.get("intermediate_size") or 4 * hidden
    activations = batch * context * (2 * hidden + 3 * intermediate) * element  # the MLP's 3 wide tensors dominate
    return kv + logits + activations


def _image_runtime(info: WeightsInfo, workload: Workload, element: int) -> int:
    """Diffusion activations without attention slicing, calibrated on real runs.

    runtime = 1536 * pixels * batch * element * (vae_channels / 128) + min(512 MiB, 0.3 * denoiser weights).
    The pixel term covers the UNet (both halves of classifier-free guidance) and the VAE decode at full
    resolution, whose width scales with the VAE's first channel count (128 in SD); the second term is
    workspace that grows with the model. SD 1.5 at 512x512 fp16: about 1.3 GB; SDXL at 1024x1024: about 3.8 GB.
    """
    c = info.config
    native = c.get("native_size") or 512
    pixels = (workload.width or native) * (workload.height or native) * workload.batch
    vae_channels = (c.get("vae") or {}).get("block_out_channels") or [128]
    width_scale = min(1.0, vae_channels[0] / 128)
    components = c.get("components") or {}
    denoiser = components.get("unet") or components.get("transformer")
    workspace = min(512 * MIB, 0.3 * denoiser * element) if denoiser else 512 * MIB
    return int(1536 * pixels * element * width_scale + workspace)


def _speech_runtime(info: WeightsInfo, workload: Workload, element: int) -> int:
    """Whisper: decoder self+cross KV per beam, the encoder pass and its output, logits, the mel, and 32 MiB."""
    d = info.config
    needed = ("n_text_layer", "n_text_ctx", "n_text_state", "n_audio_ctx", "n_audio_state")
    if not all(d.get(k) for k in needed):
        return int(info.params * 2 * 0.1) + 32 * MIB
    beams = workload.batch
    decoder = beams * d["n_text_layer"] * d["n_text_ctx"] * d["n_text_state"] * 2 * 2 * element
    encoder_out = d["n_audio_ctx"] * d["n_audio_state"] * element * beams
    encoder_pass = (
        d["n_audio_ctx"] * d["n_audio_state"] * 4 + d.get("n_audio_head", 8) * d["n_audio_ctx"] ** 2
    ) * element
    logits = beams * d.get("n_vocab", 51865) * 4
    mel = d.get("n_mels", 80) * 3000 * 4
    return decoder + encoder_out + encoder_pass + logits + mel + 32 * MIB


# ----- helpers --------------------------------------------------------------------------------------------


class _Tally:
    """Accumulates tensors into a WeightsInfo."""

    def __init__(self) -> None:
        self.params = self.stored = self.quantizable = 0
        self.dtypes: dict[str, int] = {}

    def add(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int, quantizable: bool | None = None) -> None:
        """Count one tensor; `quantizable` None means: by the bitsandbytes rule (`_is_quantizable`)."""
        numel = math.prod(shape)
        self.params += numel
        self.stored += nbytes
        self.dtypes[dtype] = self.dtypes.get(dtype, 0) + numel
        if quantizable if quantizable is not None else _is_quantizable(name, shape, dtype):
            self.quantizable += numel

    def info(self, method: str, config: dict) -> WeightsInfo:
        return WeightsInfo(self.params, self.stored, dict(self.dtypes), method, config, self.quantizable)


def _is_quantizable(name: str, shape: tuple[int, ...], dtype: str) -> bool:
    """A 2-D linear weight that bitsandbytes would quantize (not an embedding, the output head or a norm)."""
    lowered = name.lower()
    return (
        len(shape) == 2
        and lowered.endswith("weight")
        and dtype not in INTEGER_DTYPES
        and not any(word in lowered for word in NOT_QUANTIZED)
    )


def _merge(parts: list[WeightsInfo], method: str, config: dict) -> WeightsInfo:
    dtypes: dict[str, int] = {}
    for part in parts:
        for dtype, n in part.dtypes.items():
            dtypes[dtype] = dtypes.get(dtype, 0) + n
    return WeightsInfo(
        sum(p.params for p in parts),
        sum(p.stored_bytes for p in parts),
        dtypes,
        method,
        config,
        sum(p.quantizable_params for p in parts),
    )


def _replace_config(info: WeightsInfo, extra: dict) -> WeightsInfo:
    return WeightsInfo(
        info.params, info.stored_bytes, info.dtypes, info.method, {**info.config, **extra}, info.quantizable_params
    )


def _buffer_bytes(config: dict, precision: str) -> int:
    """Non-persistent buffers the files do not hold but the loaded model does. Only openai-whisper's decoder
    causal mask (n_text_ctx^2) matters; rotary inv_freq and position ids are under a few KB and left out."""
    n_ctx = config.get("n_text_ctx")
    if isinstance(n_ctx, int) and "n_text_state" in config and config.get("format") != "ctranslate2":
        return n_ctx * n_ctx * (2 if precision in ("fp16", "bf16") else 4)
    return 0


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read this JSON file ({exc}).", BAD_FILE_TIP) from None
    return data if isinstance(data, dict) else {}


def _flat_config(config: dict) -> dict:
    """A transformers config with a nested text_config (multimodal models) lifted to the top; GPT-2 names mapped."""
    flat = dict(config)
    text = config.get("text_config")
    if isinstance(text, dict):
        flat.update({k: v for k, v in text.items() if v is not None})
    for old, new in (
        ("n_layer", "num_hidden_layers"),
        ("n_head", "num_attention_heads"),
        ("n_embd", "hidden_size"),
        ("n_positions", "max_position_embeddings"),
        ("n_inner", "intermediate_size"),
    ):
        if old in flat and flat.get(new) is None:
            flat[new] = flat[old]
    return flat


def _is_ctranslate2(spec: ModelSpec) -> bool:
    path = spec.path
    if spec.backend == "faster-whisper":
        return True
    return path is not None and path.is_dir() and (path / "model.bin").is_file()


def _torch_modules(obj: Any, module_type: type) -> list:
    """The torch modules inside a model object: itself, a pipeline's components, or a wrapper's `.model`."""
    if isinstance(obj, module_type):
        return [obj]
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        return [m for m in components.values() if isinstance(m, module_type)]
    inner = getattr(obj, "model", None)
    if isinstance(inner, module_type):
        return [inner]
    return [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, module_type)]


def _quant_state_tensors(tensor: Any) -> list:
    """bitsandbytes keeps block scales beside the packed weights: nf4 `quant_state`, int8 `SCB`."""
    extra = []
    state = getattr(tensor, "quant_state", None)
    for holder in (state, getattr(state, "state2", None)):
        for attr in ("absmax", "code", "offset"):
            value = getattr(holder, attr, None)
            if value is not None and hasattr(value, "untyped_storage"):
                extra.append(value)
    scb = getattr(tensor, "SCB", None)
    if scb is not None and hasattr(scb, "untyped_storage"):
        extra.append(scb)
    return extra


def _storage_bytes(t: Any, seen: set[tuple[str, int]]) -> int:
    """Bytes of `t`'s storage the first time it is seen (sparse tensors: indices + values); meta tensors are 0."""
    if t.device.type == "meta":
        return 0
    if t.is_sparse:
        return t._indices().nbytes + t._values().nbytes
    try:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        nbytes = storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return t.numel() * t.element_size()
    if key[1] == 0 or key in seen:
        return 0
    seen.add(key)
    return nbytes
