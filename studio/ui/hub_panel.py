"""Download a Hugging Face Hub model from the page: a row under a model picker that offers **Download** when the
picked Hub id is not in the cache, shows the download's bytes of its total (polled every second, so a reloaded page
sees a running download too), **Cancel**, and a failure's reason. The Models tab and the Chat tab each have one.
Downloads are the owner's: a remote visitor of a shared studio gets no row and is refused (--allow-remote-admin
allows it)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.errors import InputError, ModelLoadError
from studio.models.hub_download import DownloadStatus
from studio.models.specs import ModelSpec
from studio.security import request_facts, require_owner
from studio.text import fmt_bytes
from studio.ui import messages as msg

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
POLL_S = 1.0
LIGHT = {"queue": False, "show_progress": "hidden"}
QUEUED = {"concurrency_id": "download", "concurrency_limit": None, "show_progress": "hidden"}  # errors reach the page


def hub_id(value: str | None) -> str | None:
    """`value` if it names a Hub repository (owner/name, not a folder or file here), else None."""
    value = (value or "").strip()
    if not HUB_ID.match(value) or Path(value).expanduser().exists():
        return None
    return value


def not_downloaded(ctx: AppContext, spec: ModelSpec, error: ModelLoadError) -> ModelLoadError:
    """Why a Hub id whose size is unknown (not downloaded) cannot be planned, with what to do: offline, the Hub
    out of reach, or reachable (then Download). Anything but a Hub id keeps its own error."""
    from studio.models.hub import OFFLINE_TIP, hub_unreachable, no_network_tip

    if spec.source_type != "hub":
        return error
    if ctx.config.offline:
        return ModelLoadError(
            f"{spec.source} is not downloaded yet and the studio runs offline (--offline).", OFFLINE_TIP
        )
    why = hub_unreachable()
    if why:
        return ModelLoadError(
            f"{spec.source} is not downloaded yet and the Hugging Face Hub is out of reach: {why}.",
            no_network_tip(why),
        )
    return ModelLoadError(
        f"{spec.source} is not downloaded yet; the Hugging Face Hub is reachable.",
        f"Press Download beside the model (or run `hf download {spec.source}`); Load then reads it from the cache.",
    )


def describe(status: DownloadStatus, next_step: str) -> str:
    """One line for the page: where the download stands."""
    done, total = fmt_bytes(status.done_bytes), fmt_bytes(status.total_bytes) if status.total_bytes else "?"
    if status.state == "checking":
        return msg.DOWNLOAD_CHECKING.format(repo=status.repo)
    if status.state == "downloading":
        pct = 100 * status.done_bytes / status.total_bytes if status.total_bytes else 0
        return msg.DOWNLOAD_RUNNING.format(repo=status.repo, done=done, total=total, pct=pct, files=status.files)
    if status.state == "done":
        return msg.DOWNLOAD_DONE.format(repo=status.repo, total=total, files=status.files, next=next_step)
    if status.state == "cancelled":
        return msg.DOWNLOAD_CANCELLED.format(repo=status.repo, done=done, total=total)
    return msg.DOWNLOAD_FAILED.format(message=status.message)


class HubPanel:
    """The download row's handlers, on the picker's two widgets (the Models tab's kind and source, the Chat tab's
    model and precision): `source_of(first, second)` is the text to download; `next_step` says what to do once it
    is here ("Press Load.")."""

    def __init__(
        self,
        ctx: AppContext,
        next_step: str,
        source_of: Callable[[Any, Any], str | None],
        plan: Callable[..., str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.downloads = ctx.downloads
        self.next_step = next_step
        self.source_of = source_of
        self.plan = plan  # the tab's plan line, on its three form widgets: planned again once a download is here

    def may_download(self, request: Any) -> bool:
        policy = self.ctx.security
        return policy.allow_remote_admin or not policy.is_remote(*request_facts(request))

    def offer(self, first: Any, second: Any, request: gr.Request = None) -> tuple:
        """The picker changed: (the row shown or hidden, its line, the poll timer on or off)."""
        repo = hub_id(self.source_of(first, second))
        if repo is None or not self.may_download(request):
            return gr.Row(visible=False), "", gr.Timer(active=False)
        status = self.downloads.status(repo)
        if status is not None:
            return gr.Row(visible=True), describe(status, self.next_step), gr.Timer(active=status.running)
        if self.downloads.is_downloaded(repo):
            return gr.Row(visible=False), "", gr.Timer(active=False)
        return gr.Row(visible=True), msg.DOWNLOAD_OFFER.format(repo=repo), gr.Timer(active=False)

    @msg.user_errors
    def start(self, first: Any, second: Any, request: gr.Request = None) -> tuple:
        """Download: start it in the background; (its line, the poll timer on)."""
        require_owner(self.ctx.security, request, "download models")
        value = self.source_of(first, second)
        repo = hub_id(value)
        if repo is None:
            raise InputError(msg.DOWNLOAD_NOT_HUB_ID.format(value=(value or "").strip()))
        now = self.downloads.status(repo)
        if (now is None or not now.running) and self.downloads.is_downloaded(repo):
            return msg.DOWNLOAD_ALREADY.format(repo=repo, next=self.next_step), gr.Timer(active=False), repo
        status = self.downloads.start(repo)
        return describe(status, self.next_step), gr.Timer(active=True), ""

    def poll(self, first: Any, second: Any) -> tuple:
        """Every second while a download runs: (its line, the timer on while it runs, the repo once it is done)."""
        repo = hub_id(self.source_of(first, second))
        status = self.downloads.status(repo) if repo else None
        if status is None:
            return gr.skip(), gr.Timer(active=False), gr.skip()
        done = f"{repo}@{status.finished}" if status.state == "done" else gr.skip()
        return describe(status, self.next_step), gr.Timer(active=status.running), done

    def replan(self, done: str, planned: str, a: Any, b: Any, c: Any, request: gr.Request = None) -> tuple:
        """After each poll: the tab's plan line again, once, when a download has just finished (its size is known
        now); (the plan line, what was planned)."""
        if not done or done == planned or self.plan is None:
            return gr.skip(), planned
        return self.plan(a, b, c, request=request), done

    @msg.user_errors
    def cancel(self, first: Any, second: Any, request: gr.Request = None) -> str:
        """Cancel: the download stops after the chunk it is writing (the poll then says so)."""
        require_owner(self.ctx.security, request, "download models")
        repo = hub_id(self.source_of(first, second)) or ""
        status = self.downloads.cancel(repo)
        if status is None or not status.running:
            return msg.DOWNLOAD_NOTHING.format(repo=repo or "this model")
        return describe(status, self.next_step)


def layout(prefix: str) -> dict[str, Any]:
    """The row (hidden until a Hub id not downloaded yet is picked), by name."""
    w: dict[str, Any] = {}
    with gr.Row(visible=False, elem_id=f"{prefix}-download-row") as row:
        w["status"] = gr.Markdown(elem_id=f"{prefix}-download-status")
        w["start"] = gr.Button("Download", variant="primary", elem_id=f"{prefix}-download", scale=0, min_width=120)
        w["cancel"] = gr.Button("Cancel download", elem_id=f"{prefix}-download-cancel", scale=0, min_width=160)
    w["row"] = row
    w["timer"] = gr.Timer(POLL_S, active=False)
    w["done"] = gr.State("")  # "repo@time" once a download ends well: the tab re-plans
    w["planned"] = gr.State("")  # the `done` the plan line was last refreshed for
    return w


def wire(panel: HubPanel, w: dict[str, Any], inputs: list, prefix: str, plan_form: list, plan_out: Any) -> None:
    """The row's events; `inputs` are the picker's two widgets (they feed `source_of`), `plan_form` the three
    widgets of the tab's plan, `plan_out` its plan line."""
    changed = [c for c in inputs if hasattr(c, "change")]
    for c in changed:
        c.change(panel.offer, inputs, [w["row"], w["status"], w["timer"]], api_visibility="private", **LIGHT)
    replan = {
        "fn": panel.replan,
        "inputs": [w["done"], w["planned"], *plan_form],
        "outputs": [plan_out, w["planned"]],
        "api_visibility": "private",
        **LIGHT,
    }
    w["start"].click(
        panel.start, inputs, [w["status"], w["timer"], w["done"]], api_name=f"{prefix}_download", **QUEUED
    ).success(**replan)
    w["cancel"].click(panel.cancel, inputs, [w["status"]], api_name=f"{prefix}_download_cancel", **QUEUED)
    w["timer"].tick(panel.poll, inputs, [w["status"], w["timer"], w["done"]], api_visibility="private", **LIGHT).then(
        **replan
    )
