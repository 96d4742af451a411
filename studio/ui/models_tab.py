"""The Models tab: what the manager holds, park/unload, budget and reserve, a load form, the memory timeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from studio.config import GIB, MAX_KEEP_ALIVE_MIN
from studio.context import AppContext
from studio.engines import llamacpp
from studio.errors import InputError, ModelLoadError
from studio.models.leases import Reservation
from studio.models.records import FreeReport, ModelRecord
from studio.models.specs import CATALOG, KINDS, PRECISIONS, ModelSpec, spec_from_form
from studio.security import require_owner
from studio.text import fmt_bytes, fmt_idle
from studio.ui import export_panel, hub_panel, timeline
from studio.ui import messages as msg

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
    "Idle unload",
    "Key",
]
EVENT_COLUMNS = ["Time", "Event", "Model", "Size", "Detail"]
# headers stay on one line (a long key used to squeeze them to "I n u s e"); a wide table scrolls sideways
CSS = """
#models-table th, #models-table th *, #models-events th, #models-events th * {
  white-space: nowrap !important; word-break: keep-all !important; overflow-wrap: normal !important;}
"""


def budget_value(ctx: AppContext) -> float:
    """The budget field: the configured budget in GB, else the default's figure (a Number shows an empty value as
    0, which would read as no budget at all)."""
    return round((ctx.manager.configured_budget or ctx.manager.default_budget()) / GIB, 2)


def budget_hint(ctx: AppContext) -> str:
    """The budget field's hint: the default, in GB, and where it comes from."""
    where = "12 GB capped by the device" if ctx.device == "cuda" else "12 GB capped at 75% of the RAM"
    return f"default {round(ctx.manager.default_budget() / GIB, 2):g} GB here ({where}); empty = the default"


def _ago(t: float) -> str:
    if not t:
        return "never"
    s = max(0, time.time() - t)
    return f"{s:.0f} s ago" if s < 90 else f"{s / 60:.0f} min ago" if s < 5400 else f"{s / 3600:.1f} h ago"


def _idle(r: ModelRecord) -> str:
    """The idle time after which the model is parked or unloaded: '5 min (default)', '30 s', 'never'."""
    text = fmt_idle(r.keep_alive) if r.keep_alive > 0 else "never"
    return f"{text} (default)" if r.keep_alive_default else text


def reservation_rows(reservations: list[tuple[Reservation, int]]) -> list[list[str]]:
    """Memory set aside for another process (a fine-tune worker), as the bar shows it: a row of its own."""
    return [
        [
            r.owner,
            "reservation",
            "—",
            "—",
            "reserved",
            fmt_bytes(r.nbytes),
            "—",
            fmt_bytes(n),
            "",
            _ago(r.created),
            "—",
            "",
        ]
        for r, n in reservations
    ]


def model_rows(records: list[ModelRecord], reservations: list[tuple[Reservation, int]] = ()) -> list[list[str]]:
    return [
        [
            r.name,
            r.kind,
            r.engine or r.precision,
            r.device,
            r.state,
            fmt_bytes(r.estimated_bytes),
            fmt_bytes(r.measured_bytes),
            fmt_bytes(r.accounted_bytes) if r.accounted_bytes else "—",
            str(r.leases) if r.leases else "",
            _ago(r.last_used),
            _idle(r),
            r.key,
        ]
        for r in records
    ] + reservation_rows(list(reservations))


def freed_bytes(report: FreeReport) -> int:
    """What unloading gave back, as the event log says it: what the probe saw come back when it could tell (a
    parked model is no longer accounted on the device, but its RAM comes back), else what was accounted."""
    return report.observed if report.observed is not None else report.accounted


