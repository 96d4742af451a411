"""Shared fixtures. Nothing here downloads: models come from studio.models.tiny."""

from __future__ import annotations

import os

import pytest

from studio.models.tiny import TinyModels, build_all


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny random LM, SD pipeline and Whisper checkpoint, built once per run (shared by xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker has its own basetemp inside the run's folder
    return build_all(base / "tiny-models")
