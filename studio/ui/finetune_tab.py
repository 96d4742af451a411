"""The Fine-tune tab: drop a dataset, see it as the model will, set LoRA/QLoRA, check the memory, start a worker,
watch the loss live, stop, resume, and try the adapter in Chat.

Thin handlers: widgets -> Dataset / TrainJob -> ctx.training (a RunManager; the worker is a child process). No torch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.errors import InputError, StudioError
from studio.models.specs import CATALOG, check_name_chars
from studio.training import defaults as dflt
from studio.training import pref_rows
from studio.training import rows as rowlib
from studio.training.datasets import (
    SHAPES,
    UPLOAD_LIMIT_BYTES,
    ColumnMap,
    Dataset,
    NeedsColumns,
    load_dataset,
)
from studio.training.job import DPO_LOSSES, MAX_CUTOFF, SCHEDULERS, RunDir, TrainJob, cutoff_message
from studio.training.pref_data import PREFERENCE_SHAPES, for_objective, objective_problem, vote_file
from studio.ui import export_panel
from studio.ui import finetune_pref as pref
from studio.ui import messages as msg
from studio.ui.finetune_views import (
    AUTO,
    LOSS_TITLE,
    NONE,
    column_updates,
    compare_markdown,
    histogram_svg,
    plot_update,
    preview_html,
    progress_text,
    report_text,
    summary_text,
)
from studio.ui.forms import bind, field_names, number, whole

STARTER_PREFIX = "starter:"  # the Chat tab's value for the starter model
ACCEPTED = [".txt", ".csv", ".tsv", ".json", ".jsonl", ".parquet"]


# ----- pure helpers (tested without a browser) ------------------------------------------------------------------


def base_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The starter model, then the recommended chat models; any folder or Hub id can be typed too."""
    from studio.models.starter import STARTER_LABEL, STARTER_NAME

    choices = [(STARTER_LABEL, STARTER_PREFIX + STARTER_NAME)]
    choices += [(f"{e.label} — {e.hub_id}", e.hub_id) for e in CATALOG if e.kind == "chat" and not e.images]
    return choices


MODEL_FILE_SUFFIXES = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json"}


def resolve_base(ctx: AppContext, choice: str | None) -> tuple[str, str, str]:
    """(source, source_type, label) for a base-model choice; the starter is converted once to a folder."""
    choice = (choice or "").strip()
    if not choice:
        raise InputError(msg.PICK_MODEL.format(what="a base model"))
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
    """The Runs list, newest first: each run's name with its state and steps as status.json says now."""
    out = []
    for run in ctx.training.runs()[:50]:
        status = ctx.training.state(run)
        step, total = status.get("step", 0), status.get("total_steps", 0)
        out.append((f"{run.name} — {status.get('state', '?')} {step}/{total}", run.name))
    return out


# ----- forms ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ColumnsForm:
    """Which columns hold what; shape 'auto' detects them."""

    shape: str | None
    col_text: str | None
    col_instruction: str | None
    col_input: str | None
    col_output: str | None
    col_messages: str | None
    col_system: str | None

    def mapping(self) -> ColumnMap | None:
        """None when the shape is 'auto' (detect it), else the columns the user picked. The preference shapes are
        found by their column names (prompt, chosen, rejected; completion, label): picking one detects it."""
        if not self.shape or self.shape in (AUTO, *PREFERENCE_SHAPES):
            return None
        return ColumnMap(
            self.shape,
            text=self.col_text or "",
            instruction=self.col_instruction or "",
            input=self.col_input or "",
            output=self.col_output or "",
            system=self.col_system or "",
            messages=self.col_messages or "",
        )


@dataclass(frozen=True, kw_only=True)
class AnalyseForm(ColumnsForm):
    """What the dataset summary and preview read (the API order of `ft_analyse`: file, model, cutoff, columns…)."""

    file: str | None
    model: str | None  # the base model: its tokenizer measures the rows
    cutoff: int | None
    skip_bad: bool
    on_prompt: bool  # also learn the prompts: the preview highlights them too
    objective: str | None = "sft"  # sft | dpo | orpo | kto: the summary says when the data does not fit it
    votes: str | None = ""  # a collected vote file (data_dir/preferences), used when no file is dropped

    API_ORDER = ("file", "model", "cutoff", "shape", "col_text", "col_instruction", "col_input", "col_output")
    API_ORDER += ("col_messages", "col_system", "skip_bad", "on_prompt", "objective", "votes")


