"""Token lengths of preference rows (see pref_data.py), for the page's histogram and the dataset-derived defaults.

A pair trains two sequences, prompt + chosen and prompt + rejected, each through the base's chat template (the
trainer truncates each to the cutoff); a KTO row trains one, prompt + completion. The histogram counts every
sequence; the defaults choose the cutoff from the longer sequence of each row. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.engines.chat import FALLBACK_TEMPLATE
from studio.training import rows as rowlib


@dataclass
class PrefRow(rowlib.Row):
    """One preference row as tokens: ids/labels of its longest sequence (the prompt unlearned), and the full length
    of each of its sequences (prompt + chosen, prompt + rejected; or prompt + completion)."""

    lengths: tuple[int, ...] = ()
    prompt_len: int = 0


def is_preference(samples: list[dict]) -> bool:
    return bool(samples) and "prompt" in samples[0]


def completions(sample: dict) -> list[list[dict]]:
    """The replies a row trains: chosen and rejected of a pair, the completion of a KTO row."""
    if "chosen" in sample:
        return [sample["chosen"], sample["rejected"]]
    return [sample["completion"]]


def _template(tokenizer: Any) -> str | None:
    return None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE


def prompt_text(sample: dict, tokenizer: Any) -> str:
    """The prompt as the model sees it: its turns through the chat template, up to the assistant's turn."""
    return tokenizer.apply_chat_template(
        sample["prompt"], tokenize=False, add_generation_prompt=True, chat_template=_template(tokenizer)
    )


def texts(sample: dict, tokenizer: Any) -> tuple[str, list[str]]:
    """(the rendered prompt, each rendered reply after it). A template whose render of the whole conversation
    does not start with the prompt's gives the whole conversation as the reply (and an empty prompt)."""
    prompt = prompt_text(sample, tokenizer)
    replies = []
    for reply in completions(sample):
        full = tokenizer.apply_chat_template(
            sample["prompt"] + reply, tokenize=False, chat_template=_template(tokenizer)
        )
        replies.append(full[len(prompt) :] if full.startswith(prompt) else full)
    return prompt, replies


def rows(samples: list[dict], tokenizer: Any) -> list[PrefRow]:
    """Every row as tokens, not truncated."""
    out = []
    for sample in samples:
        prompt, replies = texts(sample, tokenizer)
        encoded = tokenizer([prompt, *replies], add_special_tokens=False)["input_ids"]
        prompt_ids, reply_ids = list(encoded[0]), [list(r) for r in encoded[1:]]
        longest = max(reply_ids, key=len)
        out.append(
            PrefRow(
                prompt_ids + longest,
                [rowlib.IGNORE] * len(prompt_ids) + longest,
                lengths=tuple(len(prompt_ids) + len(r) for r in reply_ids),
                prompt_len=len(prompt_ids),
            )
        )
    return out


def measure(samples: list[dict], tokenizer: Any, cutoff: int) -> rowlib.LengthStats:
    """The lengths of every sequence the rows train (prompt + each reply) against the cutoff."""
    lengths, learned = [], 0
    for row in rows(samples, tokenizer):
        for n in row.lengths:
            lengths.append(n)
            learned += max(0, min(n, cutoff) - min(row.prompt_len, cutoff))
    return rowlib.LengthStats(
        lengths, cutoff, sum(1 for n in lengths if n > cutoff), sum(min(n, cutoff) for n in lengths), learned
    )


def sequences_at(rows_: list[PrefRow], cutoff: int) -> tuple[int, int]:
    """(tokens in one epoch, the longest sequence) at `cutoff`: every sequence truncated to it."""
    tokens = sum(min(n, cutoff) for r in rows_ for n in r.lengths)
    return tokens, max((min(n, cutoff) for r in rows_ for n in r.lengths), default=0)