class ModelsTab:
    """The Models tab's handlers: the manager's list, park/unload, plan and load by name, the budget."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.manager = ctx.manager

    def refresh(self, current: str | None, seen: str) -> tuple:
        """The table, the picker (re-rendered only when its choices change: an open list stays open), the timeline."""
        records = self.manager.records()
        choices = [(f"{r.name} — {r.state}", r.key) for r in records]
        keys = {r.key for r in records}
        signature = repr(choices)
        if signature == seen and (current in keys or not keys):
            dropdown = gr.skip()
        else:
            value = current if current in keys else (records[0].key if records else None)
            dropdown = gr.Dropdown(choices=choices, value=value)
        return (
            model_rows(records, self.manager.reservations()),
            dropdown,
            timeline.render(self.ctx.monitor.samples(), self.ctx.events.since()),
            timeline.event_rows(self.ctx.events.last(50)),
            signature,
        )

    @msg.user_errors
    def park(self, key: str | None, request: gr.Request = None) -> str:
        require_owner(self.ctx.security, request, "park or unload models")
        if not key:
            raise InputError(msg.SELECT_MODEL)
        rec = self.manager.record(key)
        self.manager.park(key)
        return msg.PARKED.format(name=rec.name if rec is not None else key)

    @msg.user_errors
    def unload(self, key: str | None, request: gr.Request = None) -> str:
        require_owner(self.ctx.security, request, "park or unload models")
        if not key:
            raise InputError(msg.SELECT_MODEL)
        report = self.manager.unload(key)
        text = msg.UNLOADED.format(name=report.name, freed=fmt_bytes(freed_bytes(report)))
        return text + (msg.LEAK.format(name=report.name) if report.leaked else "")

    @msg.user_errors
    def set_keep_alive(self, key: str | None, minutes: float | None, request: gr.Request = None) -> str:
        """The picked model's idle time in minutes: empty = the studio's --keep-alive, 0 = never."""
        require_owner(self.ctx.security, request, "park or unload models")
        if not key:
            raise InputError(msg.SELECT_MODEL)
        if minutes is not None and not 0 <= minutes <= MAX_KEEP_ALIVE_MIN:
            raise InputError(msg.KEEP_ALIVE_RANGE.format(most=MAX_KEEP_ALIVE_MIN, minutes=minutes))
        self.manager.set_keep_alive(key, None if minutes is None else minutes * 60)
        rec = self.manager.record(key)
        return msg.KEEP_ALIVE_SET.format(name=rec.name, idle=_idle(rec))

    @msg.user_errors
    def plan(self, kind: str, source: str, precision: str, request: gr.Request = None) -> str:
        # before the path is looked at: a remote visitor learns nothing of the server's files from the answer
        require_owner(self.ctx.security, request, "load models by path or Hub id")
        spec = self.form_spec(kind, source, precision)
        fallback = llamacpp.fallback_notice(spec)
        engine = f"Engine: {llamacpp.engine_label(spec)}. " if spec.kind == "chat" else ""
        try:
            planned = self.manager.plan(spec).message
        except ModelLoadError as exc:
            raise self.not_downloaded(spec, exc) from None
        return engine + planned + (f" {fallback}" if fallback else "")

    def not_downloaded(self, spec: ModelSpec, error: ModelLoadError) -> ModelLoadError:
        """Why a Hub id whose size is unknown (not downloaded) cannot be planned, with what to do: offline, the Hub
        out of reach, or reachable (then Download). Anything but a Hub id keeps its own error."""
        return hub_panel.not_downloaded(self.ctx, spec, error)

    def form_spec(self, kind: str, source: str, precision: str) -> ModelSpec:
        """The load form's model. Precision auto: llama.cpp for a GGUF chat model, else the device's default
        (nf4 on CUDA, fp32 on the CPU, which each kind's loader adapts)."""
        if kind == "chat":
            return llamacpp.chat_spec(self.ctx.device, source, precision)
        if precision == llamacpp.AUTO:
            precision = "nf4" if self.ctx.device == "cuda" else "fp32"
        return spec_from_form(self.ctx.device, kind, source, precision)

    @msg.user_errors
    def load(
        self,
        kind: str,
        source: str,
        precision: str,
        request: gr.Request = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - a model not downloaded yet shows its download
    ) -> str:
        require_owner(self.ctx.security, request, "load models by path or Hub id")
        spec = self.form_spec(kind, source, precision)
        engines = {"chat": self.ctx.chat, "vision": self.ctx.chat, "image": self.ctx.image, "speech": self.ctx.speech}
        engine = engines.get(spec.kind)
        if engine is self.ctx.image:
            self.ctx.image.prepare(spec)
        try:
            plan = self.manager.plan(spec)
        except ModelLoadError as exc:
            raise self.not_downloaded(spec, exc) from None
        rec = engine.load(spec) if engine is not None else self.manager.load(spec)  # a chat model gets its adapters
        loaded = msg.LOADED.format(
            name=rec.name,
            measured=fmt_bytes(rec.measured_bytes),
            estimated=fmt_bytes(plan.estimate.weights_bytes),
            method=plan.estimate.method,
            seconds=rec.load_seconds or 0.0,
        )
        return f"{plan.message}\n\n{loaded}"

    @msg.user_errors
    def set_budget(self, budget_gb: float | None, reserve_gb: float | None, request: gr.Request = None) -> str:
        require_owner(self.ctx.security, request, "change the memory budget")
        if reserve_gb is None:
            raise InputError(msg.RESERVE_MISSING)
        if budget_gb is not None and budget_gb <= 0:
            raise InputError(f"Budget must be more than 0 GB, not {budget_gb:g}; leave it empty for the default.")
        if reserve_gb < 0:
            raise InputError(f"Reserve must be 0 GB or more, not {reserve_gb:g}.")
        for name, value in (("Budget", budget_gb), ("Reserve", reserve_gb)):
            if value is not None and value > MAX_GB:
                raise InputError(f"{name} must be at most {MAX_GB} GB, not {value:g}; no device has more.")
        if budget_gb is not None and budget_gb == round(self.manager.default_budget() / GIB, 2):
            budget_gb = None  # the default's figure as the field shows it: the default (it follows the device)
        self.manager.set_budget(int(budget_gb * GIB) if budget_gb else None, int(reserve_gb * GIB))
        return msg.BUDGET_SET.format(
            budget=fmt_bytes(self.manager.configured_budget) if self.manager.configured_budget else "default",
            reserve=fmt_bytes(self.manager.reserve_bytes),
            usable=fmt_bytes(self.manager.budget_bytes()),
        )

    def kind_changed(self, kind: str) -> gr.Dropdown:
        return gr.Dropdown(choices=[e.hub_id for e in CATALOG if e.kind == kind])


def download_source(kind: str, source: str | None) -> str | None:
    """What the load form's Download fetches: its Hub id (Whisper's names are not Hub ids)."""
    return None if kind == "speech" else source


def export_sources(ctx: AppContext) -> list[tuple[str, str]]:
    """What the Models tab offers to export: the chat models that are transformers folders or Hub ids (a GGUF file
    is an export already)."""
    from studio.ui.chat_tab import model_choices

    return [(label, value) for label, value in model_choices(ctx) if not value.lower().endswith(".gguf")]


def export_source(value: str | None) -> str:
    """The picker's value as `python -m studio.export` takes it (the starter is the word `starter`)."""
    from studio.ui.chat_tab import STARTER_PREFIX

    value = (value or "").strip()
    if not value:
        raise InputError(msg.PICK_MODEL.format(what="a model to export"))
    if value.startswith(STARTER_PREFIX):
        return "starter"
    from studio.export.sources import resolve

    resolve(value, Path("."))  # checked here first: no such folder, a file, an architecture not covered
    return value


def layout(ctx: AppContext) -> dict[str, Any]:
    """The tab's widgets, by name."""
    manager = ctx.manager
    gr.Markdown(msg.MODELS_INTRO)
    table = gr.Dataframe(
        headers=COLUMNS,
        value=model_rows(manager.records(), manager.reservations()),
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
    with gr.Row():
        keep_alive = gr.Number(
            label="Idle unload (minutes)",
            value=None,
            elem_id="models-keep-alive",
            info=msg.KEEP_ALIVE_INFO,
            scale=3,
        )
        keep_alive_btn = gr.Button("Set idle time", elem_id="models-keep-alive-set", scale=1)
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
            precision = gr.Dropdown(
                [llamacpp.AUTO, *PRECISIONS],
                value=llamacpp.AUTO,
                label="Precision (auto: llama.cpp for GGUF chat models)",
                elem_id="load-precision",
                scale=1,
            )
        with gr.Row():
            plan_btn = gr.Button("Show plan", elem_id="load-plan")
            load_btn = gr.Button("Load", variant="primary", elem_id="load-go")
        download_w = hub_panel.layout("models")  # Download, for a Hub id not in the cache yet
        plan_out = gr.Markdown(elem_id="load-result")

    export_w: dict[str, Any] = {}
    with gr.Accordion("Export a chat model to GGUF / Ollama", open=False, elem_id="export-accordion"):
        gr.Markdown(msg.EXPORT_HELP)
        export_w["export_source"] = gr.Dropdown(
            choices=export_sources(ctx),
            value=None,
            allow_custom_value=True,
            label="Model (the starter, a model folder, or a Hub id already downloaded)",
            elem_id="models-export-source",
        )
        export_panel.layout(export_w, "models", for_run=False)

    with gr.Accordion("Budget", open=False, elem_id="budget-accordion"):
        gr.Markdown(msg.BUDGET_HELP)
        with gr.Row():
            budget = gr.Number(
                label="Budget (GB)",
                value=budget_value(ctx),
                elem_id="budget-gb",
                info=budget_hint(ctx),
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
    choices_seen = gr.State("")  # the picker's choices as last sent
    return {
        "table": table,
        "selected": selected,
        "park": park_btn,
        "unload": unload_btn,
        "refresh": refresh_btn,
        "keep_alive": keep_alive,
        "keep_alive_set": keep_alive_btn,
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
        "budget_result": budget_out,
        "timeline": plot,
        "events": events_table,
        "choices_seen": choices_seen,
        "download": download_w,
        **export_w,
    }


def wire(tab: ModelsTab, w: dict[str, Any]) -> None:
    """The tab's events; every change is followed by a refresh of the list."""
    light = {"queue": False, "show_progress": "hidden"}
    gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}
    refresh_inputs = [w["selected"], w["choices_seen"]]
    refresh_outputs = [w["table"], w["selected"], w["timeline"], w["events"], w["choices_seen"]]
    w["refresh"].click(tab.refresh, refresh_inputs, refresh_outputs, api_name="models_list", **light)
    w["park"].click(tab.park, [w["selected"]], [w["status"]], api_name="models_park", **gpu).then(
        tab.refresh, refresh_inputs, refresh_outputs, **light
    )
    w["unload"].click(tab.unload, [w["selected"]], [w["status"]], api_name="models_unload", **gpu).then(
        tab.refresh, refresh_inputs, refresh_outputs, **light
    )
    w["keep_alive_set"].click(  # queued, as an error's message reaches the page only through the queue
        tab.set_keep_alive, [w["selected"], w["keep_alive"]], [w["status"]], api_name="models_keep_alive"
    ).then(tab.refresh, refresh_inputs, refresh_outputs, **light)
    form = [w["kind"], w["source"], w["precision"]]
    planning = {"concurrency_id": "plan", "concurrency_limit": 4}
    w["plan"].click(tab.plan, form, [w["load_result"]], api_name="models_plan", **planning)
    w["load"].click(tab.load, form, [w["load_result"]], api_name="models_load", **gpu).then(
        tab.refresh, refresh_inputs, refresh_outputs, **light
    )
    budget = [w["budget"], w["reserve"]]
    w["apply"].click(tab.set_budget, budget, [w["budget_result"]], api_name="models_budget", **gpu).then(
        tab.refresh, refresh_inputs, refresh_outputs, **light
    )
    w["kind"].change(tab.kind_changed, [w["kind"]], [w["source"]], api_name="models_kind_sources", **light)
    downloads = hub_panel.HubPanel(tab.ctx, msg.DOWNLOAD_NEXT_MODELS, download_source, tab.plan)
    hub_panel.wire(downloads, w["download"], form[:2], "models", form, w["load_result"])
    export_panel.wire(w["export_panel"], w, w["export_source"], "models")
    w["timer"] = gr.Timer(2.0)
    w["timer"].tick(tab.refresh, refresh_inputs, refresh_outputs, **light)


def build(ctx: AppContext) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    tab = ModelsTab(ctx)
    w = layout(ctx)
    w["export_panel"] = export_panel.ExportPanel(ctx, export_panel.ExportRunner(ctx), export_source, for_run=False)
    wire(tab, w)
    w["tab"] = tab
    return w