@dataclass(frozen=True, kw_only=True)
class JobForm:
    """The LoRA/QLoRA settings and hyper-parameters (the API order of `ft_estimate`)."""

    model: str | None  # the base model
    method: str | None  # lora | qlora
    rank: int | None
    alpha: int | None
    dropout: float | None
    targets: str | None  # target modules, comma-separated; empty = the architecture's default
    lr: float | None
    schedule: str | None
    warmup: float | None  # warmup share
    epochs: float | None
    max_steps: int | None
    batch: int | None
    accum: int | None  # gradient accumulation
    cutoff: int | None
    packing: bool
    checkpointing: bool  # gradient checkpointing
    on_prompt: bool  # also learn the prompts
    eval_every: int | None
    seed: int | None
    keep: int | None  # checkpoints kept
    objective: str | None = "sft"  # sft | dpo | orpo | kto
    beta: float | None = 0.1  # DPO / KTO β, ORPO λ
    loss_type: str | None = "sigmoid"  # DPO's loss

    def job(self, ctx: AppContext) -> TrainJob:
        source, source_type, label = resolve_base(ctx, self.model)
        evals = whole(self.eval_every, "Evaluate every")
        job = TrainJob(
            base_model=source,
            base_label=label,
            base_choice=self.model,
            source_type=source_type,
            method=self.method or "lora",
            precision="bf16" if ctx.device == "cuda" else "fp32",
            device=ctx.device,
            rank=whole(self.rank, "Rank"),
            alpha=whole(self.alpha, "Alpha"),
            dropout=number(self.dropout, "Dropout"),
            target_modules=tuple(t.strip() for t in (self.targets or "").split(",") if t.strip()),
            learning_rate=number(self.lr, "Learning rate"),
            scheduler=self.schedule,
            warmup_ratio=number(self.warmup, "Warmup share"),
            epochs=number(self.epochs, "Epochs"),
            max_steps=whole(self.max_steps, "Max steps"),
            batch_size=whole(self.batch, "Batch size"),
            grad_accum=whole(self.accum, "Gradient accumulation"),
            cutoff_len=whole(self.cutoff, "Cutoff length"),
            packing=bool(self.packing),
            gradient_checkpointing=bool(self.checkpointing),
            train_on_prompt=bool(self.on_prompt),
            eval_every=evals,
            save_every=evals,
            max_checkpoints=whole(self.keep, "Checkpoints kept"),
            seed=whole(self.seed, "Seed"),
            offline=ctx.config.offline,
            train_rows=1,
            objective=self.objective or "sft",
            beta=number(self.beta, "Beta"),
            loss_type=self.loss_type or "sigmoid",
        )
        job.check()
        return job


@dataclass(frozen=True, kw_only=True)
class DataForm(ColumnsForm):
    """The dataset a run trains on (the first values of `ft_start`: file, columns, skip bad rows, eval share)."""

    file: str | None
    skip_bad: bool
    eval_share: float | None  # the share of rows held out for evaluation
    votes: str | None = ""  # a collected vote file (data_dir/preferences), used when no file is dropped

    API_ORDER = ("file", "shape", "col_text", "col_instruction", "col_input", "col_output", "col_messages")
    API_ORDER += ("col_system", "skip_bad", "eval_share", "votes")


@dataclass(frozen=True, kw_only=True)
class StartForm(DataForm, JobForm):
    """A new run: its dataset, then its settings, then the vote file (the API order of `ft_start`)."""

    API_ORDER = DataForm.API_ORDER[:-1] + tuple(field_names(JobForm)) + ("votes",)


@dataclass(frozen=True, kw_only=True)
class DefaultsForm(StartForm):
    """A new dataset's run (the API order of `ft_defaults`), and the settings chosen for the dataset before."""

    chosen: dict | None  # form field -> the value chosen from the data last time (a user's own value is kept)

    API_ORDER = StartForm.API_ORDER + ("chosen",)


# the form fields chosen from the data, as TrainJob fields (epochs is never chosen: a changed one keeps max steps)
CHOSEN = {"cutoff": "cutoff_len", "batch": "batch_size", "max_steps": "max_steps", "epochs": "epochs"}


# ----- the handlers ---------------------------------------------------------------------------------------------


