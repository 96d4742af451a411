"""A model folder's tokenizer as GGUF metadata: tokens, merges, special tokens, the chat template.

Byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2; `tokenizer.ggml.model = gpt2`) are read through transformers
as llama.cpp's converter reads them, and need a pre-tokenizer name (`tokenizer.ggml.pre`): llama.cpp splits text
with the regex that name stands for before it applies the merges, and refuses names it does not know. The name is
decided as convert_hf_to_gguf.py decides it, by hashing the token ids of a check text (the hashes of the covered
families below are its data); a tokenizer whose hash is not known is recognised by the shape of its
`pre_tokenizer`; failing both, "default" with a warning. Byte-fallback BPE tokenizers (Llama 2, Mistral;
`tokenizer.ggml.model = llama`, llama.cpp's SentencePiece-style tokenizer) get scores from the merge order.
`gguf.SpecialVocab` adds the merges, the special token ids, whether BOS/EOS are added, and the chat template.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import InputError

# The text llama.cpp's converter encodes to recognise a BPE pre-tokenizer (convert_hf_to_gguf.py,
# get_vocab_base_pre): whitespace runs, emoji, digits, several scripts, apostrophe contractions.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
    "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll "
    "make it, 'D you like some tea? We'Ve a'lL"
)
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # byte-fallback tokens
# sha256 of str(token ids of CHECK_TEXT) -> pre-tokenizer name, for the families the export covers (the values
# llama.cpp's convert_hf_to_gguf.py lists for these reference tokenizers).
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM-135M (SmolLM2 too)
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B (Qwen2/2.5 too)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding-0.6B
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo-Base-2407
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}


@dataclass(frozen=True)
class VocabFacts:
    """What was written about the tokenizer, for the Modelfile and the result."""

    model: str  # tokenizer.ggml.model: gpt2 (byte-level BPE) | llama (SentencePiece-style BPE)
    pre: str  # tokenizer.ggml.pre ("default" for llama)
    chat_template: str | None  # tokenizer.chat_template
    special: dict[str, str] = field(default_factory=dict)  # bos/eos/eot/pad/unk -> token text
    warnings: tuple[str, ...] = ()  # what the user should know (a pre-tokenizer that was not recognised, ...)


def add_vocab(writer: Any, folder: Path, n_vocab: int, *, pre: str | None = None) -> VocabFacts:
    """Write the tokenizer of `folder` into `writer`, padded to the model's `n_vocab` rows."""
    import gguf

    from studio.training.rows import FALLBACK_TEMPLATE, load_tokenizer

    tokenizer = load_tokenizer(folder, offline=True)
    spec = tokenizer_spec(tokenizer, folder)
    model = spec.get("model") or {}
    warnings: list[str] = []
    if model.get("type") == "BPE" and not model.get("byte_fallback", False):
        kind = "gpt2"
        tokens, types = _bpe_tokens(tokenizer, n_vocab)
        if pre is None:
            pre, warning = detect_pre(tokenizer, spec)
            warnings += [warning] if warning else []
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    elif model.get("type") == "BPE":
        kind, pre = "llama", "default"
        tokens, scores, types = _spm_tokens(tokenizer, model, n_vocab)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_adds_space_prefix(spec))
    else:
        found = model.get("type") or (
            "tokenizer.model only" if (Path(folder) / "tokenizer.model").is_file() else "none"
        )
        raise InputError(
            f"{folder}: its tokenizer ({found}) is not covered by the GGUF export.",
            "It covers BPE tokenizers saved as tokenizer.json (Llama, Mistral, Qwen2, SmolLM2).",
        )
    special = gguf.SpecialVocab(Path(folder), load_merges=kind == "gpt2", n_vocab=n_vocab)
    # what the tokenizer really does, which is what the model was trained and fine-tuned with
    special.add_special_token["bos"] = _adds_bos(tokenizer)
    special.add_special_token["eos"] = _adds_eos(tokenizer)
    if special.chat_template is None:
        special.chat_template = FALLBACK_TEMPLATE  # what the studio chats and fine-tunes such a model with
        warnings.append("The tokenizer has no chat template; the studio's ChatML template was written.")
    special.add_to_gguf(writer, quiet=True)
    texts = {role: tokens[i] for role, i in special.special_token_ids.items() if 0 <= i < len(tokens)}
    template = special.chat_template if isinstance(special.chat_template, str) else None
    return VocabFacts(kind, pre, template, texts, tuple(warnings))


