"""The Fine-tune tab: drop a dataset, see it as the model will, set LoRA/QLoRA, check the memory, start a worker,
watch the loss live, stop, resume, and try the adapter in Chat.

Thin handlers: widgets -> Dataset / TrainJob -> ctx.training (a RunManager; the worker is a child process). No torch.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.context import AppContext
from studio.errors import InputError, StudioError
from studio.models.specs import CATALOG
from studio.text import fmt_bytes
from studio.training import rows as rowlib
from studio.training.datasets import (
    SHAPES,
    UPLOAD_LIMIT_BYTES,
    ColumnMap,
    Dataset,
    DatasetError,
    NeedsColumns,
    load_dataset,
)
from studio.training.job import ACTIVE_STATES, MAX_CUTOFF, SCHEDULERS, RunDir, TrainJob, cutoff_message
from studio.ui import messages as msg
from studio.ui.models_tab import check_name_chars

STARTER_PREFIX = "starter:"  # the Chat tab's value for the starter model
AUTO = "auto"
NONE = ""
PREVIEW_ROWS = 3
PLOT_COLUMNS = ["step", "loss", "series"]
ACCEPTED = [".txt", ".csv", ".tsv", ".json", ".jsonl", ".parquet"]


# ----- pure helpers (tested without a browser) ------------------------------------------------------------------


def base_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The starter model, then the recommended chat models; any folder or Hub id can be typed too."""
    from studio.models.starter import STARTER_LABEL, STARTER_NAME

    choices = [(STARTER_LABEL, STARTER_PREFIX + STARTER_NAME)]
    choices += [(f"{e.label} — {e.hub_id}", e.hub_id) for e in CATALOG if e.kind == "chat"]
    return choices


MODEL_FILE_SUFFIXES = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json"}


def resolve_base(ctx: AppContext, choice: str | None) -> tuple[str, str, str]:
    """(source, source_type, label) for a base-model choice; the starter is converted once to a folder."""
    choice = (choice or "").strip()
    if not choice:
        raise InputError("Pick a base model first.")
    check_name_chars(choice)
    if choice.startswith(STARTER_PREFIX):
        from studio.models.starter import STARTER_LABEL, ensure_starter

        return str(ensure_starter(ctx.paths.models)), "folder", STARTER_LABEL
    path = Path(choice).expanduser()
    if path.is_dir():
        return str(path.resolve()), "folder", path.name
    # a path, or a file (a base model is a folder); "Qwen/Qwen2.5-7B-Instruct" has a dot but is a Hub id
    if choice.startswith(("/", "./", "~", "..")) or "\\" in choice or path.suffix.lower() in MODEL_FILE_SUFFIXES:
        raise InputError(f"{choice}: no such model folder on the studio's machine.", "Pick a folder or a Hub id.")
    label = next((e.label for e in CATALOG if e.hub_id == choice), choice)
    return choice, "hub", label


def mapping_from_form(shape: str, text: str, instruction: str, inp: str, output: str, messages: str, system: str):
    """None when the shape is 'auto' (detect it), else the columns the user picked."""
    if not shape or shape == AUTO:
        return None
    return ColumnMap(
        shape,
        text=text or "",
        instruction=instruction or "",
        input=inp or "",
        output=output or "",
        system=system or "",
        messages=messages or "",
    )


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


def metrics_frame(metrics: list[dict]) -> pd.DataFrame:
    """Train and eval loss by step, for the live plot."""
    points = [(m["step"], m["loss"], "train") for m in metrics if m.get("loss") is not None and "step" in m]
    points += [(m["step"], m["eval_loss"], "eval") for m in metrics if m.get("eval_loss") is not None]
    return pd.DataFrame(points, columns=PLOT_COLUMNS)


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
    if (run.adapter / "adapter_config.json").is_file():
        lines.append(f"\nAdapter (PEFT): `{run.adapter}`")
    if (run.merged / "config.json").is_file():
        lines.append(f"\nMerged model: `{run.merged}`")
    return "\n".join(lines)