class FinetuneTab:
    """The Fine-tune tab's handlers; tokenizers loaded for previews are kept per base model."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.tokenizers: dict[str, Any] = {}
        self.train_rows: dict[tuple, list[rowlib.Row]] = {}  # the last dataset's training rows, for the steps line

    def run_named(self, name: str | None) -> RunDir:
        """The run a Runs value names; none picked is its own message (not "No run named ''")."""
        if not (name or "").strip():
            raise InputError(msg.PICK_RUN)
        return self.ctx.training.get(name)

    def tokenizer_for(self, source: str) -> Any:
        if source not in self.tokenizers:
            self.tokenizers[source] = rowlib.load_tokenizer(source, offline=self.ctx.config.offline)
        return self.tokenizers[source]

    def dataset_path(self, form: Any) -> str | None:
        """The dropped file, else the collected vote file picked (data_dir/preferences), else None."""
        if form.file:
            return form.file
        if getattr(form, "votes", None):
            return str(vote_file(self.ctx.paths.preferences, form.votes))
        return None

    def read_dataset(self, path: str | None, columns: ColumnsForm, skip_bad: bool) -> Dataset:
        if not path:
            raise InputError(msg.NO_DATASET)
        return load_dataset(
            path, columns.mapping(), skip_bad=bool(skip_bad), name=Path(path).name, limit=upload_limit(self.ctx)
        )

    def dataset_for(self, form: Any) -> Dataset:
        """The form's dataset as its objective trains on it (pairs unpaired for KTO); a mismatch says what to pick."""
        dataset = self.read_dataset(self.dataset_path(form), form, form.skip_bad)
        return for_objective(dataset, form.objective or "sft")

    @msg.user_errors
    def analyse(self, form: AnalyseForm, request: Any = None) -> list:
        """Outputs: summary, histogram, preview, columns accordion, shape, six column dropdowns."""
        path = self.dataset_path(form)
        if not path:
            return ["", "", "", *[gr.skip()] * 8]
        try:
            dataset = self.read_dataset(path, form, form.skip_bad)
        except NeedsColumns as exc:
            gr.Warning(exc.message)
            return [f"**{exc}**", "", "", *column_updates(exc.columns, None, True)]
        source, _, _ = resolve_base(self.ctx, form.model)
        tokenizer = self.tokenizer_for(source)
        cut = int(form.cutoff or 0)
        if not 0 <= cut <= MAX_CUTOFF:  # small values pass: they are on the way to a larger one being typed
            raise InputError(cutoff_message(cut))
        problem = objective_problem(dataset.samples, form.objective or "sft", dataset.name)
        if problem:
            gr.Warning(problem)
        if dataset.mapping.shape in ("preference", "kto"):
            stats = pref_rows.measure(dataset.samples, tokenizer, cut)
            return [
                pref.summary_text(dataset, stats, cut, problem),
                histogram_svg(stats),
                pref.preview_html(dataset, tokenizer),
                *column_updates(dataset.columns, dataset.mapping, False),
            ]
        stats = rowlib.measure(dataset.samples, tokenizer, cut, train_on_prompt=bool(form.on_prompt))
        return [
            summary_text(dataset, stats, cut) + pref.sft_problem_line(problem),
            histogram_svg(stats),
            preview_html(dataset, tokenizer, bool(form.on_prompt)),
            *column_updates(dataset.columns, dataset.mapping, False),
        ]

    def rows_for(self, form: StartForm, job: TrainJob) -> list[rowlib.Row]:
        """The full token rows of the training split Start would write (cached for the last dataset)."""
        key = (
            self.dataset_path(form),
            job.objective,
            job.base_model,
            form.eval_share,
            job.seed,
            job.train_on_prompt,
            form.mapping(),
            form.skip_bad,
        )
        if key not in self.train_rows:
            if form.eval_share is None:
                raise InputError(msg.EVAL_SHARE_MISSING)
            dataset = self.dataset_for(form)
            tokenizer = self.tokenizer_for(job.base_model)
            self.train_rows = {
                key: dflt.train_rows(dataset.samples, tokenizer, float(form.eval_share), job.seed, job.train_on_prompt)
            }
        return self.train_rows[key]

    @msg.user_errors
    def defaults(self, form: DefaultsForm, request: Any = None) -> list:
        """A new dataset: cutoff, batch and max steps chosen from it (studio.training.defaults) unless the user set
        them (a value that is neither the page's default nor the one chosen last), and the steps line.
        Outputs: cutoff, batch, max steps, the note saying what was chosen, the steps line, the values chosen."""
        if not self.dataset_path(form):
            return [gr.skip()] * 3 + ["", "", gr.skip()]
        try:
            dataset = self.read_dataset(self.dataset_path(form), form, form.skip_bad)
        except NeedsColumns:
            return [gr.skip()] * 3 + ["", "", gr.skip()]  # the analysis asks for the columns
        if objective_problem(dataset.samples, form.objective or "sft", dataset.name):
            return [gr.skip()] * 3 + ["", "", gr.skip()]  # the analysis says which objective or data to pick
        dataset = for_objective(dataset, form.objective or "sft")
        job = form.job(self.ctx)
        if form.eval_share is None:
            raise InputError(msg.EVAL_SHARE_MISSING)
        before, initial = form.chosen or {}, TrainJob(base_model="-")
        fixed = [
            field
            for name, field in CHOSEN.items()
            if getattr(job, field) not in (getattr(initial, field), before.get(name, getattr(initial, field)))
        ]
        tokenizer = self.tokenizer_for(job.base_model)
        derived = dflt.choose(self.ctx.training, job, dataset.samples, tokenizer, float(form.eval_share), fixed)
        job = derived.job
        chosen = {name: getattr(job, field) for name, field in CHOSEN.items() if field not in fixed}
        return [
            job.cutoff_len,
            job.batch_size,
            job.max_steps,
            dflt.reasons_line(derived.reasons),
            dflt.steps_line(job, derived.data),
            chosen,
        ]

    def steps(self, form: StartForm, request: Any = None) -> str:
        """ "This run will make N optimizer steps over M tokens", live as the settings change (or what is wrong)."""
        if not form.file and not form.votes:
            return ""
        try:
            job = form.job(self.ctx)
            data = dflt.blocks_for(self.rows_for(form, job), job.cutoff_len, job.packing)
        except NeedsColumns:
            return ""
        except StudioError as exc:
            return f"⚠ {exc.message}"
        return dflt.steps_line(job, data)

    @msg.user_errors
    def estimate(self, form: JobForm, request: Any = None) -> str:
        owner_only(self.ctx, request, "plan fine-tuning")  # before the base model's path is looked at
        return self.ctx.training.plan(form.job(self.ctx)).message

    @msg.user_errors
    def start(self, form: StartForm, request: Any = None) -> tuple:
        owner_only(self.ctx, request, "start fine-tuning")
        dataset = self.dataset_for(form)
        job = form.job(self.ctx)
        plan = self.ctx.training.plan(job)
        if not plan.plan.fits:
            raise StudioError(plan.message)
        if form.eval_share is None:
            raise InputError(msg.EVAL_SHARE_MISSING)
        run = self.ctx.training.create(job, dataset, float(form.eval_share))
        try:
            self.ctx.training.start(run)
        except StudioError:
            shutil.rmtree(run.path, ignore_errors=True)  # never started: leave no half run behind
            raise
        note = f"Started {run.name}. {plan.message}"
        return run.name, note, ""  # the name as a plain value (a script gets it so); the list follows (`listed`)

    @msg.user_errors
    def stop(self, name: str | None, request: gr.Request = None) -> str:
        owner_only(self.ctx, request, "stop fine-tuning")
        run = self.run_named(name)
        if not self.ctx.training.stop(run):
            raise InputError(f"{run.name} is not training.", "Nothing to stop.")
        return f"Stopping {run.name} after its current step; it saves the adapter."

    @msg.user_errors
    def resume(self, name: str | None, request: gr.Request = None) -> tuple:
        owner_only(self.ctx, request, "start fine-tuning")
        run = self.run_named(name)
        if self.ctx.training.is_running(run):
            raise InputError(f"{run.name} is already training.")
        if self.ctx.training.state(run).get("state") == "done":
            raise InputError(f"{run.name} has finished all its steps.", "Start a new run to train more.")
        steps = run.checkpoint_steps()
        self.ctx.training.start(run)
        where = f"from step {steps[-1]}" if steps else "from the start (no checkpoint yet)"
        return f"Resuming {run.name} {where}.", gr.Dropdown(choices=run_choices(self.ctx), value=run.name), ""

    def poll(self, name: str | None, last: str) -> tuple:
        """Cheap: reads status.json and metrics.jsonl; sends nothing when neither changed. Outputs: progress, plot,
        report, what was seen (the files' signature) and the run's state (a new state refreshes the Runs list)."""
        unchanged = (gr.skip(), gr.skip(), gr.skip(), last, gr.skip())
        if not name:
            return unchanged
        run = RunDir(self.ctx.training.root / name)
        try:
            size = run.metrics_file.stat().st_size if run.metrics_file.exists() else 0
            sig = f"{run.status_file.stat().st_mtime_ns}:{size}"
        except FileNotFoundError:
            return unchanged
        if sig == last:
            return unchanged
        return self.shown(run, sig)

    def shown(self, run: RunDir, seen: str) -> tuple:
        """What the page shows of a run: the progress line, the loss plot, the report, then `seen` and the state."""
        status = self.ctx.training.state(run)
        return progress_text(run, status), plot_update(run.metrics()), report_text(run), seen, status.get("state", "")

    def select(self, name: str | None) -> tuple:
        if not name:
            return "", plot_update([]), "", "", ""
        return self.shown(RunDir(self.ctx.training.root / name), "")

    def page_load(self) -> tuple:
        """A fresh page (a reload too): the Runs list as it is now with the newest run chosen, and that run shown."""
        choices = run_choices(self.ctx)
        newest = choices[0][1] if choices else None
        return gr.Dropdown(choices=choices, value=newest), *self.select(newest)

    def runs(self) -> gr.Dropdown:
        return gr.Dropdown(choices=run_choices(self.ctx))

    def votes_list(self, current: str | None) -> gr.Dropdown:
        """The vote files collected in the Chat tab, each with its count (the picked one stays picked)."""
        return pref.votes_update(self.ctx.paths.preferences, current)

    def listed(self, current: str | None) -> gr.Dropdown:
        """The runs list with the current run still chosen (after Start has named it), else the newest."""
        choices = run_choices(self.ctx)
        if not current and choices:
            current = choices[0][1]
        return gr.Dropdown(choices=choices, value=current)

    def relabel(self, current: str | None, state: str, labelled: str) -> tuple:
        """After a poll or a pick: the Runs list again when the shown run's state is not the one last listed (so a
        finished run reads "done 60/60", not "starting 0/0"); nothing is sent otherwise."""
        if state == labelled:
            return gr.skip(), labelled
        return self.listed(current), state

    def export_source(self, name: str | None) -> str:
        """The run folder an export starts from, checked here first (no adapter yet, still training: one line)."""
        from studio.export.sources import resolve

        run = self.run_named(name)
        resolve(str(run.path), self.ctx.config.data_dir)
        return str(run.path)

    @msg.user_errors
    def try_in_chat(self, name: str | None, precision: str, history: list | None, request: gr.Request = None) -> tuple:
        """'Try in Chat': attach the run's adapter to its base model in the Chat tab, then switch to that tab, where
        'Answer with' shows the adapter and a line in the conversation says it is attached."""
        from studio.ui.chat_tab import NO_ADAPTER, adapter_folders, note, resolve_spec

        owner_only(self.ctx, request, "attach adapters")
        run = self.run_named(name)
        if not (run.adapter / "adapter_config.json").is_file():
            raise InputError(f"{run.name} has no adapter yet.", "Train (or stop) the run first.")
        job = run.job()
        choice = job.base_choice or job.base_model
        spec = resolve_spec(self.ctx, choice, precision)
        attached = self.ctx.chat.attach_adapter(spec, run.adapter, name=run.name)
        line = msg.ADAPTER_ATTACHED.format(adapter=attached, model=spec.name)
        return (
            gr.Dropdown(value=choice),
            gr.Dropdown(choices=adapter_folders(self.ctx), value=str(run.adapter)),
            gr.Dropdown(choices=[NO_ADAPTER, *self.ctx.chat.attached(spec)], value=attached),
            gr.Tabs(selected="chat"),
            f"Attached {attached} to {spec.name} in the Chat tab.",
            line,
            [*(history or []), note(line, msg.ADAPTER_ATTACHED_NOTE)],
        )

    @msg.user_errors
    def compare_general(self, name: str | None, precision: str, request: gr.Request = None) -> str:
        """'Compare on general questions': a few of the general probe's questions answered by the base and by the
        run's adapter (attached to the base in the Chat engine, as Try in Chat does), side by side."""
        from studio.engines.chat import ChatParams
        from studio.training import probe
        from studio.ui.chat_tab import resolve_spec

        owner_only(self.ctx, request, "attach adapters")
        run = self.run_named(name)
        if not (run.adapter / "adapter_config.json").is_file():
            raise InputError(f"{run.name} has no adapter yet.", "Train (or stop) the run first.")
        job = run.job()
        spec = resolve_spec(self.ctx, job.base_choice or job.base_model, precision)
        attached = self.ctx.chat.attach_adapter(spec, run.adapter, name=run.name)
        prompts = probe.load_probe()
        picked = prompts[:: max(1, len(prompts) // probe.COMPARE_QUESTIONS)][: probe.COMPARE_QUESTIONS]
        greedy = ChatParams(temperature=0, max_new_tokens=probe.ANSWER_TOKENS, repetition_penalty=1.0)
        rows = []
        for q in picked:
            turn = [{"role": "user", "content": q}]
            base = self.ctx.chat.complete(spec, turn, greedy).text
            tuned = self.ctx.chat.complete(spec, turn, greedy, adapter=attached).text
            rows.append((q, base, tuned))
        note = msg.GENERAL_COMPARE_NOTE.format(n=len(rows), base=spec.name, run=run.name)
        return note + "\n\n" + compare_markdown(rows)


# ----- layout and wiring ----------------------------------------------------------------------------------------


def layout(ctx: AppContext) -> dict[str, Any]:
    """The tab's widgets, by name (the names the forms use)."""
    w: dict[str, Any] = {}
    gr.Markdown(msg.FT_INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            dataset_column(w)
        with gr.Column(scale=2):
            settings_column(ctx, w)
    runs_section(ctx, w)
    return w


def dataset_column(w: dict[str, Any]) -> None:
    w["file"] = gr.File(
        label="Dataset (.txt, .csv, .tsv, .json, .jsonl, .parquet)",
        file_types=ACCEPTED,
        type="filepath",
        elem_id="ft-file",
    )
    w["votes"] = gr.Dropdown(
        [(pref.NO_VOTES, "")],
        value="",
        label="…or votes collected in the Chat tab (data dir / preferences)",
        allow_custom_value=True,  # a script may name a file collected after the page was built (checked when used)
        elem_id="ft-votes",
    )
    with gr.Accordion("Columns", open=False, elem_id="ft-columns") as w["columns_box"]:
        w["shape"] = gr.Dropdown([AUTO, *SHAPES], value=AUTO, label="Shape", elem_id="ft-shape")
        rows = (
            (("col_text", "Text column"), ("col_messages", "Messages column")),
            (("col_instruction", "Instruction column"), ("col_input", "Input column (optional)")),
            (("col_output", "Output column"), ("col_system", "System column (optional)")),
        )
        for row in rows:
            with gr.Row():
                for name, label in row:
                    elem = "ft-" + name.replace("_", "-")
                    w[name] = gr.Dropdown([NONE], value=NONE, label=label, elem_id=elem)
    with gr.Row():
        w["skip_bad"] = gr.Checkbox(label="Skip bad rows", value=False, elem_id="ft-skip-bad")
        w["analyse"] = gr.Button("Analyse again", elem_id="ft-analyse", size="sm")
    w["data_summary"] = gr.Markdown(elem_id="ft-data-summary")
    w["histogram"] = gr.HTML(elem_id="ft-histogram")
    w["preview"] = gr.HTML(elem_id="ft-preview")


def settings_column(ctx: AppContext, w: dict[str, Any]) -> None:
    choices = base_choices(ctx)
    w["model"] = gr.Dropdown(
        choices=choices,
        value=choices[0][1],
        allow_custom_value=True,
        label="Base model (pick one, or type a folder or a Hugging Face id)",
        elem_id="ft-model",
    )
    w["method"] = gr.Radio(
        ["lora", "qlora"],
        value="qlora" if ctx.device == "cuda" else "lora",
        label="Method (QLoRA: 4-bit NF4 base)",
        elem_id="ft-method",
    )
    with gr.Row():
        w["objective"] = gr.Radio(
            pref.OBJECTIVE_CHOICES,
            value="sft",
            label="Objective (SFT: learn the answers; DPO / ORPO: chosen over rejected pairs; KTO: rated replies)",
            elem_id="ft-objective",
            scale=3,
        )
        w["beta"] = gr.Number(value=0.1, label=pref.BETA_LABELS["dpo"], visible=False, elem_id="ft-beta", scale=1)
        w["loss_type"] = gr.Dropdown(
            list(DPO_LOSSES), value="sigmoid", label="DPO loss", visible=False, elem_id="ft-loss-type", scale=1
        )
    with gr.Row():
        w["rank"] = gr.Number(value=16, precision=0, label="Rank", elem_id="ft-rank")
        w["alpha"] = gr.Number(value=32, precision=0, label="Alpha", elem_id="ft-alpha")
        w["dropout"] = gr.Number(value=0.05, label="Dropout", elem_id="ft-dropout")
    w["targets"] = gr.Textbox(
        "", label="Target modules (comma-separated; empty = the default for the architecture)", elem_id="ft-targets"
    )
    with gr.Row():
        w["lr"] = gr.Number(value=2e-4, label="Learning rate", elem_id="ft-lr")
        w["schedule"] = gr.Dropdown(list(SCHEDULERS), value="cosine", label="Schedule", elem_id="ft-schedule")
        w["warmup"] = gr.Number(value=0.03, label="Warmup share", elem_id="ft-warmup")
    with gr.Row():
        w["epochs"] = gr.Number(value=3, label="Epochs", elem_id="ft-epochs")
        w["max_steps"] = gr.Number(value=0, precision=0, label="Max steps (0 = epochs)", elem_id="ft-max-steps")
    with gr.Row():
        w["batch"] = gr.Number(value=4, precision=0, label="Batch size", elem_id="ft-batch")
        w["accum"] = gr.Number(value=1, precision=0, label="Gradient accumulation", elem_id="ft-accum")
        w["cutoff"] = gr.Number(value=1024, precision=0, label="Cutoff length", elem_id="ft-cutoff")
    with gr.Row():
        w["packing"] = gr.Checkbox(value=True, label="Sequence packing", elem_id="ft-packing")
        w["checkpointing"] = gr.Checkbox(value=False, label="Gradient checkpointing", elem_id="ft-grad-ckpt")
        w["on_prompt"] = gr.Checkbox(value=False, label="Also learn the prompts", elem_id="ft-on-prompt")
    with gr.Row():
        w["eval_every"] = gr.Number(value=50, precision=0, label="Evaluate every N steps", elem_id="ft-eval-every")
        w["eval_share"] = gr.Number(value=0.1, label="Evaluation share", elem_id="ft-eval-share")
        w["seed"] = gr.Number(value=42, precision=0, label="Seed", elem_id="ft-seed")
        w["keep"] = gr.Number(value=2, precision=0, label="Checkpoints kept", elem_id="ft-keep")
    w["derived"] = gr.Markdown(elem_id="ft-derived")
    w["steps"] = gr.Markdown(elem_id="ft-steps")
    w["estimate"] = gr.Button("Check memory", elem_id="ft-estimate-btn")
    w["estimate_md"] = gr.Markdown(elem_id="ft-estimate")


def runs_section(ctx: AppContext, w: dict[str, Any]) -> None:
    with gr.Row():
        w["start"] = gr.Button("Start", variant="primary", elem_id="ft-start")
        w["stop"] = gr.Button("Stop", variant="stop", elem_id="ft-stop")
        w["resume"] = gr.Button("Resume", elem_id="ft-resume")
    w["progress"] = gr.Markdown(elem_id="ft-progress")
    w["plot"] = gr.LinePlot(
        None,  # no points yet (see `plot_update`: the chart is built from its first points)
        x="step",
        y="loss",
        color="series",
        title="Loss",
        x_title="step",
        y_title=LOSS_TITLE,
        color_title="",
        height=280,
        elem_id="ft-loss-plot",
    )
    with gr.Row():
        # a script may name any run, also one made after the page was built (the name is checked when used)
        w["runs"] = gr.Dropdown(
            choices=run_choices(ctx), label="Runs", allow_custom_value=True, elem_id="ft-runs", scale=4
        )
        w["refresh"] = gr.Button("Refresh", elem_id="ft-refresh", scale=1)
    w["report"] = gr.Markdown(elem_id="ft-report")
    with gr.Row():
        w["try_chat"] = gr.Button("Try in Chat", elem_id="ft-try-chat")
        w["compare_general"] = gr.Button("Compare on general questions", elem_id="ft-compare-general")
    w["result"] = gr.Markdown(elem_id="ft-result")
    w["compare"] = gr.Markdown(elem_id="ft-compare")
    with gr.Accordion("Export (merged safetensors, GGUF for llama.cpp / Ollama / LM Studio, GGUF LoRA)", open=True):
        export_panel.layout(w, "ft", for_run=True)
    w["seen"] = gr.State("")
    w["chosen"] = gr.State({})  # the settings last chosen from a dataset (see FinetuneTab.defaults)
    w["run_state"] = gr.State("")  # the shown run's state, and the one the Runs list's labels were made with
    w["labelled"] = gr.State("")
    w["timer"] = gr.Timer(1.0)


COLUMNS = ("col_text", "col_instruction", "col_input", "col_output", "col_messages", "col_system")
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
QUICK = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
LIGHT = {"queue": False, "show_progress": "hidden"}  # never queued behind the GPU lane


def wire(tab: FinetuneTab, w: dict[str, Any]) -> None:
    """The tab's events."""
    analyse, analyse_inputs = bind(tab.analyse, AnalyseForm, w)
    analysis_out = [w[n] for n in ("data_summary", "histogram", "preview", "columns_box", "shape", *COLUMNS)]
    w["file"].change(analyse, analyse_inputs, analysis_out, api_name="ft_analyse", concurrency_id="dataset")
    # the preview follows the tokenizer, the cutoff and what is learned (and the objective's fit to the data)
    for changed in (w["analyse"], w["model"], w["cutoff"], w["on_prompt"], w["skip_bad"], w["objective"]):
        event = changed.click if changed is w["analyse"] else changed.change
        event(analyse, analyse_inputs, analysis_out, api_visibility="private", concurrency_id="dataset")
    # a new dataset: settings chosen from it; then the steps line follows every setting it depends on
    defaults, defaults_inputs = bind(tab.defaults, DefaultsForm, w)
    chosen = [w["cutoff"], w["batch"], w["max_steps"], w["derived"], w["steps"], w["chosen"]]
    w["file"].change(defaults, defaults_inputs, chosen, api_name="ft_defaults", concurrency_id="dataset")
    wire_preference(tab, w, (analyse, analyse_inputs, analysis_out), (defaults, defaults_inputs, chosen))
    steps, steps_inputs = bind(tab.steps, StartForm, w)
    steps_on = ("model", "epochs", "max_steps", "batch", "accum", "cutoff", "packing", "on_prompt", "eval_share")
    for name in (*steps_on, "objective"):
        w[name].change(steps, steps_inputs, [w["steps"]], api_visibility="private", **QUICK)
    w["seed"].change(steps, steps_inputs, [w["steps"]], api_name="ft_steps", **QUICK)
    estimate, job_inputs = bind(tab.estimate, JobForm, w)
    w["estimate"].click(estimate, job_inputs, [w["estimate_md"]], api_name="ft_estimate", **QUICK)
    start, start_inputs = bind(tab.start, StartForm, w)
    # every run action names its run by the Runs picker's value (Start sets it), so a script names it the same way
    started = [w["runs"], w["estimate_md"], w["seen"]]
    w["start"].click(start, start_inputs, started, api_name="ft_start", **GPU).success(
        tab.listed, [w["runs"]], [w["runs"]], **QUICK
    )
    w["stop"].click(tab.stop, [w["runs"]], [w["result"]], api_name="ft_stop", **QUICK)
    resumed = [w["result"], w["runs"], w["seen"]]
    w["resume"].click(tab.resume, [w["runs"]], resumed, api_name="ft_resume", **GPU)
    shown = [w["progress"], w["plot"], w["report"], w["seen"], w["run_state"]]
    # a run that starts, stops, finishes or resumes reads so in the list (see `relabel`)
    relabel = {"fn": tab.relabel, "inputs": [w["runs"], w["run_state"], w["labelled"]]}
    relabel |= {"outputs": [w["runs"], w["labelled"]], "api_visibility": "private", **LIGHT}
    # the poller is never queued behind the GPU lane: the plot keeps moving while a model loads
    poll_inputs = [w["runs"], w["seen"]]
    w["timer"].tick(tab.poll, poll_inputs, shown, api_name="ft_poll", **LIGHT).then(**relabel)
    w["runs"].input(tab.select, [w["runs"]], shown, api_name="ft_select", **QUICK).then(**relabel)
    w["refresh"].click(tab.runs, None, [w["runs"]], api_name="ft_runs", **QUICK)
    # the run is named by the Runs picker (which Start and Resume set), so a script names it too: /ft_export
    export_panel.wire(w["export_panel"], w, w["runs"], "ft")


def wire_preference(tab: FinetuneTab, w: dict[str, Any], analysis: tuple, chosen: tuple) -> None:
    """The objective shows its own settings; a collected vote file picked is the dataset (the dropped file is
    cleared, and dropping a file clears the pick); the list re-reads its counts when opened."""
    w["objective"].change(pref.objective_updates, [w["objective"]], [w["beta"], w["loss_type"]], **LIGHT)
    (analyse, analyse_inputs, analysis_out), (defaults, defaults_inputs, chosen_out) = analysis, chosen
    w["votes"].input(lambda: None, None, [w["file"]], api_visibility="private", **LIGHT).then(
        analyse, analyse_inputs, analysis_out, api_visibility="private", concurrency_id="dataset"
    ).then(defaults, defaults_inputs, chosen_out, api_visibility="private", concurrency_id="dataset")
    w["file"].upload(lambda: "", None, [w["votes"]], api_visibility="private", **LIGHT)
    w["votes"].focus(tab.votes_list, [w["votes"]], [w["votes"]], api_name="ft_votes", **LIGHT)


def build(ctx: AppContext) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    tab = FinetuneTab(ctx)
    w = layout(ctx)
    w["export_panel"] = export_panel.ExportPanel(ctx, export_panel.ExportRunner(ctx), tab.export_source, for_run=True)
    wire(tab, w)
    w["tab"] = tab
    return w


def connect_page_load(app: gr.Blocks, ft: dict[str, Any]) -> None:
    """Every page (re)load lists the runs as they are now, chooses the newest and shows it (see `page_load`)."""
    outputs = [ft["runs"], ft["progress"], ft["plot"], ft["report"], ft["seen"], ft["run_state"]]
    app.load(ft["tab"].page_load, None, outputs, api_name="ft_page", queue=False, show_progress="hidden")
    app.load(ft["tab"].votes_list, [ft["votes"]], [ft["votes"]], api_visibility="private", **LIGHT)


def connect_chat(ctx: AppContext, ft: dict[str, Any], chat: dict[str, Any], tabs: gr.Tabs) -> None:
    """'Try in Chat' (see `FinetuneTab.try_in_chat`) fills the Chat tab's pickers and opens it."""
    ft["try_chat"].click(
        ft["tab"].try_in_chat,
        [ft["runs"], chat["precision"], chat["chatbot"]],
        [chat["model"], chat["adapter_path"], chat["use_adapter"], tabs, ft["result"], chat["adapter_status"]]
        + [chat["chatbot"]],
        api_name="ft_try_in_chat",
        concurrency_id="gpu",
        concurrency_limit=1,
    )
    ft["compare_general"].click(
        ft["tab"].compare_general,
        [ft["runs"], chat["precision"]],
        [ft["compare"]],
        api_name="ft_compare_general",
        concurrency_id="gpu",
        concurrency_limit=1,
    )
    export_panel.connect_chat(ft["export_panel"], ft, ft["runs"], chat, tabs)
