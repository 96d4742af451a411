"""What weight files say about themselves, read without loading the weights.

Readers for the formats the studio loads: safetensors headers, GGUF metadata and tensor infos, torch checkpoint
archives (through the restricted unpickler of `studio.models.torch_archive`), a CTranslate2 `model.bin` header,
and diffusers folders (the sum of their components). All are parsed with the stdlib; GGUF type sizes come from
the `gguf` package, imported when a GGUF file is read. Each returns a `WeightsInfo`, which
`studio.models.estimate` turns into bytes at a load precision.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.torch_archive import ARCHIVE_ERRORS, read_archive

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
# CTranslate2 model.bin dtype ids (include/ctranslate2/types.h); its int8 tensors are quantized float weights
CT2_DTYPES = ("F32", "Q8", "I16", "I32", "F16", "BF16")
# Tensor names that bitsandbytes leaves in 16-bit: embeddings, the output head, norms (GGUF names included)
NOT_QUANTIZED = ("embed", "lm_head", "wte", "wpe", "shared", "norm", "token_embd")
MAX_HEADER_BYTES = 100 * 1024**2  # a safetensors JSON header larger than this is a damaged file
BAD_FILE_TIP = "The file may be incomplete or damaged; download or convert it again."
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


@dataclass(frozen=True)
class WeightsInfo:
    """What the files (or the catalog) say about a model's weights, without loading them."""

    params: int  # number of parameters (elements) in the stored weights
    stored_bytes: int  # bytes on disk for the weights as stored
    dtypes: dict[str, int]  # element count per stored dtype, e.g. {"F32": 123, "F16": 456}
    method: str  # how it was found: "safetensors header", "gguf metadata", "checkpoint archive", ...
    config: dict  # architecture facts that were found (layers, heads, sizes; whisper dims; components)
    quantizable_params: int = 0  # elements in 2-D linear weights that bitsandbytes would quantize


# ----- dispatch on what is on disk ------------------------------------------------------------------------


def is_gguf(path: Path | str) -> bool:
    """Whether `path` is a GGUF file, by its magic bytes: Ollama's blobs and the Hugging Face cache's have no suffix."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:  # missing, a folder, unreadable
        return False


def file_info(path: Path, kind: str) -> WeightsInfo:
    """The weights in one file, read by the reader its type calls for (`kind` sizes single-file images)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        info = _safetensors_info([path], {})
        if kind == "image":  # a single-file checkpoint: SDXL-sized ones are native 1024, the rest 512
            info = _replace_config(info, {"native_size": 1024 if info.params > 2_000_000_000 else 512})
        return info
    if suffix == ".gguf":
        return gguf_info(path)
    if path.name == "model.bin" and not zipfile.is_zipfile(path):
        return _ctranslate2_info(path.parent)
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return _checkpoint_info([path], {})
    if is_gguf(path):  # an Ollama blob (sha256-...) or another GGUF file without its suffix
        return gguf_info(path)
    raise ModelLoadError(
        f"{path}: unsupported file type {suffix or '(none)'!r}.",
        "Pick a .safetensors, .gguf or openai-whisper .pt file, or a model folder.",
    )


def folder_info(folder: Path) -> WeightsInfo:
    """The weights a loader would read from `folder`: a diffusers pipeline, safetensors, model.bin, ..."""
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
    for pattern, reader in (("*.gguf", gguf_info), ("*.pt", lambda p: _checkpoint_info([p], config))):
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


def safetensors_files(folder: Path) -> list[Path]:
    """The .safetensors files a loader reads from a model folder (one variant, every shard); [] when none."""
    return _safetensors_set(Path(folder))


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


def gguf_info(path: Path) -> WeightsInfo:
    """Parse the GGUF header, metadata and tensor infos through a memory map (the tensor data is never touched)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cursor = _GGUFCursor(buf)
            meta, tensors = cursor.parse()
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({exc}).", BAD_FILE_TIP) from None
    tally = _Tally()
    sizes: dict[str, int] = {}
    for name, shape, type_id, _offset in tensors:
        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ModelLoadError(
                f"{path}: tensor {name} has GGML type {type_id}, unknown to this gguf version.",
                "Update the gguf package, or use a more common quantization.",
            ) from None
        numel = math.prod(shape)
        sizes[name] = numel // block * type_size
        tally.add(name, qtype.name, shape, sizes[name], quantizable=False if name == "output.weight" else None)
    arch = str(meta.get("general.architecture", ""))
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731 - a local shorthand
    block_bytes = sum(n for name, n in sizes.items() if name.startswith("blk."))
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
    # what llama.cpp needs to place layers and size its KV cache (studio.engines.llamacpp)
    config["value_head_dim"] = get("attention.value_length") or config["head_dim"]
    config["block_bytes"] = block_bytes  # the repeating layers ("blk.N.*"): what partial offload moves
    config["file_type"] = _gguf_file_type(meta.get("general.file_type"))
    config["has_chat_template"] = isinstance(meta.get("tokenizer.chat_template"), str)
    config["model_name"] = meta.get("general.name") if isinstance(meta.get("general.name"), str) else ""
    alignment = meta.get("general.alignment") if isinstance(meta.get("general.alignment"), int) else 32
    data_start = -(-cursor.pos // alignment) * alignment
    ends = [offset + sizes[name] for name, _shape, _type, offset in tensors]
    config["data_end"] = data_start + max(ends, default=0)  # a file shorter than this is truncated
    config = {k: v for k, v in config.items() if isinstance(v, (int, str)) and v != ""}  # per-layer lists dropped
    return tally.info("gguf metadata", config)


def gguf_sampling(path: Path) -> dict[str, float]:
    """The sampling defaults a GGUF file names in its metadata (`general.sampling.*`, as llama.cpp reads them), by
    their key's last part ("temp", "top_p", "top_k", "penalty_repeat", ...); numbers only."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            meta, _tensors = _GGUFCursor(buf).parse()
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({exc}).", BAD_FILE_TIP) from None
    prefix = "general.sampling."
    return {
        key.removeprefix(prefix): float(value)
        for key, value in meta.items()
        if key.startswith(prefix) and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _gguf_file_type(value: object) -> str:
    """The quantization a GGUF file names for itself ("Q4_1", "Q4_K_M", "F16"), from general.file_type."""
    if not isinstance(value, int):
        return ""
    from gguf.constants import LlamaFileType

    try:
        name = LlamaFileType(value).name
    except ValueError:
        return ""
    return name.removeprefix("MOSTLY_").replace("ALL_", "")


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

    def parse(self) -> tuple[dict, list[tuple[str, tuple[int, ...], int, int]]]:
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
            type_id = self.take("<I")
            tensors.append((name, shape, type_id, self.take("<Q")))  # the offset within the data section
        return meta, tensors


# ----- torch checkpoint archives (openai-whisper .pt, pytorch_model.bin) ----------------------------------


def _checkpoint_info(files: list[Path], config: dict) -> WeightsInfo:
    """Shapes and dtypes from a torch zip archive's pickle, read by an unpickler that never builds a tensor."""
    tally = _Tally()
    cfg = dict(config)
    for path in files:
        try:
            tensors, dims = read_archive(path)
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