def detect_pre(tokenizer: Any, spec: dict) -> tuple[str, str]:
    """(pre-tokenizer name, warning or ""): by the check-text hash, else by the pre_tokenizer's shape."""
    ids = tokenizer.encode(CHECK_TEXT)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest in KNOWN_PRE:
        return KNOWN_PRE[digest], ""
    shaped = pre_by_shape(spec)
    if shaped:
        return shaped, ""
    return "default", (
        f"The tokenizer's pre-tokenizer was not recognised (check hash {digest[:12]}…); wrote 'default', so "
        "llama.cpp may split some text (digits, spaces) differently from transformers."
    )


def tokenizer_spec(tokenizer: Any, folder: Path) -> dict:
    """The tokenizer as transformers runs it, in tokenizer.json's form. Not the file: transformers 5 rebuilds some
    families' pre-tokenizer from their tokenizer class (a Qwen2 folder splits digits whatever its file says)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(
            f"{folder}: its tokenizer has no fast (tokenizer.json) form.",
            "The GGUF export reads tokenizers that transformers runs through the tokenizers library.",
        )
    return json.loads(backend.to_str())


def pre_by_shape(spec: dict) -> str | None:
    """The llama.cpp pre-tokenizer whose regex a tokenizer.json `pre_tokenizer` spells, or None."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex", "")
        if "\\p{N}{1,3}" in pattern and "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+" in pattern:
            return "llama-bpe"
        if "|\\p{N}|" in pattern and "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+" in pattern:
            return "qwen2"
    return None


def _bpe_tokens(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token texts and types for a byte-level BPE vocabulary, padded to the model's rows as llama.cpp expects."""
    import gguf

    _check_ids(tokenizer, n_vocab)
    reverse = {i: text for text, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            entry = decoder.get(i)
            special = bool(entry is not None and entry.special) or _looks_special(text)
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _spm_tokens(tokenizer: Any, model: dict, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types for a byte-fallback BPE (Llama 2, Mistral) as llama.cpp's SentencePiece-style
    tokenizer needs them. It merges the adjacent pair with the highest score first, so a merged token's score is
    minus the rank of the merge that makes it: the tokenizer.json merge order, which is the order transformers uses
    (gguf.LlamaHfVocab gives every token the same placeholder score, and llama.cpp then splits text otherwise)."""
    import gguf

    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    _check_ids(tokenizer, n_vocab)
    reverse = {i: text for text, i in tokenizer.get_vocab().items()}
    decoder = tokenizer.added_tokens_decoder
    unk = tokenizer.unk_token
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        text = reverse.get(i)
        score, kind = 0.0, gguf.TokenType.NORMAL
        if text is None:
            text, score, kind = f"[PAD{i}]", -1000.0, gguf.TokenType.UNUSED
        elif BYTE_TOKEN.fullmatch(text):
            kind = gguf.TokenType.BYTE
        elif text == unk:
            kind = gguf.TokenType.UNKNOWN
        elif i in decoder:
            special = decoder[i].special or _looks_special(text)
            kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        elif text in rank:
            score = -float(rank[text] + 1)
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    return tokens, scores, types


def _adds_space_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (a Prepend normalizer, or Metaspace's prepend scheme)."""
    steps = []
    for part in (spec.get("normalizer"), spec.get("pre_tokenizer")):
        if isinstance(part, dict):
            steps += part.get("normalizers") or part.get("pretokenizers") or [part]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return False


def _check_ids(tokenizer: Any, n_vocab: int) -> None:
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= n_vocab:
        raise InputError(
            f"The tokenizer has ids up to {max(vocab.values())} but the model only {n_vocab} embedding rows.",
            "The tokenizer and the weights do not belong together.",
        )


def _looks_special(text: str) -> bool:
    """Added tokens llama.cpp's converter treats as control tokens even when not marked special."""
    return text in ("<pad>", "<mask>") or (text.startswith("<|") and text.endswith("|>")) or text.startswith("<unused")


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return bos is not None and bool(ids) and ids[0] == bos


def _adds_eos(tokenizer: Any) -> bool:
    eos = tokenizer.eos_token_id
    ids = tokenizer("a").input_ids
    return eos is not None and bool(ids) and ids[-1] == eos
