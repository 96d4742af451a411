"""Giving freed memory back: torch's CUDA cache to the device, glibc's heap to the OS.

Both are best-effort and cheap when there is nothing to give. Neither imports torch: the device cache is emptied
only when a model has already loaded torch and initialised CUDA.
"""

from __future__ import annotations

import ctypes
import sys


def empty_device_cache() -> None:
    """Return the blocks torch's CUDA allocator keeps cached, so NVML (and other processes) see them free."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


def trim_host_heap() -> None:
    """Give freed host memory back to the OS: glibc keeps it for reuse otherwise, and RSS would only grow."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
