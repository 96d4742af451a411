"""The generic loader: each kind of model registers how to load, estimate, measure and park its models.

The manager knows nothing about transformers, diffusers or whisper; it calls the `ModelKind` registered for
`spec.kind`. Later engines plug in by registering (or replacing) a kind in the context's registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.estimate import Estimate, Workload, tensor_bytes
from studio.models.specs import ModelSpec


@dataclass(frozen=True)
class LoadOptions:
    """What every loader may need from the studio's settings."""

    offline: bool = False  # never contact the Hub
    cache_dir: Path | None = None  # data_dir/models: converted and downloaded models
    gpu_layers: int | None = None  # llama.cpp: layers to put on the GPU (None = all), set by a partial offload plan
    cpu_threads: int = 0  # llama.cpp: CPU threads (0 = one per core)


def move_module(model: Any, device: str) -> Any:
    """Move a torch module, a diffusers pipeline or a LoadedLM between devices (park/unpark)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "to") and not hasattr(model, "components"):
        model.model = inner.to(device)
        return model
    return model.to(device)


def _parkable_default(spec: ModelSpec) -> bool:
    # bitsandbytes-quantised weights cannot move to the CPU and back; CTranslate2 models have no .to()
    return spec.precision not in ("nf4", "int8") and spec.backend != "faster-whisper"


@dataclass(frozen=True)
class ModelKind:
    """How one kind of model is handled."""

    name: str
    load: Callable[[ModelSpec, LoadOptions], Any]  # returns the model on spec.device
    estimate: Callable[[ModelSpec, Workload], Estimate] | None = None  # None = estimate from the files
    measure: Callable[[Any, ModelSpec], int] = lambda model, spec: tensor_bytes(model)  # measured bytes, loaded
    move: Callable[[Any, str], Any] = move_module  # park to "cpu" / back to the device
    parkable: Callable[[ModelSpec], bool] = _parkable_default
    # the most of the model that fits `room` device bytes when all of it does not (llama.cpp's partial offload):
    # an object with .estimate (what the device holds), .gpu_layers and .note, or None when nothing useful fits
    offload: Callable[[ModelSpec, Workload, int], Any] | None = None
    describe: Callable[[ModelSpec], str] | None = None  # what runs it ("llama.cpp · Q4_1"); None = its precision
    # a sentence the plan adds before a load ("An image costs 576 tokens of the context."), or None
    plan_note: Callable[[ModelSpec, Workload], str] | None = None
    description: str = ""


@dataclass
class KindRegistry:
    """The kinds the manager can load, keyed by `ModelSpec.kind`. Lives in the AppContext, not a module global."""

    kinds: dict[str, ModelKind] = field(default_factory=dict)

    def register(self, kind: ModelKind) -> None:
        self.kinds[kind.name] = kind

    def get(self, name: str) -> ModelKind:
        try:
            return self.kinds[name]
        except KeyError:
            known = ", ".join(sorted(self.kinds)) or "none"
            raise ModelLoadError(f"No loader for models of kind {name!r} (known: {known}).") from None

    def __contains__(self, name: str) -> bool:
        return name in self.kinds


def _load_lm(spec: ModelSpec, opts: LoadOptions) -> Any:
    if spec.backend == "llama.cpp":
        from studio.engines import llamacpp

        return llamacpp.load(spec, opts.cache_dir, gpu_layers=opts.gpu_layers, threads=opts.cpu_threads)
    from studio.models.loading import load_causal_lm

    return load_causal_lm(spec, offline=opts.offline, models_dir=opts.cache_dir)


def _estimate_chat(spec: ModelSpec, workload: Workload) -> Estimate:
    from studio.models.estimate import estimate

    if spec.backend == "llama.cpp":
        from studio.engines import llamacpp

        return llamacpp.estimate(spec, workload)
    return estimate(spec, workload)


def _measure_chat(model: Any, spec: ModelSpec) -> int:
    if spec.backend == "llama.cpp":  # llama.cpp's buffers are not torch tensors: what it put on the device
        return int(model.device_weight_bytes)
    return tensor_bytes(model)


def _offload_chat(spec: ModelSpec, workload: Workload, room: int) -> Any:
    if spec.backend != "llama.cpp":
        return None
    from studio.engines import llamacpp

    return llamacpp.offload(spec, workload, room)


def _describe_chat(spec: ModelSpec) -> str:
    from studio.engines.llamacpp import engine_label

    return engine_label(spec)


def _parkable_chat(spec: ModelSpec) -> bool:
    return spec.backend != "llama.cpp" and _parkable_default(spec)  # a llama.cpp model has no .to(); it reloads fast


def _load_vision(spec: ModelSpec, opts: LoadOptions) -> Any:
    from studio.models.loading import load_vision_lm

    return load_vision_lm(spec, offline=opts.offline)


def _estimate_vision(spec: ModelSpec, workload: Workload) -> Estimate:
    from studio.models.vision import estimate_vision

    return estimate_vision(spec, workload)


def _vision_note(spec: ModelSpec, workload: Workload) -> str:
    from studio.models.vision import image_tokens

    return f"An image costs {image_tokens(spec)} tokens of the context at the model's size."


def _load_image(spec: ModelSpec, opts: LoadOptions) -> Any:
    from studio.models.loading import load_diffusion_pipeline

    return load_diffusion_pipeline(spec, offline=opts.offline)


def _load_speech(spec: ModelSpec, opts: LoadOptions) -> Any:
    from studio.models.loading import load_whisper

    root = opts.cache_dir / "whisper" if opts.cache_dir else None
    return load_whisper(spec, offline=opts.offline, download_root=root)


def _measure_speech(model: Any, spec: ModelSpec) -> int:
    if type(model).__name__ == "WhisperModel":  # faster-whisper holds CTranslate2 buffers, not torch tensors
        from studio.models.estimate import weights_info

        return weights_info(spec).stored_bytes
    return tensor_bytes(model)


def _load_embedding(spec: ModelSpec, opts: LoadOptions) -> Any:
    from studio.engines.embedding import load_encoder

    return load_encoder(spec, opts)


def default_registry() -> KindRegistry:
    """The kinds the studio ships with: chat, vision (chat with images) and training bases (transformers), image
    (diffusers), speech, embedding (transformers encoders)."""
    reg = KindRegistry()
    reg.register(
        ModelKind(
            "chat",
            _load_lm,
            estimate=_estimate_chat,
            measure=_measure_chat,
            parkable=_parkable_chat,
            offload=_offload_chat,
            describe=_describe_chat,
            description="causal language model (transformers, or llama.cpp for GGUF files)",
        )
    )
    reg.register(
        ModelKind(
            "vision",
            _load_vision,
            estimate=_estimate_vision,
            plan_note=_vision_note,
            description="vision-language model: chat that takes images (transformers image-text-to-text)",
        )
    )
    reg.register(ModelKind("base-for-training", _load_lm, description="base model for fine-tuning"))
    reg.register(ModelKind("image", _load_image, description="diffusion pipeline (diffusers)"))
    reg.register(
        ModelKind(
            "speech", _load_speech, measure=_measure_speech, description="Whisper (openai-whisper or faster-whisper)"
        )
    )
    reg.register(
        ModelKind(
            "embedding",
            _load_embedding,
            parkable=lambda spec: True,  # always 16- or 32-bit (never quantised): it moves to the CPU and back
            description="text embedding encoder (sentence-transformers / BERT-style, transformers)",
        )
    )
    return reg
