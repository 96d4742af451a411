"""Text embeddings on the manager's models: the "embedding" kind (sentence-transformers / BERT-style encoders, loaded
with transformers' AutoModel) and the chat models (their last hidden state). Serves POST /v1/embeddings.

Pooling and normalisation of an embedding model follow its sentence-transformers files when it has them:
`modules.json` names a Pooling module (its `1_Pooling/config.json` says CLS, mean, max or last token) and, when the
model's authors want unit vectors, a Normalize module; `sentence_bert_config.json` gives its longest input. A plain
transformers folder (no modules.json) is mean-pooled over the attention mask and L2-normalised, what most embedding
models expect. A chat model is mean-pooled over its last hidden state (after the final norm) and L2-normalised, so
the dot product of two vectors is their cosine either way.

Inputs are never truncated: one longer than the model's context is refused, naming it and its token count (as
OpenAI does). Work takes its turn in the GPU lane shared with chat, image and speech, and the model is leased from
the manager while it runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.engines.lane import GpuLane
from studio.errors import InputError, ModelLoadError
from studio.models.estimate import Workload
from studio.models.specs import ModelSpec
from studio.text import invalid_text

if TYPE_CHECKING:
    from studio.engines.chat import ChatEngine
    from studio.models.kinds import LoadOptions
    from studio.models.manager import ModelManager

log = logging.getLogger(__name__)
BATCH = 32  # inputs per forward pass
DEFAULT_MAX_TOKENS = 512  # BERT's context, when neither the model nor its tokenizer says
MAX_INPUTS = 2048  # inputs in one request, as OpenAI
MAX_TOTAL_TOKENS = 300_000  # tokens in one request, as OpenAI
POOLINGS = ("mean", "cls", "max", "lasttoken")
_ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}


class EmbeddingInputError(InputError):
    """A request the engine refuses, naming the request field (`input`, `dimensions`) at fault."""

    def __init__(self, message: str, param: str = "input", tip: str = "") -> None:
        super().__init__(message, tip)
        self.param = param


class EmbeddingStopped(Exception):
    """The client went away while the request waited or ran."""


@dataclass
class LoadedEncoder:
    """An encoder (transformers AutoModel) with its tokenizer and how its token vectors become one vector."""

    model: Any
    tokenizer: Any
    pooling: str  # one of POOLINGS
    normalize: bool  # L2-normalise the pooled vector
    max_tokens: int  # the longest input, special tokens included
    source: str


@dataclass(frozen=True)
class EmbedResult:
    vectors: Any  # a float32 numpy array, one row per input, in the order given
    prompt_tokens: int


# ----- loading ---------------------------------------------------------------------------------------------


def sentence_transformers_config(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_seq_length) from a sentence-transformers folder's modules.json, its Pooling
    module's config and sentence_bert_config.json; (mean, True, None) for a folder without modules.json."""
    modules_file = folder / "modules.json"
    max_len = None
    try:
        bert = json.loads((folder / "sentence_bert_config.json").read_text())
        max_len = int(bert["max_seq_length"]) if bert.get("max_seq_length") else None
    except (OSError, ValueError, TypeError, KeyError):
        pass
    if not modules_file.is_file():
        return "mean", True, max_len
    try:
        modules = json.loads(modules_file.read_text())
        types = [(str(m.get("type", "")), str(m.get("path", ""))) for m in modules]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{folder / 'modules.json'}: not a sentence-transformers module list ({exc}).") from None
    pooling = "mean"
    for kind, path in types:
        if kind.endswith("Pooling"):
            try:
                config = json.loads((folder / path / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"{folder / path / 'config.json'}: cannot read the pooling config ({exc})."
                ) from None
            modes = [mode for key, mode in _ST_MODES.items() if config.get(key)]
            others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
            if others or len(modes) > 1:
                raise ModelLoadError(
                    f"{folder.name}: the pooling {', '.join(others or modes)} is not supported here.",
                    "The studio pools by CLS token, mean, max or last token, one of them.",
                )
            pooling = modes[0] if modes else "mean"
    normalize = any(kind.endswith("Normalize") for kind, _ in types)
    return pooling, normalize, max_len


def load_encoder(spec: ModelSpec, opts: LoadOptions) -> LoadedEncoder:
    """An "embedding" model: AutoModel + AutoTokenizer from a folder or a downloaded Hub id (never remote code)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer

    from studio.models.estimate import load_precision
    from studio.models.loading import TORCH_DTYPES, model_location, pretrained_kwargs

    where = model_location(spec)
    kwargs = pretrained_kwargs(spec, opts.offline)
    if spec.source_type == "hub":
        from studio.models.hub import local_snapshot

        where = str(local_snapshot(spec, opts.offline))
        kwargs = {"trust_remote_code": False, "local_files_only": True}
    if spec.source_type == "file":
        raise ModelLoadError(
            f"{spec.name}: an embedding model is a folder (config.json, weights, tokenizer), not one file.",
            "Pick the model's folder or its Hub id.",
        )
    folder = Path(where)
    pooling, normalize, st_max = sentence_transformers_config(folder)
    dtype = getattr(torch, TORCH_DTYPES[load_precision(spec)])
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModel.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{spec.name}: not a loadable embedding model ({text}).",
            "Pick a sentence-transformers or BERT-style folder with config.json, weights and a tokenizer.",
        ) from None
    model = model.to(spec.device).eval()
    limits = [st_max, int(getattr(model.config, "max_position_embeddings", 0) or 0)]
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_max < 1_000_000:  # transformers' "no limit" is a huge number
        limits.append(tok_max)
    max_tokens = min((n for n in limits if n), default=DEFAULT_MAX_TOKENS)
    return LoadedEncoder(model, tokenizer, pooling, normalize, max_tokens, where)


# ----- inputs ----------------------------------------------------------------------------------------------


def check_inputs(raw: Any) -> list[str | list[int]]:
    """The request's `input` as a list: a string, a list of strings, a list of token ids or a list of such lists.
    Anything else, an empty one, or more than MAX_INPUTS: EmbeddingInputError naming `input`."""

    def ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(raw, str) or ids(raw):
        items: list = [raw]
    elif isinstance(raw, list) and raw:
        items = list(raw)
    elif isinstance(raw, list):
        raise EmbeddingInputError("'input' is an empty list: send at least one text.")
    elif raw is None:
        raise EmbeddingInputError("'input' is required: a string or a list of strings.")
    else:
        raise EmbeddingInputError(
            f"'input' must be a string, a list of strings or a list of token ids, not {type(raw).__name__}."
        )
    if len(items) > MAX_INPUTS:
        raise EmbeddingInputError(f"'input' holds {len(items)} items; one request takes at most {MAX_INPUTS}.")
    for i, item in enumerate(items):
        where = f"input[{i}]" if len(items) > 1 or not isinstance(raw, str) else "input"
        if isinstance(item, str):
            if not item:
                raise EmbeddingInputError(f"'{where}' is an empty string: every input needs text.")
            reason = invalid_text(item, f"'{where}'")
            if reason:
                raise EmbeddingInputError(reason)
        elif not ids(item):
            raise EmbeddingInputError(
                f"'{where}' must be a non-empty string or a non-empty list of token ids, not {json.dumps(item)[:40]}."
            )
    return items


def _tokenize(tokenizer: Any, items: Sequence[str | list[int]], limit: int, vocab: int) -> list[list[int]]:
    out = []
    for i, item in enumerate(items):
        ids = list(item) if isinstance(item, list) else list(tokenizer(item)["input_ids"])
        where = f"input[{i}]" if len(items) > 1 else "input"
        if len(ids) > limit:
            raise EmbeddingInputError(
                f"'{where}' is {len(ids)} tokens, more than the model's context of {limit} tokens.",
                tip="Shorten it or split it into several inputs.",
            )
        if any(not 0 <= t < vocab for t in ids):
            raise EmbeddingInputError(f"'{where}': token ids must be between 0 and {vocab - 1}.")
        out.append(ids)
    total = sum(len(ids) for ids in out)
    if total > MAX_TOTAL_TOKENS:
        raise EmbeddingInputError(f"'input' is {total} tokens in all; one request takes at most {MAX_TOTAL_TOKENS}.")
    return out


# ----- the engine ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    ids: list[list[int]]
    dims: int


class EmbeddingEngine:
    """Embeds texts with models leased from the manager, one request at a time in the GPU lane."""

    def __init__(self, manager: ModelManager, lane: GpuLane | None = None, chat: ChatEngine | None = None) -> None:
        self.manager = manager
        self.lane = lane or GpuLane()
        self.chat = chat  # for chat models: attaching and picking their LoRA adapters

    @staticmethod
    def _shape(model: Any, spec: ModelSpec) -> tuple[Any, Any, str, bool, int]:
        """(torch module, tokenizer, pooling, normalize, context) of an embedding model or a chat model."""
        if isinstance(model, LoadedEncoder):
            return model.model, model.tokenizer, model.pooling, model.normalize, model.max_tokens
        from studio.engines.chat import DEFAULT_CONTEXT

        if not hasattr(model, "tokenizer") or not hasattr(model, "model"):
            raise ModelLoadError(
                f"{spec.name} runs through llama.cpp here, which the studio does not embed with.",
                "Load it with a transformers precision (fp16, bf16, fp32, nf4 or int8) to embed with it.",
            )
        context = int(getattr(model.model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
        return model.model, model.tokenizer, "mean", True, context

    def _prepare(self, model: Any, spec: ModelSpec, items: Sequence[str | list[int]], dims: int | None) -> _Prepared:
        module, tokenizer, _, _, context = self._shape(model, spec)
        hidden = _hidden_size(module)
        if dims is not None and dims != hidden:
            raise EmbeddingInputError(
                f"'dimensions' {dims} is not supported by {spec.name}: its vectors have {hidden} dimensions, and the "
                "studio does not shorten them.",
                param="dimensions",
                tip=f"Leave 'dimensions' out, or send {hidden}.",
            )
        return _Prepared(_tokenize(tokenizer, items, context, _vocab_size(module, tokenizer)), hidden)

    def embed(
        self,
        spec: ModelSpec,
        items: Sequence[str | list[int]],
        *,
        dimensions: int | None = None,
        adapter: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> EmbedResult:
        """The vectors of `items` (texts or token-id lists) in order, and the tokens they took."""
        if spec.kind not in ("embedding", "chat"):
            raise ModelLoadError(f"{spec.name} is a {spec.kind} model; embeddings come from embedding or chat models.")
        from studio.engines.llamacpp import is_llamacpp

        if is_llamacpp(spec) and not (self.chat and self.chat.attached(spec)):
            raise ModelLoadError(
                f"{spec.name} runs through llama.cpp here, which the studio does not embed with.",
                "Load it with a transformers precision (fp16, bf16, fp32, nf4 or int8) to embed with it.",
            )
        if self.chat is not None and spec.kind == "chat":
            spec, _ = self.chat.runtime_spec(spec, _chat_params())
        prepared = None
        lease = self.manager.lease_if_loaded(spec.key)  # inputs are checked before the wait when the model is here
        if lease is not None:
            with lease:
                prepared = self._prepare(lease.model, spec, items, dimensions)
        if not self.lane.wait(should_stop):
            raise EmbeddingStopped
        try:
            with self.manager.acquire(spec, Workload()) as lease:
                model = lease.model
                if spec.kind == "chat" and self.chat is not None:
                    self.chat._sync_adapters(spec, model)
                    self.chat._use_adapter(model, adapter)
                prepared = prepared or self._prepare(model, spec, items, dimensions)
                vectors = None
                attempts = self.manager.oom_attempts(
                    spec.name,
                    exclude=spec.key,
                    message=f"Out of memory while {spec.name} was embedding, even after unloading idle models.",
                    tip="Send fewer or shorter inputs per request.",
                )
                for attempt in attempts:
                    with attempt:
                        vectors = self._run(model, spec, prepared.ids, should_stop)
        finally:
            self.lane.release()
        return EmbedResult(vectors, sum(len(ids) for ids in prepared.ids))

    def _run(self, model: Any, spec: ModelSpec, batches: list[list[int]], should_stop: Callable[[], bool]) -> Any:
        import numpy as np
        import torch

        module, tokenizer, pooling, normalize, _ = self._shape(model, spec)
        device = next(module.parameters()).device
        pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
        chat = not isinstance(model, LoadedEncoder)
        out = []
        with torch.inference_mode():
            for start in range(0, len(batches), BATCH):
                if should_stop():
                    raise EmbeddingStopped
                chunk = batches[start : start + BATCH]
                width = max(len(ids) for ids in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, ids in enumerate(chunk):  # padded on the right: positions stay those of the text
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    mask[row, : len(ids)] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                if chat:
                    result = module(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                    states = result.hidden_states[-1]
                else:
                    states = module(input_ids=input_ids, attention_mask=mask).last_hidden_state
                pooled = pool(states.float(), mask, pooling)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out.append(pooled.cpu().numpy().astype(np.float32))
        return np.concatenate(out, axis=0)


def pool(states: Any, mask: Any, how: str) -> Any:
    """One vector per row of `states` (batch x tokens x hidden) from the tokens `mask` keeps."""
    import torch

    keep = mask.unsqueeze(-1).to(states.dtype)
    if how == "cls":
        return states[:, 0]
    if how == "lasttoken":
        last = mask.sum(dim=1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]
    if how == "max":
        return states.masked_fill(keep == 0, float("-inf")).max(dim=1).values
    return (states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)


def _hidden_size(module: Any) -> int:
    config = module.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "hidden_size", 0) or getattr(text, "d_model", 0))


def _vocab_size(module: Any, tokenizer: Any) -> int:
    embeddings = module.get_input_embeddings()
    return int(embeddings.weight.shape[0]) if embeddings is not None else len(tokenizer)


def _chat_params() -> Any:
    from studio.engines.chat import ChatParams

    return ChatParams()
