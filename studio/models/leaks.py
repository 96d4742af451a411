"""Leak checks: once the manager has dropped its reference to a model, is the model really gone?

A weak reference taken before the drop answers it after a collection; when something still holds the model, the
types of what refers to it say where to look.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any


def weak_parts(model: Any) -> list[weakref.ref]:
    """Weak references to a loaded model and to the module or pipeline it wraps (LoadedLM.model, ...): a reference
    kept to the inner object holds all the memory while the wrapper is long gone."""
    parts = [model] + [getattr(model, name, None) for name in ("model", "pipeline", "pipe")]
    refs = []
    for part in parts:
        if part is None or isinstance(part, (str, int, float)):
            continue
        try:
            refs.append(weakref.ref(part))
        except TypeError:
            pass
    return refs


def survivor_referrers(refs: list[weakref.ref]) -> tuple[str, ...] | None:
    """None when every part is gone (collect first); else the type names of what refers to the first survivor."""
    obj = next((o for o in (r() for r in refs) if o is not None), None)
    if obj is None:
        return None
    return tuple(sorted({type(r).__name__ for r in gc.get_referrers(obj)} - {"frame"}))[:8]
