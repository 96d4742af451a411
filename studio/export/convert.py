"""A transformers causal LM folder (or a merged model in memory) written as one GGUF file, at F16.

Written with the `gguf` package: `GGUFWriter` for the file, `get_tensor_name_map` for llama.cpp's tensor names,
`studio.export.vocab` for the tokenizer and chat template. What llama.cpp expects beyond the names was learned from
its convert_hf_to_gguf.py (not copied): the Llama family's Q/K rows are permuted to llama.cpp's rotary layout,
1-D tensors (norms, biases) stay F32, tied output weights are not written twice, Llama 3 rope scaling becomes a
`rope_freqs` tensor. Tensors are written one at a time (the header first, from their shapes), so the memory held
is the source plus one converted tensor. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import InputError, StudioError

# HF architecture -> (llama.cpp architecture name, permute Q/K rows for llama.cpp's rope)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),  # Llama 2/3, SmolLM2, TinyLlama
    "MistralForCausalLM": ("llama", True),  # llama.cpp runs Mistral 7B as llama
    "Qwen2ForCausalLM": ("qwen2", False),  # Qwen2, Qwen2.5
    "GemmaForCausalLM": ("gemma", False),  # Gemma (1)
    "Gemma2ForCausalLM": ("gemma2", False),  # Gemma 2
}
NORM_PLUS_ONE = ("gemma", "gemma2")  # Gemma's RMSNorm scales by (1 + weight); llama.cpp's by the weight
COVERED = (
    "Llama, Mistral and SmolLM2 (LlamaForCausalLM, MistralForCausalLM), Qwen2/2.5 (Qwen2ForCausalLM) and "
    "Gemma 1/2 (GemmaForCausalLM, Gemma2ForCausalLM)"
)
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)  # recomputed by llama.cpp; old checkpoints still carry them

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class LazyTensor:
    """A tensor's shape now, its values (a torch tensor) when called: the header is written before any data."""

    shape: tuple[int, ...]
    load: Callable[[], Any]

    def __call__(self) -> Any:
        return self.load()

    @classmethod
    def of(cls, tensor: Any) -> LazyTensor:
        """A tensor already in memory (a merged model's state dict)."""
        return cls(tuple(int(n) for n in tensor.shape), lambda: tensor)


TensorSource = Mapping[str, LazyTensor]  # HF tensor name -> its lazy tensor


@dataclass(frozen=True)
class Architecture:
    """What the converter needs to know about a model's config.json."""

    hf_name: str  # e.g. LlamaForCausalLM
    gguf_name: str  # llama.cpp's name: llama, qwen2
    permute_qk: bool  # Llama family: Q/K rows reordered for llama.cpp's rope
    config: dict  # config.json (a text_config, if any, merged in)

    @property
    def blocks(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or int(self.config["hidden_size"]) // self.heads)

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


def read_config(folder: Path) -> dict:
    """config.json of a model folder; a missing or broken one is an InputError naming the folder."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no config.json (not a transformers model folder).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc}).") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a model config.")
    return config


def architecture(config: dict, where: str = "") -> Architecture:
    """The covered architecture of a config, or an InputError that names the one found."""
    names = config.get("architectures") or []
    name = names[0] if names else ""
    if name not in ARCHITECTURES:
        found = f"{name} (model_type {config.get('model_type', '?')})" if name else "no architecture"
        raise InputError(
            f"{where + ': ' if where else ''}{found} is not covered by the GGUF export.",
            f"It covers {COVERED}.",
        )
    gguf_name, permute = ARCHITECTURES[name]
    flat = {**config, **(config.get("text_config") or {})}
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size"):
        if not isinstance(flat.get(key), int):
            raise InputError(f"{where + ': ' if where else ''}config.json has no {key}.")
    if flat.get("num_local_experts") or flat.get("num_experts"):
        raise InputError(f"{where + ': ' if where else ''}mixture-of-experts {name} models are not covered.")
    rope = _rope(flat)
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3", "yarn"):
        raise InputError(f"{where + ': ' if where else ''}rope scaling {rope.get('rope_type')!r} is not covered.")
    return Architecture(name, gguf_name, permute, flat)


def _rope(config: dict) -> dict:
    """The rope settings as transformers 5 writes them (rope_parameters) or older configs (rope_theta +
    rope_scaling)."""
    params = dict(config.get("rope_parameters") or {})
    if "rope_theta" not in params and config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    scaling = config.get("rope_scaling") or {}
    for key, value in scaling.items():
        params.setdefault("rope_type" if key == "type" else key, value)
    return params


def permute_rows(weight: Any, heads: int) -> Any:
    """Reorder the rows of a Q or K projection (or a LoRA B matrix feeding one) from the HF rotary layout (the
    two halves of each head) to llama.cpp's (interleaved pairs)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensor_name(arch: Architecture, hf_name: str) -> str | None:
    """llama.cpp's name for an HF tensor (None for tensors llama.cpp does not read, such as a tied lm_head)."""
    import gguf

    if hf_name.endswith(SKIPPED_SUFFIXES) or (hf_name == "lm_head.weight" and arch.tied):
        return None
    names = gguf.get_tensor_name_map(_model_arch(arch), arch.blocks)
    mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise InputError(f"The {arch.hf_name} tensor {hf_name!r} has no llama.cpp name; the export cannot place it.")
    return mapped


def hf_tensor(arch: Architecture, hf_name: str, tensor: Any) -> Any:
    """An HF tensor as llama.cpp reads it (Q/K permuted for the Llama family, Gemma's norms plus one)."""
    if arch.gguf_name in NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
        return tensor.float() + 1
    if arch.permute_qk:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_rows(tensor, arch.heads)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_rows(tensor, arch.kv_heads)
    return tensor


def _model_arch(arch: Architecture) -> Any:
    import gguf

    return next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch.gguf_name)


