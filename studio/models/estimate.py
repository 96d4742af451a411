"""How many bytes a model will take, before it is loaded.

Weights are sized from what the files say about themselves (`studio.models.formats`: safetensors headers, GGUF
metadata, the entries of a torch checkpoint archive, a CTranslate2 `model.bin` header) or from known dimensions
(`studio.models.dims`, for catalog models not downloaded yet). The weights are never read. The size is scaled to
the precision the loader really uses, and the runtime memory for a workload (KV cache, diffusion activations,
Whisper decoder state) is added. `tensor_bytes` measures a loaded model the same way, so the manager can compare
and calibrate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ModelLoadError
from studio.models.dims import catalog_info
from studio.models.formats import INTEGER_DTYPES, SAFETENSORS_DTYPE_BYTES, WeightsInfo, file_info, folder_info
from studio.models.specs import BYTES_PER_PARAM, ModelSpec
from studio.models.starter import starter_weights_info

MIB = 1024**2
DEFAULT_CONTEXT = 4096  # chat context when the workload and the model say nothing (also the cap on the default)


@dataclass(frozen=True)
class Workload:
    """What the model will be asked to do; sizes its runtime memory."""

    context_len: int = 0  # chat: tokens held in the KV cache (0 = the model's default, capped at 4096)
    batch: int = 1  # sequences (chat) / images (image) / beams (speech)
    width: int = 0  # image: pixels (0 = the model's native size)
    height: int = 0  # image: pixels (0 = the model's native size)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")
        for name in ("context_len", "width", "height"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")

    @property
    def key(self) -> str:
        """A stable short string ("default", "ctx2048", "b2-768x512"), used for calibration records."""
        parts = [f"ctx{self.context_len}"] if self.context_len else []
        parts += [f"b{self.batch}"] if self.batch != 1 else []
        parts += [f"{self.width}x{self.height}"] if self.width or self.height else []
        return "-".join(parts) or "default"


@dataclass(frozen=True)
class Estimate:
    """Bytes a model needs: its weights at the load precision, plus runtime memory for a workload."""

    weights_bytes: int
    runtime_bytes: int
    params: int
    method: str  # human-readable: e.g. "safetensors header, fp16" or "measured peak (calibrated)"

    @property
    def total(self) -> int:
        return self.weights_bytes + self.runtime_bytes


# ----- the public functions -------------------------------------------------------------------------------


def estimate(spec: ModelSpec, workload: Workload | None = None) -> Estimate:
    """Bytes `spec` will need once loaded, for `workload` (default: the model's usual one). Reads headers only."""
    info = weights_info(spec)
    precision = load_precision(spec)
    how = f"{info.method}, {precision}"
    if precision != spec.precision:
        how += f" ({spec.precision} loads as {precision} on {spec.device})"
    return Estimate(
        weights_bytes=weights_bytes(info, precision),
        runtime_bytes=runtime_bytes(spec, info, workload or Workload()),
        params=info.params,
        method=how,
    )


def load_precision(spec: ModelSpec) -> str:
    """The precision the studio's loaders really use for `spec` (studio.models.loading), which the size follows.

    Chat models load at their precision (bitsandbytes nf4/int8 also runs on the CPU); diffusers pipelines run fp16 as
    fp32 on the CPU and never quantize; openai-whisper runs fp16 only on CUDA; CTranslate2 picks a compute type.
    """
    p, cpu = spec.precision, spec.device == "cpu"
    if spec.kind == "image":
        p = p if p in ("fp16", "bf16", "fp32") else "fp16"
        return "fp32" if cpu and p == "fp16" else p
    if spec.kind == "embedding":  # studio.engines.embedding never quantises: 16-bit on CUDA, fp32 on the CPU
        if p in ("nf4", "int8"):
            p = "fp16"
        return "fp32" if cpu and p == "fp16" else p
    if spec.kind == "speech":
        if _is_ctranslate2(spec):
            if cpu:
                return "int8" if p in ("int8", "nf4") else "fp32"
            return "int8" if p == "nf4" else p
        return "fp16" if p == "fp16" and not cpu else "fp32"
    return p  # chat: bitsandbytes quantises nf4/int8 on CUDA and on the CPU alike


def weights_bytes(info: WeightsInfo, precision: str) -> int:
    """Bytes of the weights once loaded at `precision`.

    Floating tensors take BYTES_PER_PARAM[precision]; integer and bool tensors keep their stored size. For nf4
    and int8 only `quantizable_params` shrink: bitsandbytes leaves embeddings, the output head and norms in 16-bit.
    The same rule serves CTranslate2 int8 and GGUF (which transformers dequantizes to `precision`); the caller
    passes the precision the loader will really use (see `load_precision`). Known non-persistent buffers that
    the files do not hold (the Whisper decoder's causal mask) are added.
    """
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_PARAM)}, not {precision!r}")
    int_elems = sum(n for dtype, n in info.dtypes.items() if dtype in INTEGER_DTYPES)
    int_bytes = sum(n * SAFETENSORS_DTYPE_BYTES[dtype] for dtype, n in info.dtypes.items() if dtype in INTEGER_DTYPES)
    floats = max(0, info.params - int_elems)
    if precision in ("nf4", "int8"):
        quantized = min(info.quantizable_params, floats)
        nbytes = quantized * BYTES_PER_PARAM[precision] + (floats - quantized) * 2
    else:
        nbytes = floats * BYTES_PER_PARAM[precision]
    return int(round(nbytes + int_bytes + _buffer_bytes(info.config, precision)))


