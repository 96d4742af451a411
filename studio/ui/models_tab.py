"""The Models tab: what the manager holds, park/unload, budget and reserve, a load form, the memory timeline."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from studio.config import GIB
from studio.context import AppContext
from studio.errors import InputError
from studio.models.records import ModelRecord
from studio.models.specs import CATALOG, KINDS, PRECISIONS, ModelSpec
from studio.security import require_owner
from studio.text import control_char, fmt_bytes, lone_surrogate
from studio.ui import messages as msg
from studio.ui import timeline

MAX_GB = 100_000  # a budget or reserve above this is a typo, not a device

COLUMNS = [
    "Name",
    "Kind",
    "Precision",
    "Device",
    "State",
    "Estimated",
    "Measured",
    "Holds now",
    "In use",
    "Last use",
    "Key",
]
EVENT_COLUMNS = ["Time", "Event", "Model", "Size", "Detail"]


def _ago(t: float) -> str:
    if not t:
        return "never"
    s = max(0, time.time() - t)
    return f"{s:.0f} s ago" if s < 90 else f"{s / 60:.0f} min ago" if s < 5400 else f"{s / 3600:.1f} h ago"


def model_rows(records: list[ModelRecord]) -> list[list[str]]:
    return [
        [
            r.name,
            r.kind,
            r.precision,
            r.device,
            r.state,
            fmt_bytes(r.estimated_bytes),
            fmt_bytes(r.measured_bytes),
            fmt_bytes(r.accounted_bytes) if r.accounted_bytes else "—",
            str(r.leases) if r.leases else "",
            _ago(r.last_used),
            r.key,
        ]
        for r in records
    ]


def check_name_chars(source: str) -> None:
    """Refuse a model name with a NUL, another control character or a lone surrogate (pasted or sent by a script)."""
    bad = control_char(source)
    if bad is None:
        bad = lone_surrogate(source)
    if bad is not None:
        raise InputError(msg.BAD_SOURCE_CHAR.format(code=f"U+{ord(source[bad]):04X}", at=bad + 1))


def spec_from_form(ctx: AppContext, kind: str, source: str, precision: str) -> ModelSpec:
    """Turn the load form into a ModelSpec, or say what is wrong with it."""
    source = (source or "").strip()
    if not source:
        raise InputError(msg.EMPTY_SOURCE)
    check_name_chars(source)
    if kind not in KINDS:
        raise InputError(f"Kind must be one of {', '.join(KINDS)}.")
    if precision not in PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}.")
    path = Path(source).expanduser()
    if path.is_dir():
        source_type, source = "folder", str(path.resolve())
    elif path.is_file():
        source_type, source = "file", str(path.resolve())
    elif source.startswith(("/", "./", "~", "..")) or "\\" in source:
        raise InputError(f"{source}: no such file or folder on the studio's machine.")
    else:
        source_type = "hub"
    backend = "faster-whisper" if kind == "speech" and source_type == "folder" else ""
    return ModelSpec(
        kind=kind, source=source, source_type=source_type, precision=precision, device=ctx.device, backend=backend
    )


def build(ctx: AppContext) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    manager = ctx.manager
    gr.Markdown(msg.MODELS_INTRO)
    table = gr.Dataframe(
        headers=COLUMNS,
        value=model_rows(manager.records()),
        interactive=False,
        wrap=True,
        elem_id="models-table",
        label="Models",
    )
    with gr.Row():
        selected = gr.Dropdown(
            label="Model", choices=[], value=None, interactive=True, elem_id="models-selected", scale=3
        )
        park_btn = gr.Button("Park in RAM", elem_id="models-park", scale=1)
        unload_btn = gr.Button("Unload", variant="stop", elem_id="models-unload", scale=1)
        refresh_btn = gr.Button("Refresh", elem_id="models-refresh", scale=1)
    status = gr.Markdown(elem_id="models-status")

    with gr.Accordion("Load a model", open=True, elem_id="load-accordion"):
        gr.Markdown(msg.LOAD_HELP)
        with gr.Row():
            kind = gr.Dropdown(list(KINDS), value="chat", label="Kind", elem_id="load-kind", scale=1)
            source = gr.Dropdown(
                label="Folder, file or Hub id",
                allow_custom_value=True,
                elem_id="load-source",
                choices=[e.hub_id for e in CATALOG if e.kind == "chat"],
                value=None,
                scale=4,
            )
            default_precision = "nf4" if ctx.device == "cuda" else "fp32"
            precision = gr.Dropdown(
                list(PRECISIONS), value=default_precision, label="Precision", elem_id="load-precision", scale=1
            )
        with gr.Row():
            plan_btn = gr.Button("Show plan", elem_id="load-plan")
            load_btn = gr.Button("Load", variant="primary", elem_id="load-go")
        plan_out = gr.Markdown(elem_id="load-result")

    with gr.Accordion("Budget", open=False, elem_id="budget-accordion"):
        gr.Markdown(msg.BUDGET_HELP)
        with gr.Row():
            budget = gr.Number(
                label="Budget (GB)",
                value=round((manager.configured_budget or 0) / GIB, 2) or None,
                elem_id="budget-gb",
                info="empty = 12 GB capped by the device",
            )
            reserve = gr.Number(
                label="Reserve (GB)", value=round(manager.reserve_bytes / GIB, 2), elem_id="reserve-gb"
            )
            apply_btn = gr.Button("Apply", elem_id="budget-apply")
        budget_out = gr.Markdown(elem_id="budget-result")

    gr.Markdown("### Memory timeline")
    plot = gr.HTML(timeline.render(ctx.monitor.samples(), ctx.events.since()), elem_id="memory-timeline")
    events_table = gr.Dataframe(
        headers=EVENT_COLUMNS,
        value=timeline.event_rows(ctx.events.last(50)),
        interactive=False,
        wrap=True,
        label="Recent events",
        elem_id="models-events",
    )

    choices_seen = gr.State("")  # the dropdown is re-rendered only when its choices change (an open list stays open)

    def refresh(current: str | None, seen: str):
        records = manager.records()
        choices = [(f"{r.name} — {r.state}", r.key) for r in records]
        keys = {r.key for r in records}
        signature = repr(choices)
        if signature == seen and (current in keys or not keys):
            dropdown = gr.skip()
        else:
            value = current if current in keys else (records[0].key if records else None)
            dropdown = gr.Dropdown(choices=choices, value=value)
        return (
            model_rows(records),
            dropdown,
            timeline.render(ctx.monitor.samples(), ctx.events.since()),
            timeline.event_rows(ctx.events.last(50)),
            signature,
        )

    refresh_inputs = [selected, choices_seen]
    refresh_outputs = [table, selected, plot, events_table, choices_seen]

    @msg.user_errors
    def do_park(key: str | None, request: gr.Request) -> str:
        require_owner(ctx.security, request, "park or unload models")
        if not key:
            raise InputError(msg.SELECT_MODEL)
        name = next((r.name for r in manager.records() if r.key == key), key)
        manager.park(key)
        return msg.PARKED.format(name=name)

    @msg.user_errors
    def do_unload(key: str | None, request: gr.Request) -> str:
        require_owner(ctx.security, request, "park or unload models")
        if not key:
            raise InputError(msg.SELECT_MODEL)
        report = manager.unload(key)
        text = msg.UNLOADED.format(name=report.name, freed=fmt_bytes(report.accounted))
        return text + (msg.LEAK.format(name=report.name) if report.leaked else "")

    @msg.user_errors
    def do_plan(kind_v: str, source_v: str, precision_v: str) -> str:
        return manager.plan(spec_from_form(ctx, kind_v, source_v, precision_v)).message

    @msg.user_errors
    def do_load(
        kind_v: str,
        source_v: str,
        precision_v: str,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> str:
        require_owner(ctx.security, request, "load models by path or Hub id")
        spec = spec_from_form(ctx, kind_v, source_v, precision_v)
        plan = manager.plan(spec)
        with manager.acquire(spec):
            pass
        rec = next(r for r in manager.records() if r.key == spec.key)
        loaded = msg.LOADED.format(
            name=rec.name,
            measured=fmt_bytes(rec.measured_bytes),
            estimated=fmt_bytes(plan.estimate.weights_bytes),
            method=plan.estimate.method,
            seconds=rec.load_seconds or 0.0,
        )
        return f"{plan.message}\n\n{loaded}"

    @msg.user_errors
    def do_budget(budget_gb: float | None, reserve_gb: float | None, request: gr.Request) -> str:
        require_owner(ctx.security, request, "change the memory budget")
        if reserve_gb is None:
            raise InputError("Reserve must be a number of GB (0 or more).")
        if budget_gb is not None and budget_gb <= 0:
            raise InputError(f"Budget must be more than 0 GB, not {budget_gb:g}; leave it empty for the default.")
        if reserve_gb < 0:
            raise InputError(f"Reserve must be 0 GB or more, not {reserve_gb:g}.")
        for name, value in (("Budget", budget_gb), ("Reserve", reserve_gb)):
            if value is not None and value > MAX_GB:
                raise InputError(f"{name} must be at most {MAX_GB} GB, not {value:g}; no device has more.")
        manager.set_budget(int(budget_gb * GIB) if budget_gb else None, int(reserve_gb * GIB))
        usable = manager.budget_bytes()
        return msg.BUDGET_SET.format(
            budget=fmt_bytes(manager.configured_budget) if manager.configured_budget else "default",
            reserve=fmt_bytes(manager.reserve_bytes),
            usable=fmt_bytes(usable),
        )

    def kind_changed(kind_v: str):
        return gr.Dropdown(choices=[e.hub_id for e in CATALOG if e.kind == kind_v])

    light = {"queue": False, "show_progress": "hidden"}
    refresh_btn.click(refresh, refresh_inputs, refresh_outputs, api_name="models_list", **light)
    park_btn.click(
        do_park, [selected], [status], api_name="models_park", concurrency_id="gpu", concurrency_limit=1
    ).then(refresh, refresh_inputs, refresh_outputs, **light)
    unload_btn.click(
        do_unload, [selected], [status], api_name="models_unload", concurrency_id="gpu", concurrency_limit=1
    ).then(refresh, refresh_inputs, refresh_outputs, **light)
    plan_btn.click(
        do_plan,
        [kind, source, precision],
        [plan_out],
        api_name="models_plan",
        concurrency_id="plan",
        concurrency_limit=4,
    )
    load_btn.click(
        do_load,
        [kind, source, precision],
        [plan_out],
        api_name="models_load",
        concurrency_id="gpu",
        concurrency_limit=1,
    ).then(refresh, refresh_inputs, refresh_outputs, **light)
    apply_btn.click(
        do_budget, [budget, reserve], [budget_out], api_name="models_budget", concurrency_id="gpu", concurrency_limit=1
    ).then(refresh, refresh_inputs, refresh_outputs, **light)
    kind.change(kind_changed, [kind], [source], api_name="models_kind_sources", **light)
    timer = gr.Timer(2.0)
    timer.tick(refresh, refresh_inputs, refresh_outputs, **light)
    return {
        "table": table,
        "selected": selected,
        "park": park_btn,
        "unload": unload_btn,
        "status": status,
        "kind": kind,
        "source": source,
        "precision": precision,
        "plan": plan_btn,
        "load": load_btn,
        "load_result": plan_out,
        "budget": budget,
        "reserve": reserve,
        "apply": apply_btn,
        "timeline": plot,
        "events": events_table,
        "timer": timer,
    }
