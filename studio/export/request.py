"""One export: what to export and to which format (ExportRequest), and what was written (ExportResult). No torch."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio.config import default_data_dir
from studio.errors import InputError

FORMATS = ("f16", "q8_0", "q4_k_m", "q5_k_m", "lora")
QUANTIZED = ("q8_0", "q4_k_m", "q5_k_m")
FORMAT_LABELS = {  # what a picker shows; also the tag in file names
    "f16": "F16",
    "q8_0": "Q8_0",
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "lora": "LoRA",
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

Progress = Callable[[str, float], None]  # (stage: merge | convert | quantize, fraction done 0..1)


@dataclass(frozen=True)
class ExportRequest:
    """An export to GGUF (whole model) or GGUF LoRA (a run's adapter alone)."""

    source: str  # a fine-tune run folder, a transformers model folder, a downloaded Hub id, or "starter"
    format: str  # f16 | q8_0 | q4_k_m | q5_k_m | lora (GGUF LoRA, run folders only)
    out_dir: Path | None = None  # None: RUN_DIR/export/ for a run, DATA_DIR/outputs/exports/ otherwise
    data_dir: Path = field(default_factory=default_data_dir)  # where the starter and outputs/exports/ live
    name: str = ""  # file stem; "" = the run's or model's name and the format, e.g. SmolLM2-135M-Instruct-Q8_0

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", (self.format or "").strip().lower())
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir).expanduser())
        self.check()

    def check(self) -> None:
        if not (self.source or "").strip():
            raise InputError("Name what to export: a run folder, a model folder, or starter.")
        if self.format not in FORMATS:
            raise InputError(f"The format must be one of {', '.join(FORMATS)}, not {self.format!r}.")
        if self.name and not NAME.match(self.name):
            raise InputError(
                f"The name {self.name[:40]!r} cannot be a file name.",
                "Use letters, digits, dots, dashes and underscores (up to 100).",
            )
        if self.out_dir is not None and self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"--out {self.out_dir}: a file, not a folder.")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path  # the GGUF file
    format: str  # one of FORMATS
    bytes: int  # its size
    source_bytes: int  # the size of what it was made from (the weights on disk; for a run, base + adapter)
    modelfile: Path | None  # the Ollama Modelfile beside it (None for a GGUF LoRA file)
    ollama_command: str | None  # the one-line import, `ollama create NAME -f MODELFILE`
    seconds: float  # wall time of the whole export
    warnings: tuple[str, ...] = ()  # what the user should know (an unrecognised pre-tokenizer, ...)

    def to_json(self) -> dict:
        """The result as JSON values (`python -m studio.export --json` prints it; the page reads it back)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "bytes": self.bytes,
            "source_bytes": self.source_bytes,
            "modelfile": str(self.modelfile) if self.modelfile else None,
            "ollama_command": self.ollama_command,
            "seconds": round(self.seconds, 3),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: dict) -> ExportResult:
        return cls(
            path=Path(data["path"]),
            format=str(data["format"]),
            bytes=int(data["bytes"]),
            source_bytes=int(data["source_bytes"]),
            modelfile=Path(data["modelfile"]) if data.get("modelfile") else None,
            ollama_command=data.get("ollama_command"),
            seconds=float(data.get("seconds") or 0.0),
            warnings=tuple(data.get("warnings") or ()),
        )

    @property
    def ratio(self) -> float:
        """Size after / size before."""
        return self.bytes / self.source_bytes if self.source_bytes else 0.0
