"""StudioPaths: where the studio keeps what it makes. Light (no model libraries), so `launch.py` checks the data
dir before the slow imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.errors import ConfigError


@dataclass(frozen=True)
class StudioPaths:
    """Where the studio keeps what it makes. Everything lives under the data dir."""

    data_dir: Path
    outputs: Path  # generated images, transcripts
    runs: Path  # fine-tune run folders (job.json, adapter, metrics)
    models: Path  # converted and downloaded models
    calibration: Path  # measured sizes and peaks
    preferences: Path  # preference datasets collected from votes in the Chat tab (JSONL, one line per vote)

    @classmethod
    def under(cls, data_dir: Path) -> StudioPaths:
        data_dir = Path(data_dir).expanduser().resolve()
        return cls(
            data_dir,
            data_dir / "outputs",
            data_dir / "runs",
            data_dir / "models",
            data_dir / "calibration.json",
            data_dir / "preferences",
        )

    def create(self) -> None:
        """Make the folders; a data dir that cannot be written is a ConfigError naming --data-dir."""
        try:
            for folder in (self.data_dir, self.outputs, self.runs, self.models, self.preferences):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"--data-dir {self.data_dir}: cannot write there ({exc.strerror or exc}).",
                "Pick a folder you can write to.",
            ) from None
