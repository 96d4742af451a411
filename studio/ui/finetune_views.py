"""What the Fine-tune tab shows of a dataset and a run: the token-length histogram, the preview rows, the summary,
the loss plot's points, the progress line and the report. Pure functions of data, tested without a browser."""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr
import pandas as pd

from studio.models.manager import fmt_bytes
from studio.training import probe
from studio.training import rows as rowlib
from studio.training.datasets import ColumnMap, Dataset
from studio.training.job import ACTIVE_STATES, RunDir
from studio.ui import messages as msg

AUTO = "auto"  # the shape dropdown's "detect it"
NONE = ""  # a column dropdown's "no column"
PREVIEW_ROWS = 3
PLOT_COLUMNS = ["step", "loss", "series"]
# metrics.jsonl keys drawn beside the losses when a run logs them: the preference metrics of DPO / ORPO / KTO (TRL's
# names and the studio's own), each also as `eval_<key>` for an evaluation
PREFERENCE_SERIES = {
    "rewards/margins": "reward margin",
    "reward_margin": "reward margin",
    "rewards/accuracies": "reward accuracy",
    "reward_accuracy": "reward accuracy",
    "rewards/chosen": "reward chosen",
    "rewards/rejected": "reward rejected",
    "log_odds_ratio": "log odds ratio",
    "kl": "KL",
}
LOSS_TITLE, METRIC_TITLE = "loss", "loss / metric"  # the plot's y title without and with preference metrics


def histogram_svg(stats: rowlib.LengthStats, width: int = 520, height: int = 160) -> str:
    """Token lengths as bars with the cutoff marked; no plotting library needed."""
    bins = stats.histogram()
    top = max((c for _, _, c in bins), default=1) or 1
    span = bins[-1][1] + 1 if bins else 1
    pad, bar_w = 28, (width - 40) / max(1, len(bins))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 34}" '
        f'role="img" aria-label="token length histogram">'
    ]
    for i, (low, high, count) in enumerate(bins):
        h = (height - 10) * count / top
        x = 30 + i * bar_w
        over = low > stats.cutoff
        color = "#e4572e" if over else "#4c78a8"
        parts.append(
            f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{low}-{high} tokens: {count} rows</title></rect>"
        )
    cx = 30 + (width - 40) * min(1.0, stats.cutoff / span)
    parts.append(f'<line x1="{cx:.1f}" y1="0" x2="{cx:.1f}" y2="{height}" stroke="#e4572e" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{cx + 3:.1f}" y="12" font-size="11" fill="#e4572e">cutoff {stats.cutoff}</text>')
    parts.append(f'<text x="30" y="{height + 16}" font-size="11" fill="currentColor">0</text>')
    parts.append(
        f'<text x="{width - 10}" y="{height + 16}" font-size="11" text-anchor="end" fill="currentColor">'
        f"{span} tokens</text>"
    )
    parts.append(f'<text x="2" y="{pad}" font-size="11" fill="currentColor">{top}</text>')
    parts.append("</svg>")
    return "".join(parts)


