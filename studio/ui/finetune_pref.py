"""What the Fine-tune tab shows of preference data and objectives: chosen and rejected side by side, the summary,
the objective's own settings, and the vote files collected in the Chat tab. Pure functions, tested without a browser.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from studio.training import pref_data, pref_rows
from studio.training import rows as rowlib
from studio.training.datasets import Dataset

PREVIEW_ROWS = 3
OBJECTIVE_CHOICES = [("SFT", "sft"), ("DPO", "dpo"), ("ORPO", "orpo"), ("KTO", "kto")]
BETA_LABELS = {
    "dpo": "β (how far the policy may move from the reference; higher = closer)",
    "kto": "β (how far the policy may move from the reference; higher = closer)",
    "orpo": "λ (weight of the odds-ratio preference term)",
}
NO_VOTES = "(none)"  # the votes list's "no collected file picked"


def objective_updates(objective: str | None) -> tuple[Any, Any]:
    """β shown for DPO, ORPO (as λ) and KTO; the loss type for DPO only."""
    objective = objective or "sft"
    beta = gr.Number(visible=objective in BETA_LABELS, label=BETA_LABELS.get(objective, "β"))
    return beta, gr.Dropdown(visible=objective == "dpo")


def _reply(turns: list[dict]) -> str:
    return "\n\n".join(t["content"] for t in turns)


def preview_html(dataset: Dataset, tokenizer: Any) -> str:
    """The first rows: the prompt as the model sees it, then chosen and rejected side by side (pairs), or the
    completion and its label (KTO)."""
    pairs = pref_data.kind(dataset.samples) == "pairs"
    head = "<th>Prompt</th><th>Chosen</th><th>Rejected</th>" if pairs else "<th>Prompt</th><th>Completion</th>"
    head += "" if pairs else "<th>Label</th>"
    body = []
    for sample in dataset.samples[:PREVIEW_ROWS]:
        prompt = html.escape(pref_rows.prompt_text(sample, tokenizer))
        cells = [f"<td class='ft-prompt'><pre>{prompt}</pre></td>"]
        if pairs:
            cells.append(f"<td class='ft-chosen'><pre><mark>{html.escape(_reply(sample['chosen']))}</mark></pre></td>")
            rejected = html.escape(_reply(sample["rejected"]))
            cells.append(f"<td class='ft-rejected'><pre><mark>{rejected}</mark></pre></td>")
        else:
            completion = html.escape(_reply(sample["completion"]))
            cells.append(f"<td class='ft-completion'><pre><mark>{completion}</mark></pre></td>")
            cells.append(f"<td class='ft-label'>{'👍 true' if sample['label'] else '👎 false'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    what = "chosen and rejected replies" if pairs else "completions, each rated good (true) or bad (false)"
    return (
        f"<div id='ft-preview-rows' class='ft-pref-preview'><p>Prompts as the model sees them, with their {what} "
        "(highlighted: what it learns from):</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def summary_text(dataset: Dataset, stats: rowlib.LengthStats, cut: int, problem: str) -> str:
    """The summary of preference data: rows, sequence lengths against the cutoff, and a mismatch with the
    objective (what to pick)."""
    pairs = pref_data.kind(dataset.samples) == "pairs"
    seqs = "prompt + chosen and prompt + rejected" if pairs else "prompt + completion"
    avg = sum(stats.lengths) / max(1, len(stats.lengths))
    longest = max(stats.lengths, default=0)
    over = (
        f"**{stats.truncated} of {len(stats.lengths)} sequences longer than the cutoff ({cut})** will be truncated."
        if stats.truncated
        else f"none longer than the cutoff ({cut})."
    )
    lines = [
        f"**{dataset.name}**: {dataset.summary()}.",
        f"Tokens per sequence ({seqs}): mean {avg:.0f}, longest {longest}; {over}",
    ]
    if not pairs:
        good = sum(1 for s in dataset.samples if s["label"])
        lines.append(f"{good} rated good, {len(dataset.samples) - good} rated bad.")
    if dataset.skipped:
        lines.append("Skipped: " + "; ".join(dataset.skipped[:5]) + (" …" if len(dataset.skipped) > 5 else ""))
    if problem:
        lines.append(f"⚠ {problem}")
    return "\n\n".join(lines)


def sft_problem_line(problem: str) -> str:
    """The line an SFT summary gets when a preference objective is picked for it."""
    return f"\n\n⚠ {problem}" if problem else ""


def votes_update(folder: Path, value: str | None = None) -> gr.Dropdown:
    """The list of collected vote files with their counts; the picked one stays picked while it exists."""
    choices = [(NO_VOTES, "")] + pref_data.collected(folder)
    names = {name for _, name in choices}
    return gr.Dropdown(choices=choices, value=value if value in names else "")
