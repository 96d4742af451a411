"""What the benchmarks that pit the studio against a baseline in child processes share."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

S = TypeVar("S")


def alternate(
    names: tuple[str, str], runs: int, run_one: Callable[[str], S], line: Callable[[S], str], warmup: int = 0
) -> dict:
    """`runs` runs of each of the two sides, alternating which goes first (so neither always gets the warmer
    machine), after `warmup` untimed runs of the second side (on a machine that sat idle the first process was
    ~30 % slower whichever side it was); prints `line(side)` for each with the load average after it. Returns
    {name: [side per run]}."""
    for w in range(warmup):
        side = run_one(names[1])
        print(f"  warm-up {w + 1} {names[1]} (not counted): {line(side)}", flush=True)
    found: dict[str, list[S]] = {name: [] for name in names}
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            side = run_one(name)
            found[name].append(side)
            print(f"  run {r + 1} {name:6s} {line(side)}; load average {os.getloadavg()[0]:.1f}", flush=True)
    return found
