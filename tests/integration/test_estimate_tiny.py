"""Estimates from headers against what the real loaders really hold, on the tiny models (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.models.estimate import estimate, tensor_bytes
from studio.models.specs import ModelSpec

tiny = pytest.importorskip("studio.models.tiny")


def _causal_lm(root: Path):
    from transformers import AutoModelForCausalLM

    folder = tiny.build_tiny_causal_lm(root / "lm", seed=0)
    return ModelSpec("chat", str(folder), "folder"), lambda: AutoModelForCausalLM.from_pretrained(folder)


def _wide_causal_lm(root: Path):
    from transformers import AutoModelForCausalLM

    folder = tiny.build_tiny_causal_lm(root / "lm-wide", seed=1, hidden_size=192, intermediate_size=384)
    return ModelSpec("chat", str(folder), "folder"), lambda: AutoModelForCausalLM.from_pretrained(folder)


def _sd_pipeline(root: Path):
    from diffusers import StableDiffusionPipeline

    folder = tiny.build_tiny_sd_pipeline(root / "sd", seed=0)
    return ModelSpec("image", str(folder), "folder"), lambda: StableDiffusionPipeline.from_pretrained(folder)


def _whisper(root: Path):
    import whisper

    path = tiny.build_tiny_whisper(root / "whisper-tiny.pt", seed=0)
    return ModelSpec("speech", str(path), "file"), lambda: whisper.load_model(str(path), device="cpu")


@pytest.mark.parametrize(
    "build",
    [_causal_lm, _wide_causal_lm, _sd_pipeline, _whisper],
    ids=["causal-lm", "causal-lm-wide", "sd-pipeline", "whisper"],
)
def test_estimate_is_within_15_percent_of_the_loaded_size(tmp_path, build):
    spec, load = build(tmp_path)
    result = estimate(spec)  # before loading: headers and archive entries only
    assert result.weights_bytes > 0 and result.runtime_bytes > 0
    model = load()
    measured = tensor_bytes(model)
    assert abs(result.weights_bytes - measured) <= 0.15 * measured, (spec.name, result, measured)
