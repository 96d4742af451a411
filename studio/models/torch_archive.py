"""Shapes and dtypes of the tensors in a torch checkpoint archive, without building a tensor.

A torch zip archive (openai-whisper .pt, pytorch_model.bin) keeps its tensors' records in a pickle. The restricted
unpickler here is the only place the studio unpickles a user's file: it accepts containers and tensor records,
turns tensors into stubs that hold their storage key, offset and shape, and refuses every other global, so a
hostile checkpoint cannot run code. The tensor data is never read.
"""

from __future__ import annotations

import collections
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def read_archive(path: Path) -> tuple[list[tuple[str, str, tuple[int, ...], int]], dict]:
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
