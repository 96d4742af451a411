"""Samples -> token rows -> packed blocks, and the measurements the page shows (lengths, histogram, truncation).

A sample is `{"text": ...}` or `{"messages": [...]}` (see datasets.py). Chat samples go through the model's chat
template (ChatML when it has none); by default only the assistant turns are learned (`labels` are -100 elsewhere).
Works on any transformers tokenizer object; imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.engines.chat import FALLBACK_TEMPLATE
from studio.errors import InputError

IGNORE = -100  # the label value transformers' loss skips


@dataclass
class Row:
    """One tokenised sample: ids and labels of the same length (labels are IGNORE where nothing is learned)."""

    ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class Block:
    """Rows packed into one sequence of at most `cutoff` tokens; position ids restart at each row."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.ids += row.ids
        # the first token of a row is never predicted from the row before it
        self.labels += [IGNORE] + row.labels[1:]
        self.positions += list(range(len(row.ids)))

    def __len__(self) -> int:
        return len(self.ids)


def load_tokenizer(source: str | Path, *, offline: bool = False) -> Any:
    """The tokenizer of a base model (folder or Hub id), loaded safely."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, local_files_only=offline)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{source}: cannot read its tokenizer ({text}).", "Pick a model folder with tokenizer files, or a Hub id."
        ) from None


def _template(tokenizer: Any) -> str | None:
    return None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE


def render(sample: dict, tokenizer: Any) -> str:
    """The sample as the model sees it (after the chat template)."""
    if "text" in sample:
        return sample["text"]
    return tokenizer.apply_chat_template(sample["messages"], tokenize=False, chat_template=_template(tokenizer))


def segments(sample: dict, tokenizer: Any, train_on_prompt: bool = False) -> list[tuple[str, bool]]:
    """The rendered sample cut into (text, learned) pieces: assistant turns are learned, the rest is context.

    Each assistant turn is found by rendering the conversation up to it with and without the turn; a template
    whose renders are not prefixes of each other is learned whole.
    """
    if "text" in sample:
        return [(sample["text"], True)]
    messages, template = sample["messages"], _template(tokenizer)
    full = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    if train_on_prompt:
        return [(full, True)]
    pieces: list[tuple[str, bool]] = []
    done = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:k], tokenize=False, add_generation_prompt=True, chat_template=template
        )
        after = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False, chat_template=template)
        if not (after.startswith(before) and full.startswith(after) and len(before) >= done):
            return [(full, True)]
        pieces += [(before[done:], False), (after[len(before) :], True)]
        done = len(after)
    pieces.append((full[done:], False))
    return [(text, learned) for text, learned in pieces if text]


def tokenize(
    samples: list[dict], tokenizer: Any, cutoff: int, *, train_on_prompt: bool = False, keep_empty: bool = False
) -> list[Row]:
    """Token rows (truncated to `cutoff`). Plain text gets the tokenizer's BOS (if it uses one) and EOS."""
    if cutoff < 8:
        raise InputError(f"The cutoff length must be at least 8 tokens, not {cutoff}.")
    cut = [segments(s, tokenizer, train_on_prompt) for s in samples]
    flat = [text for pieces in cut for text, _ in pieces]
    encoded = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and bool(tokenizer("a")["input_ids"][:1] == [bos])
    rows, at = [], 0
    for sample, pieces in zip(samples, cut, strict=True):
        ids: list[int] = []
        labels: list[int] = []
        if "text" in sample and add_bos:
            ids.append(bos)
            labels.append(IGNORE)
        for _, learned in pieces:
            piece = list(encoded[at])
            at += 1
            ids += piece
            labels += piece if learned else [IGNORE] * len(piece)
        if "text" in sample and eos is not None:
            ids.append(eos)
            labels.append(eos)
        truncated = len(ids) > cutoff
        row = Row(ids[:cutoff], labels[:cutoff], truncated)
        if keep_empty or any(label != IGNORE for label in row.labels[1:]):
            rows.append(row)
    return rows


def pack(rows: list[Row], cutoff: int) -> list[Block]:
    """First-fit decreasing: rows (each at most `cutoff` long) into as few blocks of `cutoff` tokens as fit."""
    blocks: list[Block] = []
    free: list[int] = []
    for row in sorted(rows, key=lambda r: -len(r.ids)):
        n = len(row.ids)
        for i, room in enumerate(free):
            if room >= n:
                blocks[i].add(row)
                free[i] -= n
                break
        else:
            block = Block()
            block.add(row)
            blocks.append(block)
            free.append(cutoff - n)
    return blocks


def single_blocks(rows: list[Row]) -> list[Block]:
    """One block per row (packing off)."""
    out = []
    for row in rows:
        block = Block()
        block.add(row)
        out.append(block)
    return out


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of a dataset against the cutoff, for the page."""

    lengths: list[int]  # full lengths, before truncation
    cutoff: int
    truncated: int  # rows longer than the cutoff
    total_tokens: int  # tokens trained on per epoch (after truncation)
    learned_tokens: int  # of which have a label

    def histogram(self, bins: int = 20) -> list[tuple[int, int, int]]:
        """(low, high, count) bins covering 0..max(longest, cutoff)."""
        top = max([self.cutoff, *self.lengths]) if self.lengths else self.cutoff
        width = max(1, math.ceil((top + 1) / bins))
        counts = [0] * bins
        for n in self.lengths:
            counts[min(bins - 1, n // width)] += 1
        return [(i * width, (i + 1) * width - 1, c) for i, c in enumerate(counts)]


def measure(samples: list[dict], tokenizer: Any, cutoff: int, *, train_on_prompt: bool = False) -> LengthStats:
    rows = tokenize(samples, tokenizer, 10**9, train_on_prompt=train_on_prompt, keep_empty=True)
    lengths = [len(r.ids) for r in rows]
    learned = sum(sum(1 for label in r.labels[:cutoff] if label != IGNORE) for r in rows)
    return LengthStats(
        lengths,
        cutoff,
        sum(1 for n in lengths if n > cutoff),
        sum(min(n, cutoff) for n in lengths),
        learned,
    )