def preview_html(dataset: Dataset, tokenizer: Any, train_on_prompt: bool) -> str:
    """The first rows after the chat template; what the model learns is highlighted."""
    out = []
    for i, sample in enumerate(dataset.samples[:PREVIEW_ROWS], 1):
        pieces = rowlib.segments(sample, tokenizer, train_on_prompt)
        body = "".join(
            f"<mark>{html.escape(text)}</mark>" if learned else html.escape(text) for text, learned in pieces
        )
        out.append(f"<div class='ft-row'><b>Row {i}</b><pre>{body}</pre></div>")
    return (
        "<div id='ft-preview-rows'><p>As the model sees them (highlighted: what it learns):</p>"
        + "".join(out)
        + "</div>"
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def metrics_frame(metrics: list[dict]) -> pd.DataFrame:
    """The live plot's points: train loss, eval loss and any preference metric, by step and series. Typed columns
    (integer steps, float values) even when empty: the plot takes its axis types from its first value, and an empty
    untyped frame would make both axes categorical."""
    keys = {"loss": "train", "eval_loss": "eval"}
    keys |= PREFERENCE_SERIES | {f"eval_{k}": f"eval {label}" for k, label in PREFERENCE_SERIES.items()}
    points = []
    for m in metrics:
        step = m.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or m.get("event"):
            continue  # events (start, resume, stopped) mark a step but carry no value
        for key, series in keys.items():
            value = _number(m.get(key))
            if value is not None:
                points.append((step, value, series))
    frame = pd.DataFrame(points, columns=PLOT_COLUMNS)
    return frame.astype({"step": "int64", "loss": "float64", "series": "str"})


def plot_update(metrics: list[dict]) -> gr.LinePlot:
    """The loss plot for a run's metrics. The page's plot builds its chart (axis types, series, their colours) from
    the first value it gets and later only swaps the points, so: no value while there is no point (an empty chart
    would keep empty axes), and the list of series in the legend, which rebuilds the chart when a series appears
    (the first eval point, a preference metric). The y title says when preference metrics share the axis."""
    frame = metrics_frame(metrics)
    series = list(dict.fromkeys(["train", "eval", *frame["series"]]))
    series = [s for s in series if s in set(frame["series"])]
    title = LOSS_TITLE if set(series) <= {"train", "eval"} else METRIC_TITLE
    if frame.empty:
        return gr.LinePlot(value=None, colors_in_legend=None, y_title=title)
    return gr.LinePlot(value=frame, colors_in_legend=series, y_title=title)


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def progress_text(run: RunDir, status: dict) -> str:
    """One paragraph: state, steps, ETA, tokens/s, loss, the worker's memory."""
    if not status:
        return f"**{run.name}**: no status yet."
    state = status.get("state", "?")
    step, total = status.get("step", 0), status.get("total_steps", 0)
    parts = [f"**{run.name}** — {state}"]
    if total:
        parts.append(f"step {step} / {total} ({100 * step / total:.0f}%)")
    if state in ACTIVE_STATES and status.get("eta_s") is not None:
        parts.append(f"ETA {_seconds(status['eta_s'])}")
    if status.get("tokens_per_s"):
        parts.append(f"{status['tokens_per_s']:.0f} tokens/s")
    if status.get("loss") is not None:
        parts.append(f"loss {status['loss']:.4f}")
    if status.get("eval_loss") is not None:
        parts.append(f"eval loss {status['eval_loss']:.4f}")
    memory = status.get("memory") or {}
    if memory:
        mem = f"worker RAM {fmt_bytes(memory.get('rss'))}"
        if memory.get("cuda_peak") is not None:
            mem += f", GPU peak {fmt_bytes(memory['cuda_peak'])}"
        parts.append(mem)
    text = " · ".join(parts)
    if status.get("message"):
        text += f"\n\n{status['message']}"
    return text


def report_text(run: RunDir) -> str:
    report = run.report()
    lines = []
    if report:

        def f(v, spec=".4f"):
            return "—" if v is None else format(v, spec)

        lines += [
            "| | eval loss | perplexity |",
            "|---|---|---|",
            f"| before | {f(report['eval_loss_before'])} | {f(report['perplexity_before'], '.2f')} |",
            f"| after | {f(report['eval_loss_after'])} | {f(report['perplexity_after'], '.2f')} |",
            "",
            f"{report['steps']} steps, {report['train_tokens']} tokens trained"
            + (f" at {report['tokens_per_s']:.0f} tokens/s." if report.get("tokens_per_s") else "."),
        ]
        lines += general_lines(report)
    if (run.adapter / "adapter_config.json").is_file():
        lines.append(f"\nAdapter (PEFT): `{run.adapter}`")
    if (run.merged / "config.json").is_file():
        lines.append(f"\nMerged model: `{run.merged}`")
    return "\n".join(lines)


def general_lines(report: dict) -> list[str]:
    """The general probe's line (and its warning when the run forgot much), for a report that has one."""
    kept = report.get("general_kept")
    if kept is None:
        error = report.get("general_probe_error")
        return ["", msg.GENERAL_NOT_MEASURED.format(error=error)] if error else []
    lines = ["", msg.GENERAL_KEPT.format(percent=100 * kept, prompts=report.get("general_prompts", "the"))]
    if probe.kept_low(kept):
        lines += ["", msg.GENERAL_KEPT_LOW.format(limit=100 * probe.KEPT_WARN)]
    return lines


def compare_markdown(rows: list[tuple[str, str, str]]) -> str:
    """Question | base answer | adapter answer, one line each."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|") or "—"

    out = ["| Question | Base model | With the adapter |", "|---|---|---|"]
    out += [f"| {cell(q)} | {cell(b)} | {cell(a)} |" for q, b, a in rows]
    return "\n".join(out)


def column_updates(columns: list[str], mapping: ColumnMap | None, open_box: bool) -> list:
    """The columns accordion, the shape and the six column dropdowns for a dataset's columns."""
    opts = [NONE, *columns]
    values = ["", "", "", "", "", ""]
    if mapping is not None:
        values = [mapping.text, mapping.instruction, mapping.input, mapping.output, mapping.messages, mapping.system]
    updates = [gr.Dropdown(choices=opts, value=v) for v in values]
    shape_update = gr.Dropdown(value=mapping.shape if mapping is not None else AUTO)
    return [gr.Accordion(open=open_box), shape_update, *updates]


def summary_text(dataset: Dataset, stats: rowlib.LengthStats, cut: int) -> str:
    """The dataset's summary: rows, tokens per row against the cutoff, tokens learned, rows skipped."""
    avg = sum(stats.lengths) / max(1, len(stats.lengths))
    longest = max(stats.lengths, default=0)
    lines = [
        f"**{dataset.name}**: {dataset.summary()}.",
        f"Tokens per row: mean {avg:.0f}, longest {longest}; "
        f"**{stats.truncated} of {len(stats.lengths)} rows longer than the cutoff ({cut})** will be truncated."
        if stats.truncated
        else f"Tokens per row: mean {avg:.0f}, longest {longest}; none longer than the cutoff ({cut}).",
        f"{stats.learned_tokens} tokens to learn from per epoch.",
    ]
    if dataset.skipped:
        lines.append("Skipped: " + "; ".join(dataset.skipped[:5]) + (" …" if len(dataset.skipped) > 5 else ""))
    return "\n\n".join(lines)
