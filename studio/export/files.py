"""Writing export files safely: a disk check first, then a temporary file in the target folder renamed into place,
so a failed or full-disk export leaves no half-written file and the files of earlier exports as they were."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from studio.errors import DiskFullError, is_disk_full
from studio.text import fmt_bytes

MARGIN = 64 * 1024**2  # bytes left free on top of the estimate
FULL = 1024**2  # a write that fails with less than this left on the disk failed for lack of space
PARTIAL = ".partial"  # suffix of the temporary files (hidden, in the target folder)


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_space(folder: Path, need: int, what: str) -> int:
    """Free bytes in `folder`; DiskFullError when `need` (plus a margin) does not fit."""
    free = free_bytes(folder)
    if free < need + MARGIN:
        raise DiskFullError(
            f"Not enough disk space in {folder}: {what} needs about {fmt_bytes(need + MARGIN)} and "
            f"{fmt_bytes(free)} is free.",
            "Free some space, or export to another folder (--out).",
        )
    return free


def partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}{PARTIAL}")


@contextlib.contextmanager
def disk_full_is_clear(target: Path) -> Iterator[None]:
    """A full disk while writing `target` becomes a DiskFullError that says what is intact."""
    try:
        yield
    except BaseException as exc:
        if _is_full(exc, target.parent):
            raise DiskFullError(
                f"The disk filled up while writing {target.name} in {target.parent} "
                f"({fmt_bytes(free_bytes(target.parent))} free); nothing was left half-written.",
                "Free some space and export again; earlier exports are intact.",
            ) from None
        raise


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write into: renamed to `target` when the block ends without an error,
    deleted when it fails (a full disk as a DiskFullError)."""
    tmp = partial_path(target)
    try:
        with disk_full_is_clear(target):
            yield tmp
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _is_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC however wrapped, or any failure (numpy's short write says only "N requested and M written", llama.cpp's
    quantizer only that it failed) with almost nothing left on the disk, the partial file still there."""
    if is_disk_full(exc):
        return True
    try:
        return free_bytes(folder) < FULL
    except OSError:
        return False


def write_text(target: Path, text: str) -> Path:
    """A small text file (the Modelfile), written the same way."""
    with staged(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def remove_partials(folder: Path) -> None:
    """Temporary files that an export killed mid-write (power cut, kill -9) left behind in `folder`."""
    for path in Path(folder).glob(f".*{PARTIAL}"):
        pid = path.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
