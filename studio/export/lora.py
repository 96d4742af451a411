"""A run's PEFT LoRA adapter as a llama.cpp GGUF LoRA file (`llama-cli --lora`, `Llama(lora_path=...)`).

The layout was learned from llama.cpp's convert_lora_to_gguf.py and llama-adapter.cpp: `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, the base's `general.architecture`, and for every adapted weight W
of the base two tensors named after W's GGUF name, `<name>.lora_a` (A, rank x in) and `<name>.lora_b` (B, out x
rank). llama.cpp adds scale * B @ A with scale = alpha / rank, as peft does. Where the base conversion permutes
the rows of W (Q and K of the Llama family), the rows of B are permuted the same way, since rows(B @ A) = rows(B).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.errors import InputError
from studio.export.convert import Architecture, gguf_tensor_name, hf_tensor

PREFIX = "base_model.model."


def adapter_config(adapter: Path) -> dict:
    path = Path(adapter) / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{adapter}: no adapter_config.json (not a PEFT adapter).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc}).") from None


def check_adapter(config: dict, where: str) -> None:
    """Refuse what llama.cpp's LoRA format cannot carry, naming it."""
    if (config.get("peft_type") or "LORA").upper() != "LORA":
        raise InputError(f"{where}: a {config.get('peft_type')} adapter, not LoRA; llama.cpp loads LoRA only.")
    for key, what in (("use_dora", "DoRA"), ("modules_to_save", "fully trained modules (modules_to_save)")):
        if config.get(key):
            raise InputError(f"{where}: the adapter uses {what}, which a GGUF LoRA file cannot hold.")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise InputError(f"{where}: the adapter has a per-layer {key}, which a GGUF LoRA file cannot hold.")
    if (config.get("bias") or "none") != "none":
        raise InputError(f"{where}: the adapter trains biases ({config['bias']}), which a GGUF LoRA file cannot hold.")


def effective_alpha(config: dict) -> float:
    """The alpha llama.cpp needs so that alpha / rank is peft's scale (alpha / sqrt(rank) with rsLoRA)."""
    alpha, rank = float(config.get("lora_alpha") or 8), int(config.get("r") or 8)
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def write_gguf_lora(
    out: Path,
    arch: Architecture,
    adapter: Path,
    *,
    name: str,
    base_name: str = "",
    progress: Callable[[str, float], None] | None = None,
) -> int:
    """Write the adapter in `adapter` (a PEFT folder) for a base of architecture `arch`; returns its tensor count."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    config = adapter_config(adapter)
    check_adapter(config, str(adapter))
    weights_file = Path(adapter) / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise InputError(f"{adapter}: no adapter_model.safetensors.", "Train (or stop) the run again to save it.")
    weights = load_file(str(weights_file), device="cpu")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in weights.items():
        base, part = _split(key)
        if part is None:
            raise InputError(f"{adapter}: {key!r} is not a LoRA A or B matrix; a GGUF LoRA file cannot hold it.")
        pairs.setdefault(base, {})[part] = tensor
    writer = gguf.GGUFWriter(str(out), arch.gguf_name)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, effective_alpha(config))
        writer.add_name(name)
        if base_name:
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, base_name)
        for i, (base, ab) in enumerate(sorted(pairs.items())):
            if set(ab) != {"A", "B"}:
                raise InputError(f"{adapter}: {base} has only lora_{''.join(ab)}; the adapter is incomplete.")
            target = gguf_tensor_name(arch, base)
            if target is None or "token_embd" in target:
                raise InputError(f"{adapter}: the adapter changes {base}, which a GGUF LoRA file cannot hold.")
            lora_b = hf_tensor(arch, base, ab["B"])  # Q/K: the rows of B move with the rows of W
            writer.add_tensor(f"{target}.lora_a", np.ascontiguousarray(ab["A"].float().numpy(), dtype=np.float32))
            writer.add_tensor(f"{target}.lora_b", np.ascontiguousarray(lora_b.float().numpy(), dtype=np.float32))
            if progress is not None:
                progress("convert", 0.5 * (i + 1) / len(pairs))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except BaseException:
        for handle in writer.fout or []:
            handle.close()
        raise
    if progress is not None:
        progress("convert", 1.0)
    return 2 * len(pairs)


def _split(key: str) -> tuple[str, str | None]:
    """('model.layers.0.self_attn.q_proj.weight', 'A') for a peft key, or (key, None) for anything else."""
    name = key.removeprefix(PREFIX)
    for part in ("A", "B"):
        for marker in (f".lora_{part}.weight", f".lora_{part}.default.weight"):
            if name.endswith(marker):
                return name[: -len(marker)] + ".weight", part
    return name, None