def runtime_bytes(spec: ModelSpec, info: WeightsInfo, workload: Workload) -> int:
    """Memory beyond the weights that running `workload` takes: KV cache, activations, decoder state."""
    element = 4 if load_precision(spec) == "fp32" else 2  # compute dtype: nf4/int8 compute in 16-bit
    if spec.kind == "chat":
        return _chat_runtime(info, workload, element)
    if spec.kind == "image":
        return _image_runtime(info, workload, element)
    if spec.kind == "speech":
        return _speech_runtime(info, workload, element)
    if spec.kind == "embedding":
        return _embedding_runtime(info, element)
    return 0  # base-for-training: training memory is estimated with the job, not here


def tensor_bytes(obj: Any) -> int:
    """Measured size of a loaded model: bytes of all parameters and buffers of every torch module in `obj`.

    `obj` is a module, a diffusers pipeline (its `components`) or a wrapper with a `.model`. Tensors that share
    storage (tied embeddings, components sharing a module) count once; bitsandbytes scales are included.
    """
    import torch

    seen: set[tuple[str, int]] = set()
    total = 0
    for module in _torch_modules(obj, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            for t in (tensor, *_quant_state_tensors(tensor)):
                total += _storage_bytes(t, seen)
    return total


def weights_info(spec: ModelSpec) -> WeightsInfo:
    """What the files (or the catalog) say about `spec`'s weights. Never loads them."""
    path = spec.path
    if path is None and spec.source_type == "starter" and Path(spec.source).expanduser().exists():
        path = Path(spec.source).expanduser()
    if path is None and spec.source_type == "starter":
        return starter_weights_info()
    if path is not None:
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file or folder.", "Check the path, or pick a model from the list.")
        return folder_info(path) if path.is_dir() else file_info(path, spec.kind)
    known = catalog_info(spec.source)
    if known is not None:
        return known
    snapshot = _hub_snapshot(spec.source, spec.revision)
    if snapshot is not None:
        return folder_info(snapshot)
    raise ModelLoadError(
        f"{spec.source}: not in the model list and not downloaded, so its size is unknown.",
        f"Press Download beside the model picker (Chat or Models tab) or run `hf download {spec.source}`; "
        "or pick a local folder or a model from the list.",
    )


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` in the local Hugging Face cache, if it was downloaded. Never downloads.
    A snapshot the studio downloaded holds only what a model needs (huggingface_hub calls the whole repository
    incomplete without it): then it is found as the studio's download."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a valid id, or no huggingface_hub: all mean "unknown"
        from studio.models.hub import cached_snapshot

        try:
            return cached_snapshot(repo_id, revision)
        except Exception:  # noqa: BLE001
            return None


# ----- runtime memory -------------------------------------------------------------------------------------


def _chat_runtime(info: WeightsInfo, workload: Workload, element: int) -> int:
    """KV cache for the context, logits of one step (fp32, twice for sampling), and one prompt forward pass."""
    c = info.config
    heads = c.get("num_attention_heads") or 0
    hidden = c.get("hidden_size") or 0
    layers = c.get("num_hidden_layers") or 0
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or (hidden // heads if heads else 0)
    max_pos = c.get("max_position_embeddings") or DEFAULT_CONTEXT
    context = workload.context_len or min(max_pos, DEFAULT_CONTEXT)
    batch = workload.batch
    if not (layers and kv_heads and head_dim):  # unknown shape: a fifth of the 16-bit weights
        return int(info.params * 2 * 0.2)
    kv = 2 * layers * kv_heads * head_dim * context * batch * element
    logits = batch * (c.get("vocab_size") or 128_000) * 4 * 2
    if not hidden:  # a dense transformer has about 12 * layers * hidden^2 parameters
        hidden = int(math.sqrt(info.params / (12 * layers)))
    intermediate = c.get("intermediate_size") or 4 * hidden
    activations = batch * context * (2 * hidden + 3 * intermediate) * element  # the MLP's 3 wide tensors dominate
    return kv + logits + activations


def _image_runtime(info: WeightsInfo, workload: Workload, element: int) -> int:
    """Diffusion activations without attention slicing, calibrated on real runs.

    runtime = 1536 * pixels * batch * element * (vae_channels / 128) + min(512 MiB, 0.3 * denoiser weights).
    The pixel term covers the UNet (both halves of classifier-free guidance) and the VAE decode at full
    resolution, whose width scales with the VAE's first channel count (128 in SD); the second term is
    workspace that grows with the model. SD 1.5 at 512x512 fp16: about 1.3 GB; SDXL at 1024x1024: about 3.8 GB.
    """
    c = info.config
    native = c.get("native_size") or 512
    pixels = (workload.width or native) * (workload.height or native) * workload.batch
    vae_channels = (c.get("vae") or {}).get("block_out_channels") or [128]
    width_scale = min(1.0, vae_channels[0] / 128)
    components = c.get("components") or {}
    denoiser = components.get("unet") or components.get("transformer")
    workspace = min(512 * MIB, 0.3 * denoiser * element) if denoiser else 512 * MIB
    return int(1536 * pixels * element * width_scale + workspace)


def _speech_runtime(info: WeightsInfo, workload: Workload, element: int) -> int:
    """Whisper: decoder self+cross KV per beam, the encoder pass and its output, logits, the mel, and 32 MiB."""
    d = info.config
    needed = ("n_text_layer", "n_text_ctx", "n_text_state", "n_audio_ctx", "n_audio_state")
    if not all(d.get(k) for k in needed):
        return int(info.params * 2 * 0.1) + 32 * MIB
    beams = workload.batch
    decoder = beams * d["n_text_layer"] * d["n_text_ctx"] * d["n_text_state"] * 2 * 2 * element
    encoder_out = d["n_audio_ctx"] * d["n_audio_state"] * element * beams
    encoder_pass = (
        d["n_audio_ctx"] * d["n_audio_state"] * 4 + d.get("n_audio_head", 8) * d["n_audio_ctx"] ** 2
    ) * element
    logits = beams * d.get("n_vocab", 51865) * 4
    mel = d.get("n_mels", 80) * 3000 * 4
    return decoder + encoder_out + encoder_pass + logits + mel + 32 * MIB


# ----- helpers --------------------------------------------------------------------------------------------


def _embedding_runtime(info: WeightsInfo, element: int) -> int:
    """One forward pass of a full batch (studio.engines.embedding.BATCH inputs at the model's longest input): the
    hidden states, the feed-forward activations and one layer's attention scores (eager attention)."""
    from studio.engines.embedding import BATCH, DEFAULT_MAX_TOKENS

    c = info.config
    hidden = int(c.get("hidden_size") or 384)
    inner = int(c.get("intermediate_size") or 4 * hidden)
    heads = int(c.get("num_attention_heads") or 12)
    seq = min(int(c.get("max_position_embeddings") or DEFAULT_MAX_TOKENS), DEFAULT_MAX_TOKENS)
    activations = BATCH * seq * (4 * hidden + inner) * element
    scores = BATCH * heads * seq * seq * element
    return activations + scores


def _buffer_bytes(config: dict, precision: str) -> int:
    """Non-persistent buffers the files do not hold but the loaded model does. Only openai-whisper's decoder
    causal mask (n_text_ctx^2) matters; rotary inv_freq and position ids are under a few KB and left out."""
    n_ctx = config.get("n_text_ctx")
    if isinstance(n_ctx, int) and "n_text_state" in config and config.get("format") != "ctranslate2":
        return n_ctx * n_ctx * (2 if precision in ("fp16", "bf16") else 4)
    return 0


def _is_ctranslate2(spec: ModelSpec) -> bool:
    path = spec.path
    if spec.backend == "faster-whisper":
        return True
    return path is not None and path.is_dir() and (path / "model.bin").is_file()


def _torch_modules(obj: Any, module_type: type) -> list:
    """The torch modules inside a model object: itself, a pipeline's components, or a wrapper's `.model`."""
    if isinstance(obj, module_type):
        return [obj]
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        return [m for m in components.values() if isinstance(m, module_type)]
    inner = getattr(obj, "model", None)
    if isinstance(inner, module_type):
        return [inner]
    return [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, module_type)]


def _quant_state_tensors(tensor: Any) -> list:
    """bitsandbytes keeps block scales beside the packed weights: nf4 `quant_state`, int8 `SCB`."""
    extra = []
    state = getattr(tensor, "quant_state", None)
    for holder in (state, getattr(state, "state2", None)):
        for attr in ("absmax", "code", "offset"):
            value = getattr(holder, attr, None)
            if value is not None and hasattr(value, "untyped_storage"):
                extra.append(value)
    scb = getattr(tensor, "SCB", None)
    if scb is not None and hasattr(scb, "untyped_storage"):
        extra.append(scb)
    return extra


def _storage_bytes(t: Any, seen: set[tuple[str, int]]) -> int:
    """Bytes of `t`'s storage the first time it is seen (sparse tensors: indices + values); meta tensors are 0."""
    if t.device.type == "meta":
        return 0
    if t.is_sparse:
        return t._indices().nbytes + t._values().nbytes
    try:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        nbytes = storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return t.numel() * t.element_size()
    if key[1] == 0 or key in seen:
        return 0
    seen.add(key)
    return nbytes
