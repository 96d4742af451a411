"""The sharing line under the title: the public link, when it expires, and a button that revokes it."""

from __future__ import annotations

import gradio as gr

from studio.context import AppContext
from studio.security import require_owner
from studio.ui import messages as msg


def status_text(ctx: AppContext) -> str:
    link = ctx.sharing
    if link is None:
        return ""
    return f"**Sharing.** {link.state.line()}"


def build(ctx: AppContext) -> dict[str, gr.components.Component]:
    """Only when the studio was started with --share; otherwise nothing is added to the page."""
    if ctx.sharing is None:
        return {}
    with gr.Row(elem_id="share-row"):
        status = gr.Markdown(status_text(ctx), elem_id="share-status")
        revoke = gr.Button("Revoke public link", variant="stop", size="sm", elem_id="share-revoke", scale=0)

    def refresh():
        live = ctx.sharing.state.status in ("live", "starting")
        return status_text(ctx), gr.Button(visible=live)

    @msg.user_errors
    def do_revoke(request: gr.Request):
        require_owner(ctx.security, request, "revoke the public link")
        ctx.sharing.revoke()
        return refresh()

    timer = gr.Timer(2.0)
    timer.tick(refresh, None, [status, revoke], queue=False, show_progress="hidden")
    revoke.click(
        do_revoke, None, [status, revoke], api_name="share_revoke", concurrency_id="ui", concurrency_limit=None
    )
    return {"status": status, "revoke": revoke, "timer": timer}
