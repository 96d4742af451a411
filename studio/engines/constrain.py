"""Constrained decoding on the transformers path with llguidance: OpenAI's `response_format` (json_object, or a
json_schema) as a logits processor that lets only tokens the grammar allows through, EOS once it is complete.

llama.cpp models use llama.cpp's own grammars instead (`llamacpp.grammar_for`). The forced tool calls of
`tool_choice` come here as a json_schema too (see studio/engines/tools.py).
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from studio.errors import FieldError

PARAM = "response_format"
# Compact JSON: no free whitespace between tokens, so a model cannot loop on spaces or newlines forever.
_COMPACT = {"whitespace_flexible": False}
_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF tokenizer -> {key: LLTokenizer}
_lock = threading.Lock()


def schema_of(response_format: dict) -> tuple[dict, bool]:
    """The JSON schema a response_format asks for and whether it is strict (json_object: any object)."""
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}, False
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema")
    if kind != "json_schema" or not isinstance(schema, dict):
        raise FieldError("response_format json_schema needs {'json_schema': {'schema': {...}}}.", param=PARAM)
    return schema, bool(spec.get("strict"))


def grammar(response_format: dict) -> str:
    """The llguidance grammar of a response_format; FieldError (-> 400 naming response_format) when the schema
    cannot be compiled. Not strict: keywords llguidance does not support are ignored (lenient); strict: refused."""
    from llguidance import LLMatcher

    schema, strict = schema_of(response_format)
    options = {**_COMPACT, "lenient": not strict}
    try:
        text = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)
        error = LLMatcher.validate_grammar(text)
    except (ValueError, TypeError, RuntimeError) as exc:
        error = str(exc)
    if error and not error.startswith("WARNING"):
        raise FieldError(
            f"response_format's JSON schema cannot be used for constrained decoding: {error.splitlines()[0][:300]}",
            param=PARAM,
        )
    return text


def check(response_format: dict | None) -> None:
    """Raise FieldError if the response_format's schema cannot be compiled (no model needed)."""
    if response_format:
        grammar(response_format)


def _ll_tokenizer(tok: Any, n_vocab: int, eos: tuple[int, ...]) -> Any:
    """llguidance's view of an HF tokenizer (made once per tokenizer, vocabulary size and EOS set)."""
    import llguidance.hf

    key = (n_vocab, eos)
    with _lock:
        made = _tokenizers.setdefault(tok, {})
        if key not in made:
            try:
                made[key] = llguidance.hf.from_tokenizer(tok, n_vocab=n_vocab, eos_token=list(eos))
            except Exception as exc:  # noqa: BLE001 - slow (non-Rust) tokenizers and odd vocabularies
                raise FieldError(
                    f"This model's tokenizer cannot be used for constrained decoding ({type(exc).__name__}: "
                    f"{str(exc)[:160]}).",
                    param=PARAM,
                ) from None
        return made[key]


def logits_processor(response_format: dict, tok: Any, n_vocab: int, eos_ids: set[int], prompt_len: int) -> Any:
    """A transformers LogitsProcessor that keeps the reply inside the response_format's grammar (batch of 1)."""
    import torch
    from llguidance import LLMatcher
    from transformers import LogitsProcessor

    text = grammar(response_format)
    eos = tuple(sorted(eos_ids))
    matcher = LLMatcher(_ll_tokenizer(tok, n_vocab, eos), text, log_level=0)
    if matcher.is_error():
        raise FieldError(f"response_format cannot be used: {matcher.get_error()[:300]}", param=PARAM)
    words = (n_vocab + 31) // 32
    mask = torch.zeros(words, dtype=torch.int32)
    shifts = torch.arange(32, dtype=torch.int32)
    eos_only = torch.zeros(n_vocab, dtype=torch.bool)
    eos_only[[e for e in eos if e < n_vocab]] = True

    class _Grammar(LogitsProcessor):
        def __init__(self) -> None:
            self.seen = prompt_len

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for token in input_ids[0, self.seen :].tolist():  # the token chosen last step
                if not matcher.is_stopped():
                    matcher.consume_token(token)
            self.seen = input_ids.shape[1]
            if matcher.is_stopped() or matcher.is_error():
                allowed = eos_only
            else:
                matcher.unsafe_compute_mask_ptr(mask.data_ptr(), words * 4)
                allowed = ((mask.unsqueeze(1) >> shifts) & 1).reshape(-1)[:n_vocab].bool()
                if not allowed.any():
                    allowed = eos_only
            width = scores.shape[1]
            keep = allowed[:width] if width <= n_vocab else torch.cat([allowed, allowed.new_zeros(width - n_vocab)])
            return scores.masked_fill(~keep.to(scores.device), float("-inf"))

    return _Grammar()
