"""Self-calibration: measured sizes and peaks, stored in the data dir and preferred over estimates next time."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class Calibration:
    """A small JSON store: per model key, the measured weights and the measured peak per workload."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a damaged file must not stop the studio: start afresh
            log.warning("ignoring unreadable calibration file %s: %s", self.path, exc)
            return {}

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # calibration is an optimisation: a full disk only costs precision
            log.warning("could not save calibration to %s: %s", self.path, exc)

    def weights(self, model_key: str) -> int | None:
        with self._lock:
            value = self._data.get(model_key, {}).get("weights")
        return int(value) if value else None

    def peak(self, model_key: str, workload_key: str) -> int | None:
        with self._lock:
            value = self._data.get(model_key, {}).get("peaks", {}).get(workload_key)
        return int(value) if value else None

    def record_weights(self, model_key: str, nbytes: int) -> None:
        with self._lock:
            entry = self._data.setdefault(model_key, {})
            entry["weights"] = int(nbytes)
            entry["updated"] = time.time()
            self._write()

    def record_peak(self, model_key: str, workload_key: str, nbytes: int) -> None:
        """Keep the largest peak seen for this model and workload (memory must fit the worst case)."""
        with self._lock:
            entry = self._data.setdefault(model_key, {})
            peaks = entry.setdefault("peaks", {})
            peaks[workload_key] = max(int(nbytes), int(peaks.get(workload_key, 0)))
            entry["updated"] = time.time()
            self._write()