def owner_only(ctx: AppContext, request: Any, action: str) -> None:
    """Remote visitors of a shared studio cannot train or merge unless the owner allowed it (--allow-remote-admin)."""
    policy = getattr(ctx, "security", None)
    if policy is not None:
        from studio.security import require_owner

        require_owner(policy, request, action)


def upload_limit(ctx: AppContext) -> int:
    policy = getattr(ctx, "security", None)
    return min(UPLOAD_LIMIT_BYTES, getattr(policy, "max_upload_bytes", None) or UPLOAD_LIMIT_BYTES)


def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    out = []
    for run in ctx.training.runs()[:50]:
        status = ctx.training.state(run)
        step, total = status.get("step", 0), status.get("total_steps", 0)
        out.append((f"{run.name} — {status.get('state', '?')} {step}/{total}", run.name))
    return out


# ----- the tab --------------------------------------------------------------------------------------------------


def build(ctx: AppContext) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    tokenizers: dict[str, Any] = {}
    cuda = ctx.device == "cuda"
    choices = base_choices(ctx)

    def tokenizer_for(source: str) -> Any:
        if source not in tokenizers:
            tokenizers[source] = rowlib.load_tokenizer(source, offline=ctx.config.offline)
        return tokenizers[source]

    gr.Markdown(msg.FT_INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            data_file = gr.File(
                label="Dataset (.txt, .csv, .tsv, .json, .jsonl, .parquet)",
                file_types=ACCEPTED,
                type="filepath",
                elem_id="ft-file",
            )
            with gr.Accordion("Columns", open=False, elem_id="ft-columns") as columns_box:
                shape = gr.Dropdown([AUTO, *SHAPES], value=AUTO, label="Shape", elem_id="ft-shape")
                with gr.Row():
                    col_text = gr.Dropdown([NONE], value=NONE, label="Text column", elem_id="ft-col-text")
                    col_messages = gr.Dropdown([NONE], value=NONE, label="Messages column", elem_id="ft-col-messages")
                with gr.Row():
                    col_instruction = gr.Dropdown(
                        [NONE], value=NONE, label="Instruction column", elem_id="ft-col-instruction"
                    )
                    col_input = gr.Dropdown(
                        [NONE], value=NONE, label="Input column (optional)", elem_id="ft-col-input"
                    )
                with gr.Row():
                    col_output = gr.Dropdown([NONE], value=NONE, label="Output column", elem_id="ft-col-output")
                    col_system = gr.Dropdown(
                        [NONE], value=NONE, label="System column (optional)", elem_id="ft-col-system"
                    )
            with gr.Row():
                skip_bad = gr.Checkbox(label="Skip bad rows", value=False, elem_id="ft-skip-bad")
                analyse_btn = gr.Button("Analyse again", elem_id="ft-analyse", size="sm")
            data_md = gr.Markdown(elem_id="ft-data-summary")
            hist = gr.HTML(elem_id="ft-histogram")
            preview = gr.HTML(elem_id="ft-preview")
        with gr.Column(scale=2):
            base = gr.Dropdown(
                choices=choices,
                value=choices[0][1],
                allow_custom_value=True,
                label="Base model (pick one, or type a folder or a Hugging Face id)",
                elem_id="ft-model",
            )
            method = gr.Radio(
                ["lora", "qlora"],
                value="qlora" if cuda else "lora",
                label="Method (QLoRA: 4-bit NF4 base)",
                elem_id="ft-method",
            )
            with gr.Row():
                rank = gr.Number(value=16, precision=0, label="Rank", elem_id="ft-rank")
                alpha = gr.Number(value=32, precision=0, label="Alpha", elem_id="ft-alpha")
                dropout = gr.Number(value=0.05, label="Dropout", elem_id="ft-dropout")
            targets = gr.Textbox(
                label="Target modules (comma-separated; empty = the default for the architecture)",
                elem_id="ft-targets",
            )
            with gr.Row():
                lr = gr.Number(value=2e-4, label="Learning rate", elem_id="ft-lr")
                schedule = gr.Dropdown(list(SCHEDULERS), value="cosine", label="Schedule", elem_id="ft-schedule")
                warmup = gr.Number(value=0.03, label="Warmup share", elem_id="ft-warmup")
            with gr.Row():
                epochs = gr.Number(value=3, label="Epochs", elem_id="ft-epochs")
                max_steps = gr.Number(value=0, precision=0, label="Max steps (0 = epochs)", elem_id="ft-max-steps")
            with gr.Row():
                batch = gr.Number(value=4, precision=0, label="Batch size", elem_id="ft-batch")
                accum = gr.Number(value=1, precision=0, label="Gradient accumulation", elem_id="ft-accum")
                cutoff = gr.Number(value=1024, precision=0, label="Cutoff length", elem_id="ft-cutoff")
            with gr.Row():
                packing = gr.Checkbox(value=True, label="Sequence packing", elem_id="ft-packing")
                checkpointing = gr.Checkbox(value=False, label="Gradient checkpointing", elem_id="ft-grad-ckpt")
                on_prompt = gr.Checkbox(value=False, label="Also learn the prompts", elem_id="ft-on-prompt")
            with gr.Row():
                eval_every = gr.Number(value=50, precision=0, label="Evaluate every N steps", elem_id="ft-eval-every")
                eval_share = gr.Number(value=0.1, label="Evaluation share", elem_id="ft-eval-share")
                seed = gr.Number(value=42, precision=0, label="Seed", elem_id="ft-seed")
                keep = gr.Number(value=2, precision=0, label="Checkpoints kept", elem_id="ft-keep")
            estimate_btn = gr.Button("Check memory", elem_id="ft-estimate-btn")
            estimate_md = gr.Markdown(elem_id="ft-estimate")
    with gr.Row():
        start_btn = gr.Button("Start", variant="primary", elem_id="ft-start")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="ft-stop")
        resume_btn = gr.Button("Resume", elem_id="ft-resume")
    progress_md = gr.Markdown(elem_id="ft-progress")
    plot = gr.LinePlot(
        metrics_frame([]),
        x="step",
        y="loss",
        color="series",
        title="Loss",
        height=280,
        elem_id="ft-loss-plot",
    )
    with gr.Row():
        runs_dd = gr.Dropdown(choices=run_choices(ctx), label="Runs", elem_id="ft-runs", scale=4)
        refresh_btn = gr.Button("Refresh", elem_id="ft-refresh", scale=1)
    report_md = gr.Markdown(elem_id="ft-report")
    with gr.Row():
        try_btn = gr.Button("Try in Chat", elem_id="ft-try-chat")
        merge_btn = gr.Button("Merge and export", elem_id="ft-merge")
    result_md = gr.Markdown(elem_id="ft-result")
    run_name = gr.State("")
    seen = gr.State("")
    timer = gr.Timer(1.0)

    column_boxes = [col_text, col_instruction, col_input, col_output, col_messages, col_system]
    data_inputs = [data_file, base, cutoff, shape, *column_boxes, skip_bad, on_prompt]
    settings = [base, method, rank, alpha, dropout, targets, lr, schedule, warmup, epochs, max_steps, batch, accum]
    settings += [cutoff, packing, checkpointing, on_prompt, eval_every, seed, keep]

    def read_dataset(path, shape_v, text, instruction, inp, output, messages, system, skip):
        if not path:
            raise InputError("Drop a dataset file first.")
        mapping = mapping_from_form(shape_v, text, instruction, inp, output, messages, system)
        return load_dataset(path, mapping, skip_bad=bool(skip), name=Path(path).name, limit=upload_limit(ctx))

    def column_updates(columns: list[str], mapping: ColumnMap | None, open_box: bool):
        opts = [NONE, *columns]
        values = ["", "", "", "", "", ""]
        if mapping is not None:
            values = [
                mapping.text,
                mapping.instruction,
                mapping.input,
                mapping.output,
                mapping.messages,
                mapping.system,
            ]
        updates = [gr.Dropdown(choices=opts, value=v) for v in values]
        shape_update = gr.Dropdown(value=mapping.shape if mapping is not None else AUTO)
        return [gr.Accordion(open=open_box), shape_update, *updates]

    def analyse(path, choice, cut, shape_v, text, instruction, inp, output, messages, system, skip, learn_prompt):
        """Outputs: summary, histogram, preview, columns accordion, shape, six column dropdowns."""
        keep_cols = [gr.skip()] * 8
        try:
            if not path:
                return ["", "", "", *keep_cols]
            try:
                dataset = read_dataset(path, shape_v, text, instruction, inp, output, messages, system, skip)
            except NeedsColumns as exc:
                gr.Warning(exc.message)
                return [f"**{exc}**", "", "", *column_updates(exc.columns, None, True)]
            source, _, _ = resolve_base(ctx, choice)
            tokenizer = tokenizer_for(source)
            cut = int(cut or 0)
            if not 0 <= cut <= MAX_CUTOFF:  # small values pass: they are on the way to a larger one being typed
                raise InputError(cutoff_message(cut))
            stats = rowlib.measure(dataset.samples, tokenizer, cut, train_on_prompt=bool(learn_prompt))
            avg = sum(stats.lengths) / max(1, len(stats.lengths))
            lines = [
                f"**{dataset.name}**: {dataset.summary()}.",
                f"Tokens per row: mean {avg:.0f}, longest {max(stats.lengths, default=0)}; "
                f"**{stats.truncated} of {len(stats.lengths)} rows longer than the cutoff ({cut})** will be truncated."
                if stats.truncated
                else f"Tokens per row: mean {avg:.0f}, longest {max(stats.lengths, default=0)}; "
                f"none longer than the cutoff ({cut}).",
                f"{stats.learned_tokens} tokens to learn from per epoch.",
            ]
            if dataset.skipped:
                lines.append("Skipped: " + "; ".join(dataset.skipped[:5]) + (" …" if len(dataset.skipped) > 5 else ""))
            return [
                "\n\n".join(lines),
                histogram_svg(stats),
                preview_html(dataset, tokenizer, bool(learn_prompt)),
                *column_updates(dataset.columns, dataset.mapping, False),
            ]
        except DatasetError as exc:
            raise gr.Error(str(exc)) from None
        except StudioError as exc:
            raise gr.Error(str(exc)) from None

    def job_from(values: list) -> TrainJob:
        (choice, meth, r, a, d, tgt, lr_v, sched, warm, ep, steps, b, acc) = values[:13]
        (cut, pack, ckpt, learn_prompt, ev, sd, kept) = values[13:]

        def whole(value, name):
            if value is None:
                raise InputError(f"{name} must be a whole number.")
            return int(value)

        def number(value, name):
            if value is None:
                raise InputError(f"{name} must be a number.")
            return float(value)

        source, source_type, label = resolve_base(ctx, choice)
        job = TrainJob(
            base_model=source,
            base_label=label,
            base_choice=choice,
            source_type=source_type,
            method=meth or "lora",
            precision="bf16" if cuda else "fp32",
            device=ctx.device,
            rank=whole(r, "Rank"),
            alpha=whole(a, "Alpha"),
            dropout=number(d, "Dropout"),
            target_modules=tuple(t.strip() for t in (tgt or "").split(",") if t.strip()),
            learning_rate=number(lr_v, "Learning rate"),
            scheduler=sched,
            warmup_ratio=number(warm, "Warmup share"),
            epochs=number(ep, "Epochs"),
            max_steps=whole(steps, "Max steps"),
            batch_size=whole(b, "Batch size"),
            grad_accum=whole(acc, "Gradient accumulation"),
            cutoff_len=whole(cut, "Cutoff length"),
            packing=bool(pack),
            gradient_checkpointing=bool(ckpt),
            train_on_prompt=bool(learn_prompt),
            eval_every=whole(ev, "Evaluate every"),
            save_every=whole(ev, "Evaluate every"),
            max_checkpoints=whole(kept, "Checkpoints kept"),
            seed=whole(sd, "Seed"),
            offline=ctx.config.offline,
            train_rows=1,
        )
        job.check()
        return job

    @msg.user_errors
    def estimate(*values):
        plan = ctx.training.plan(job_from(list(values)))
        return plan.message

    @msg.user_errors
    def start(
        request: gr.Request, path, shape_v, text, instruction, inp, output, messages, system, skip, share, *values
    ):
        owner_only(ctx, request, "start fine-tuning")
        dataset = read_dataset(path, shape_v, text, instruction, inp, output, messages, system, skip)
        job = job_from(list(values))
        plan = ctx.training.plan(job)
        if not plan.plan.fits:
            raise StudioError(plan.message)
        if share is None:
            raise InputError("The evaluation share must be a number between 0 and 0.9.")
        run = ctx.training.create(job, dataset, float(share))
        try:
            ctx.training.start(run)
        except StudioError:
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)  # never started: leave no half run behind
            raise
        note = f"Started {run.name}. {plan.message}"
        return run.name, note, gr.Dropdown(choices=run_choices(ctx), value=run.name), ""

    @msg.user_errors
    def stop(name, request: gr.Request):
        owner_only(ctx, request, "stop fine-tuning")
        run = ctx.training.get(name)
        if not ctx.training.stop(run):
            raise InputError(f"{run.name} is not training.", "Nothing to stop.")
        return f"Stopping {run.name} after its current step; it saves the adapter."

    @msg.user_errors
    def resume(name, request: gr.Request):
        owner_only(ctx, request, "start fine-tuning")
        run = ctx.training.get(name)
        if ctx.training.is_running(run):
            raise InputError(f"{run.name} is already training.")
        if ctx.training.state(run).get("state") == "done":
            raise InputError(f"{run.name} has finished all its steps.", "Start a new run to train more.")
        steps = run.checkpoint_steps()
        ctx.training.start(run)
        where = f"from step {steps[-1]}" if steps else "from the start (no checkpoint yet)"
        return f"Resuming {run.name} {where}.", gr.Dropdown(choices=run_choices(ctx), value=run.name), ""

    def poll(name, last):
        """Cheap: reads status.json and metrics.jsonl; sends nothing when neither changed."""
        if not name:
            return gr.skip(), gr.skip(), gr.skip(), last
        run = RunDir(ctx.training.root / name)
        try:
            sig = f"{run.status_file.stat().st_mtime_ns}:{run.metrics_file.stat().st_size if run.metrics_file.exists() else 0}"
        except FileNotFoundError:
            return gr.skip(), gr.skip(), gr.skip(), last
        if sig == last:
            return gr.skip(), gr.skip(), gr.skip(), last
        status = ctx.training.state(run)
        return progress_text(run, status), metrics_frame(run.metrics()), report_text(run), sig

    def select(name):
        if not name:
            return "", "", metrics_frame([]), "", ""
        run = RunDir(ctx.training.root / name)
        status = ctx.training.state(run)
        return name, progress_text(run, status), metrics_frame(run.metrics()), report_text(run), ""

    @msg.user_errors
    def merge(name, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        owner_only(ctx, request, "merge models")
        run = ctx.training.get(name)
        progress(0, desc="Merging the adapter into the base model")
        t0 = time.perf_counter()
        out = ctx.training.merge(run)
        return f"Merged in {time.perf_counter() - t0:.0f} s: `{out}` (a full safetensors model).", report_text(run)

    gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}
    quick = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
    analysis_out = [data_md, hist, preview, columns_box, shape, *column_boxes]
    data_file.change(analyse, data_inputs, analysis_out, api_name="ft_analyse", concurrency_id="dataset")
    analyse_btn.click(analyse, data_inputs, analysis_out, api_visibility="private", concurrency_id="dataset")
    for changed in (
        base,
        cutoff,
        on_prompt,
        skip_bad,
    ):  # the preview follows the tokenizer, the cutoff and what is learned
        changed.change(analyse, data_inputs, analysis_out, api_visibility="private", concurrency_id="dataset")
    estimate_btn.click(estimate, settings, [estimate_md], api_name="ft_estimate", **quick)
    start_btn.click(
        start,
        [data_file, shape, *column_boxes, skip_bad, eval_share, *settings],
        [run_name, estimate_md, runs_dd, seen],
        api_name="ft_start",
        **gpu,
    )
    stop_btn.click(stop, [run_name], [result_md], api_name="ft_stop", **quick)
    resume_btn.click(resume, [run_name], [result_md, runs_dd, seen], api_name="ft_resume", **gpu)
    # the poller is never queued behind the GPU lane: the plot keeps moving while a model loads
    timer.tick(
        poll, [run_name, seen], [progress_md, plot, report_md, seen], queue=False, show_progress="hidden",
        api_name="ft_poll",
    )  # fmt: skip
    runs_dd.input(select, [runs_dd], [run_name, progress_md, plot, report_md, seen], api_name="ft_select", **quick)
    refresh_btn.click(lambda: gr.Dropdown(choices=run_choices(ctx)), None, [runs_dd], api_name="ft_runs", **quick)
    merge_btn.click(merge, [run_name], [result_md, report_md], api_name="ft_merge", **gpu)
    return {
        "file": data_file,
        "model": base,
        "start": start_btn,
        "stop": stop_btn,
        "resume": resume_btn,
        "progress": progress_md,
        "plot": plot,
        "runs": runs_dd,
        "run_name": run_name,
        "try_chat": try_btn,
        "result": result_md,
        "merge": merge_btn,
        "report": report_md,
    }


