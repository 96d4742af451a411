"""Settings chosen from the dataset, the same for the page (on analysis) and `python -m studio.training.new`.

A job's fixed defaults (cutoff 1024, batch 4, 3 epochs) make a 30-row dataset of short rows train for 3 optimizer
steps and reserve memory for 4 x 1024 tokens it never holds. Instead:

- cutoff: the smallest power of two that holds the 99th percentile of the row lengths (at least CUTOFF_FLOOR, at
  most the model's context);
- batch: the largest of BATCHES with which TARGET_STEPS steps stay within the job's epochs (a small dataset gets
  many small updates rather than a few large ones) and whose memory estimate fits the budget;
- max steps: TARGET_STEPS (Unsloth's notebooks use 60) when the epochs would make fewer, else 0 (epochs decide).

Also the line the page shows before Start: how many optimizer steps over how many tokens, from `steps_for`, the
function the worker uses. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from studio.training import pref_rows
from studio.training import rows as rowlib
from studio.training.datasets import split
from studio.training.job import MAX_CUTOFF, MIN_CUTOFF, TrainJob, steps_for

CUTOFF_FLOOR = 64  # tokens: below this a chat template alone fills the block
TARGET_STEPS = 60  # optimizer steps a small dataset gets (Unsloth's notebooks use max_steps=60)
FEW_STEPS = 20  # fewer optimizer steps than this rarely teach an adapter anything: the page warns
BATCHES = (8, 4, 2, 1)  # batch sizes tried, largest first
PERCENTILE = 99  # the cutoff holds this share of the rows whole


@dataclass(frozen=True)
class DataBlocks:
    """What the training rows make at one cutoff: the sequences the worker batches."""

    blocks: int  # packed blocks (or rows, without packing)
    tokens: int  # tokens in them: one epoch's worth
    longest: int  # the longest block


@dataclass(frozen=True)
class Derived:
    """A job with settings chosen from the data, and why each was chosen (setting name -> reason)."""

    job: TrainJob
    reasons: dict[str, str]
    data: DataBlocks  # the training rows at the chosen cutoff


def percentile(values: Iterable[int], q: float) -> int:
    """The nearest-rank q-th percentile (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def cutoff_for(lengths: Iterable[int], context: int) -> int:
    """The smallest power of two holding the 99th percentile of `lengths`, between CUTOFF_FLOOR and `context`."""
    need = percentile(lengths, PERCENTILE)
    cutoff = CUTOFF_FLOOR
    while cutoff < need:
        cutoff *= 2
    return max(MIN_CUTOFF, min(cutoff, context, MAX_CUTOFF))


def model_context(tokenizer: Any) -> int:
    """The longest sequence the model takes, as its tokenizer says (MAX_CUTOFF when it does not say)."""
    n = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return n if 0 < n <= MAX_CUTOFF else MAX_CUTOFF


def full_rows(samples: list[dict], tokenizer: Any, train_on_prompt: bool = False) -> list[rowlib.Row]:
    """The samples as token rows, not truncated (cut them per cutoff with `at_cutoff`); preference rows as
    pref_rows.PrefRow (one per pair or KTO row)."""
    if pref_rows.is_preference(samples):
        return pref_rows.rows(samples, tokenizer)
    return rowlib.tokenize(samples, tokenizer, 10**9, train_on_prompt=train_on_prompt, keep_empty=True)


def at_cutoff(rows: list[rowlib.Row], cutoff: int) -> list[rowlib.Row]:
    """The rows as the worker trains them at `cutoff`: truncated, and only those with something left to learn."""
    out = []
    for row in rows:
        cut = rowlib.Row(row.ids[:cutoff], row.labels[:cutoff], len(row.ids) > cutoff)
        if any(label != rowlib.IGNORE for label in cut.labels[1:]):
            out.append(cut)
    return out


def blocks_for(rows: list[rowlib.Row], cutoff: int, packing: bool) -> DataBlocks:
    """The sequences the worker makes of `rows` (full rows, see `full_rows`) at `cutoff`, packed or not.
    Preference rows are never packed: one example (a pair, or a KTO row) each, its sequences truncated."""
    if rows and isinstance(rows[0], pref_rows.PrefRow):
        tokens, longest = pref_rows.sequences_at(rows, cutoff)
        return DataBlocks(len(rows), tokens, longest)
    kept = at_cutoff(rows, cutoff)
    blocks = rowlib.pack(kept, cutoff) if packing else rowlib.single_blocks(kept)
    return DataBlocks(len(blocks), sum(len(b) for b in blocks), max((len(b) for b in blocks), default=0))


def train_rows(
    samples: list[dict], tokenizer: Any, eval_share: float, seed: int, train_on_prompt: bool = False
) -> list[rowlib.Row]:
    """The full rows of the training split a run made with this share and seed trains on."""
    train, _ = split(samples, eval_share, seed)
    return full_rows(train, tokenizer, train_on_prompt)


def run_size(job: TrainJob, data: DataBlocks, world: int = 1) -> tuple[int, int]:
    """(optimizer steps, tokens) the run makes: the steps from `steps_for`, the worker's own count."""
    if not data.blocks:
        return 0, 0
    _, total = steps_for(job, data.blocks, world)
    micro_per_epoch = max(1, math.ceil(data.blocks / (job.batch_size * world)))
    return total, round(data.tokens * total * job.grad_accum / micro_per_epoch)


def derive(
    job: TrainJob,
    rows: list[rowlib.Row],
    context: int,
    fits: Callable[[TrainJob], bool],
    fixed: Iterable[str] = (),
) -> Derived:
    """`job` with cutoff_len, batch_size and max_steps chosen from the training `rows` (full rows) unless named in
    `fixed` (the user set them). `fits(job)` says whether a job's memory estimate fits the budget."""
    fixed = set(fixed)
    reasons: dict[str, str] = {}
    if "cutoff_len" not in fixed and rows:
        cutoff = cutoff_for([len(r.ids) for r in rows], context)
        p = percentile([len(r.ids) for r in rows], PERCENTILE)
        job = replace(job, cutoff_len=cutoff)
        reasons["cutoff_len"] = f"cutoff {cutoff}: {PERCENTILE} % of the rows are at most {p} tokens"
    data = blocks_for(rows, job.cutoff_len, job.packing)
    if "batch_size" not in fixed and data.blocks:
        wanted = [b for b in BATCHES if b * TARGET_STEPS <= job.epochs * data.blocks * job.grad_accum] or [1]
        batch = next((b for b in wanted if fits(replace(job, batch_size=b))), wanted[-1])
        if batch * TARGET_STEPS <= job.epochs * data.blocks * job.grad_accum:
            why = f"{TARGET_STEPS} steps stay within {job.epochs:g} epochs of {data.blocks} sequences"
        else:
            why = f"the smallest, for the most updates from {data.blocks} sequences"
        job = replace(job, batch_size=batch)
        reasons["batch_size"] = f"batch {batch}: {why}" + ("" if fits(job) else " (it does not fit the budget)")
    if "max_steps" not in fixed and "epochs" not in fixed and data.blocks:
        steps, _ = run_size(replace(job, max_steps=0), data)
        if steps < TARGET_STEPS:
            job = replace(job, max_steps=TARGET_STEPS)
            reasons["max_steps"] = f"max steps {TARGET_STEPS}: {job.epochs:g} epochs would make only {steps}"
        else:
            job = replace(job, max_steps=0)
    return Derived(job, reasons, data)


def steps_line(job: TrainJob, data: DataBlocks) -> str:
    """ "This run will make N optimizer steps over M tokens", with a warning when N is small."""
    steps, tokens = run_size(job, data)
    line = f"This run will make **{steps} optimizer steps** over {tokens:,} tokens"
    line += f" ({data.blocks} sequences of at most {job.cutoff_len} tokens, batch {job.batch_size}"
    line += f" x {job.grad_accum} accumulated)." if job.grad_accum > 1 else ")."
    if steps < FEW_STEPS:
        line += (
            f" ⚠ Fewer than {FEW_STEPS} steps: the adapter will barely learn. Raise the epochs or max steps, or lower"
            " the batch size."
        )
    return line


def reasons_line(reasons: dict[str, str]) -> str:
    """What the page says about the settings it chose."""
    if not reasons:
        return ""
    return "Chosen from the data (change them freely): " + "; ".join(reasons.values()) + "."


def choose(
    training: Any, job: TrainJob, samples: list[dict], tokenizer: Any, eval_share: float, fixed: Iterable[str] = ()
) -> Derived:
    """The dataset-derived settings for `job`, as the page's analysis and `python -m studio.training.new` choose
    them: `tokenizer` measures the training split, `training` (a RunManager) estimates memory against its budget."""
    rows = train_rows(samples, tokenizer, eval_share, job.seed, job.train_on_prompt)
    budget = training.manager.budget_bytes()
    return derive(job, rows, model_context(tokenizer), lambda j: training.estimate(j).total <= budget, fixed=fixed)
