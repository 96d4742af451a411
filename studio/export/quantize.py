"""F16 GGUF -> Q8_0 / Q4_K_M / Q5_K_M with llama.cpp's own quantizer, through llama-cpp-python.

`llama_model_quantize` is llama.cpp's quantize tool as a function: its k-quant mixes (which tensors get more bits,
the fallbacks for rows not a multiple of 256) are llama.cpp's, not reimplemented here. It runs in a thread while
the caller reports progress from the size of the file it writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from studio.errors import InputError, StudioError

# format -> llama.cpp's file type constant, and the bits per weight it lands near (for the disk check and progress)
FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
}
BITS = {"f16": 16.0, "q8_0": 8.5, "q5_k_m": 6.5, "q4_k_m": 6.0}  # small models fall back to wider types often
POLL = 0.2  # seconds between progress reports
LOG_WARN, LOG_ERROR = 3, 4  # ggml_log_level values (5 continues the line before, at its level)


def offered(fmt: str) -> str:
    """'' when this llama.cpp build offers the quantization `fmt`, else the one-line reason it cannot."""
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when the library does not load
        return f"llama.cpp is not installed ({type(exc).__name__}), so {fmt.upper()} is not offered"
    if not hasattr(llama_cpp, "llama_model_quantize") or not hasattr(llama_cpp, FTYPES.get(fmt, "?")):
        version = getattr(llama_cpp, "__version__", "?")
        return f"this llama.cpp build (llama-cpp-python {version}) does not offer {fmt.upper()} quantization"
    return ""


def check_offered(fmt: str) -> None:
    reason = offered(fmt)
    if reason:
        raise InputError(f"{reason[0].upper()}{reason[1:]}.", "Export to f16, or install llama-cpp-python again.")


def quantize(
    source: Path,
    target: Path,
    fmt: str,
    *,
    expected_bytes: int,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[str, ...]:
    """Quantize the GGUF `source` into `target` (which the caller renames into place); returns what the user
    should know (tensors that got a wider type because their rows do not fit the k-quant blocks)."""
    import llama_cpp

    check_offered(fmt)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[fmt])
    params.nthread = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
        ),
        name="gguf-quantize",
        daemon=True,
    )
    with _captured_log(llama_cpp) as log:
        worker.start()
        while worker.is_alive():
            worker.join(POLL)
            if progress is not None and target.exists():
                progress("quantize", min(0.99, target.stat().st_size / max(1, expected_bytes)))
    if not result or result[0] != 0:
        errors = [line for level, line in log if level == LOG_ERROR] or [line for _, line in log]
        why = errors[-1].strip().rstrip(".")[:200] if errors else f"code {result[0] if result else '?'}"
        raise StudioError(f"llama.cpp could not quantize the F16 file to {fmt.upper()}: {why}.")
    if progress is not None:
        progress("quantize", 1.0)
    fallback = [line for _, line in log if "required fallback quantization" in line]
    if fallback:
        count = fallback[-1].split("WARNING:")[-1].split("required")[0].strip()
        return (
            f"{count} got a wider type than {fmt.upper()} (llama.cpp's fallback for rows that do not fit its "
            "blocks), so the file is larger than that format usually is.",
        )
    return ()


@contextlib.contextmanager
def _captured_log(llama_cpp) -> Iterator[list[tuple[int, str]]]:
    """llama.cpp's log lines (level, text) while the block runs, instead of one line per tensor on stderr; the
    callback in place before (llama-cpp-python's) is put back after."""
    lines: list[tuple[int, str]] = []
    saved, data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(saved), ctypes.byref(data))

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: ARG001 - C signature
        if level in (LOG_WARN, LOG_ERROR):
            lines.append((level, text.decode("utf-8", errors="replace")))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(saved, data)
