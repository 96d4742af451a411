"""Errors the user can read: one line that says what is wrong, and a tip that says what to do."""

from __future__ import annotations

import errno


class StudioError(Exception):
    """Base of every error shown to the user. `message` is one line; `tip` says what to do about it."""

    def __init__(self, message: str, tip: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.tip = tip

    def __str__(self) -> str:
        return f"{self.message} {self.tip}".strip() if self.tip else self.message


class ConfigError(StudioError):
    """A setting (CLI flag, environment variable or studio.toml entry) has a bad value."""


class InputError(StudioError):
    """Something the user typed or uploaded cannot be used."""


class FieldError(InputError):
    """An InputError about one request field (the OpenAI API's error names it as `param`)."""

    def __init__(self, message: str, tip: str = "", *, param: str) -> None:
        super().__init__(message, tip)
        self.param = param


class ModelLoadError(StudioError):
    """A model could not be found, read or loaded."""


class BudgetError(StudioError):
    """A model or job does not fit in the memory budget, even after evicting what can be evicted."""


class StudioOutOfMemory(StudioError):
    """The device ran out of memory and the manager's recovery did not help."""


class StudioBusy(StudioError):
    """Too many requests already wait for the GPU: try again in a moment (never a hang)."""


class DiskFullError(StudioError):
    """A file could not be written because the disk is full; what was saved before is left as it was."""


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc` or an error it was raised from is "no space left" (or a disk quota), however wrapped:
    torch.save reports it as a RuntimeError raised while handling the OSError, safetensors as its own error."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors from torch (CUDA or CPU allocator) and Python, without importing torch."""
    if isinstance(exc, MemoryError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "OutOfMemoryError" in names:
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)
