"""Build-once folders shared by processes: a marker written last, an atomic move into place, a file lock."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def is_complete(folder: Path, marker: str, stamp: dict) -> bool:
    """True when `folder/marker` holds exactly `stamp` (the marker is written last, so the folder is whole)."""
    try:
        return json.loads((folder / marker).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


def move_into_place(staging: Path, target: Path, marker: str, stamp: dict) -> None:
    """Atomic rename; an incomplete or outdated folder already at `target` is swapped out first."""
    try:
        os.rename(staging, target)
        return
    except OSError:
        if is_complete(target, marker, stamp):  # another process got there first (platforms without flock)
            return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        os.rename(target, trash / target.name)
        os.rename(staging, target)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory file lock (POSIX). Without fcntl the atomic rename alone keeps results correct."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