def connect_chat(
    ctx: AppContext, ft: dict[str, gr.components.Component], chat: dict[str, gr.components.Component], tabs: gr.Tabs
) -> None:
    """'Try in Chat': attach the run's adapter to its base model in the Chat tab, then switch to that tab."""
    from studio.ui.chat_tab import NO_ADAPTER, adapter_folders, resolve_spec

    @msg.user_errors
    def try_in_chat(name, precision, request: gr.Request):
        owner_only(ctx, request, "attach adapters")
        run = ctx.training.get(name)
        if not (run.adapter / "adapter_config.json").is_file():
            raise InputError(f"{run.name} has no adapter yet.", "Train (or stop) the run first.")
        job = run.job()
        choice = job.base_choice or job.base_model
        spec = resolve_spec(ctx, choice, precision)
        attached = ctx.chat.attach_adapter(spec, run.adapter, name=run.name)
        folders = adapter_folders(ctx)
        return (
            gr.Dropdown(value=choice),
            gr.Dropdown(choices=folders, value=str(run.adapter)),
            gr.Dropdown(choices=[NO_ADAPTER, *ctx.chat.attached(spec)], value=attached),
            gr.Tabs(selected="chat"),
            f"Attached {attached} to {spec.name} in the Chat tab.",
        )

    ft["try_chat"].click(
        try_in_chat,
        [ft["run_name"], chat["precision"]],
        [chat["model"], chat["adapter_path"], chat["use_adapter"], tabs, ft["result"]],
        api_name="ft_try_in_chat",
        concurrency_id="gpu",
        concurrency_limit=1,
    )
