"""One way for tests to build a model manager on the CPU against host RAM (what the studio does without CUDA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GIB = 1024**3


def cpu_manager(folder: Path, budget: int = 2 * GIB, **options: Any):
    """A ModelManager on the CPU: the real kinds, its calibration file in `folder`, no reserve. `options` go to
    ModelManager as they are (load_options, kinds, park_budget_bytes, ...)."""
    from studio.memory.probes import HostProbe
    from studio.memory.timeline import EventLog
    from studio.models.calibration import Calibration
    from studio.models.kinds import default_registry
    from studio.models.manager import ModelManager

    options.setdefault("kinds", default_registry())
    return ModelManager(
        probe=HostProbe(),
        calibration=Calibration(Path(folder) / "calibration.json"),
        events=EventLog(),
        device="cpu",
        budget_bytes=budget,
        reserve_bytes=0,
        **options,
    )