def folder_tensors(folder: Path) -> dict[str, LazyTensor]:
    """The safetensors tensors of a model folder, each read from disk only when it is written."""
    from safetensors import safe_open

    from studio.models.formats import safetensors_files

    files = safetensors_files(Path(folder))
    if not files:
        raise InputError(f"{folder}: no .safetensors weights.", "The export reads safetensors model folders.")
    out: dict[str, LazyTensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                shape = tuple(int(n) for n in handle.get_slice(name).get_shape())
                out[name] = LazyTensor(shape, lambda p=str(path), n=name: _read_tensor(p, n))
    return out


def _read_tensor(path: str, name: str) -> Any:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return handle.get_tensor(name)


def write_gguf(
    out: Path,
    arch: Architecture,
    tensors: TensorSource,
    tokenizer_folder: Path,
    *,
    name: str,
    base_name: str = "",
    tokenizer_pre: str | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Write `tensors` (HF names) as an F16 GGUF file at `out`; returns the tokenizer facts that were written
    (studio.export.vocab.VocabFacts). 2-D weights are F16, 1-D tensors F32."""
    import gguf
    import numpy as np

    from studio.export.vocab import add_vocab

    plan = list(_plan(arch, tensors))
    writer = gguf.GGUFWriter(str(out), arch.gguf_name)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        if base_name:
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, base_name)
        _add_hparams(writer, arch)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        facts = add_vocab(writer, Path(tokenizer_folder), int(arch.config["vocab_size"]), pre=tokenizer_pre)
        for gguf_name, shape, dtype, _ in plan:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            writer.add_tensor_info(gguf_name, shape, np.dtype(dtype), nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(math.prod(shape) for _, shape, _, _ in plan) or 1
        done = 0
        if progress is not None:
            progress("convert", 0.0)
        for _gguf_name, shape, dtype, load in plan:
            if should_stop is not None and should_stop():
                raise ExportCancelled("The export was stopped.")
            writer.write_tensor_data(np.ascontiguousarray(load(), dtype=dtype))
            done += math.prod(shape)
            if progress is not None:
                progress("convert", done / total)
        writer.close()
    except BaseException:
        _close_quietly(writer)
        raise
    return facts


class ExportCancelled(StudioError):
    """should_stop() said stop: the export ended early and wrote nothing."""


def _close_quietly(writer: Any) -> None:
    try:
        for handle in writer.fout or []:
            handle.close()
    except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
        pass


def _plan(arch: Architecture, tensors: TensorSource) -> Iterator[tuple[str, tuple[int, ...], str, Callable]]:
    """(GGUF name, shape, numpy dtype, loader of the numpy array) for every tensor llama.cpp reads."""
    seen: set[str] = set()
    for hf_name in sorted(tensors, key=_layer_order):
        gguf_name = gguf_tensor_name(arch, hf_name)
        if gguf_name is None:
            continue
        if gguf_name in seen:
            raise InputError(f"Two tensors map to {gguf_name}: the model folder holds duplicates.")
        seen.add(gguf_name)
        load = tensors[hf_name]
        shape = load.shape
        dtype = "float32" if len(shape) <= 1 else "float16"
        yield gguf_name, shape, dtype, (lambda n=hf_name, ld=load: _to_numpy(hf_tensor(arch, n, ld())))
    for gguf_name, values in _extra_tensors(arch):
        yield gguf_name, (len(values),), "float32", (lambda v=values: v)


def _to_numpy(tensor: Any) -> Any:
    return tensor.detach().to("cpu").float().numpy()


def _layer_order(name: str) -> tuple[int, int, str]:
    """Embeddings first, then the blocks in order, then the rest: the order llama.cpp files usually have."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return (1, int(parts[i + 1]), name)
    return (0 if "embed" in name else 2, 0, name)


def _extra_tensors(arch: Architecture) -> Iterator[tuple[str, Any]]:
    """Llama 3.1's rope scaling as the `rope_freqs` factors llama.cpp multiplies into its rope frequencies."""
    import numpy as np

    rope = _rope(arch.config)
    if rope.get("rope_type") != "llama3":
        return
    base = float(rope.get("rope_theta", 10000.0))
    dim = arch.head_dim
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    yield "rope_freqs.weight", np.asarray(factors, dtype=np.float32)


def _add_hparams(writer: Any, arch: Architecture) -> None:
    """The architecture's numbers, under llama.cpp's keys."""
    import gguf

    c = arch.config
    writer.add_context_length(int(c.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(int(c["hidden_size"]))
    writer.add_block_count(arch.blocks)
    writer.add_feed_forward_length(int(c["intermediate_size"]))
    writer.add_head_count(arch.heads)
    writer.add_head_count_kv(arch.kv_heads)
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps") or 1e-6))
    writer.add_vocab_size(int(c["vocab_size"]))
    if c.get("head_dim"):
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
    if arch.gguf_name == "llama":
        writer.add_rope_dimension_count(arch.head_dim)
    if arch.gguf_name == "gemma2":
        writer.add_attn_logit_softcapping(float(c.get("attn_logit_softcapping") or 50.0))
        writer.add_final_logit_softcapping(float(c.get("final_logit_softcapping") or 30.0))
        writer.add_sliding_window(int(c.get("sliding_window") or 4096))
    rope = _rope(c)
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind, factor = rope.get("rope_type", "default"), rope.get("factor")
    if kind == "linear" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
