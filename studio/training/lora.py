"""The model side of LoRA fine-tuning: the base model as training loads it, the loss, and merging an adapter.

The base is loaded safely (studio.models.loading) at the job's precision, or in 4-bit NF4 for QLoRA; the loss
sums cross-entropy over the learned tokens only; `merge` folds a run's adapter into a 16/32-bit copy of its base
and saves a full safetensors model folder. Heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError, StudioError
from studio.models.loading import model_location, nf4_config, pretrained_kwargs, torch_dtype
from studio.models.specs import ModelSpec
from studio.training import rows as rowlib
from studio.training.job import RunDir, TrainJob, check_disk


def lora_config(job: TrainJob, base: Any):
    """The peft LoraConfig of `job` for `base`: its rank, alpha and dropout, on its target modules (the model type's
    defaults when the job names none)."""
    from peft import LoraConfig

    from studio.training.job import default_targets

    targets = list(job.target_modules) or list(default_targets(getattr(base.config, "model_type", "")))
    return LoraConfig(
        r=job.rank,
        lora_alpha=job.alpha,
        lora_dropout=job.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def load_base(job: TrainJob, device_index: int = 0):
    """The base model for training: at its precision, or 4-bit NF4 for QLoRA (bitsandbytes), loaded safely."""
    from transformers import AutoModelForCausalLM

    spec = ModelSpec(
        "base-for-training",
        job.base_model,
        "hub" if job.source_type == "hub" else "folder",
        precision=job.load_precision,
        device=job.device,
        label=job.base_label,
    )
    where = model_location(spec)
    kwargs: dict[str, Any] = {**pretrained_kwargs(spec, job.offline), "dtype": torch_dtype(spec)}
    if job.method == "qlora":
        kwargs["quantization_config"] = nf4_config()
        kwargs["device_map"] = {"": device_index if job.device == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{spec.name}: cannot load it for training ({text}).") from None
    if job.method != "qlora":
        model = model.to(f"cuda:{device_index}" if job.device == "cuda" else "cpu")
    return model


def token_loss(model, batch: dict[str, Any], n_items: int):
    """Summed cross-entropy of the learned tokens divided by `n_items`.

    Logits are computed only where the next token is learned (`logits_to_keep` with the positions): the output
    layer over the vocabulary is the costliest part of a small model, and prompts need none of it.
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    target = labels[:, 1:]
    keep = (target != rowlib.IGNORE).any(0).nonzero().squeeze(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    picked = target[:, keep]
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), picked.reshape(-1), ignore_index=rowlib.IGNORE, reduction="sum"
    )
    return loss / n_items


def merged_model(run: RunDir, *, device: str | None = None, precision: str | None = None):
    """The run's base (on `device`, default the job's; at `precision`, default bf16 on CUDA and fp32 on the CPU)
    with its adapter merged in: a plain transformers model, nothing written."""
    from peft import PeftModel

    job = run.job()
    if not (run.adapter / "adapter_config.json").is_file():
        raise StudioError(f"{run.name} has no adapter yet.", "Train (or stop) the run first.")
    device = device or job.device
    precision = precision or ("bf16" if device == "cuda" else "fp32")
    base_job = TrainJob(**{**job.__dict__, "method": "lora", "precision": precision, "device": device})
    base = load_base(base_job)
    return PeftModel.from_pretrained(base, str(run.adapter)).merge_and_unload()


def merge(run: RunDir, out: Path | None = None) -> Path:
    """Merge the run's adapter into a 16/32-bit copy of its base; save a full safetensors model folder."""
    import torch

    job = run.job()
    out = Path(out) if out else run.merged
    merged = merged_model(run)
    check_disk(out.parent, sum(p.numel() * p.element_size() for p in merged.parameters()))
    tokenizer = rowlib.load_tokenizer(job.base_model, offline=job.offline)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
