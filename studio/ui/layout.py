"""build_app(ctx) -> gr.Blocks: the header with the live memory bar, then the workbench tabs."""

from __future__ import annotations

import gradio as gr

from studio.context import AppContext
from studio.ui import chat_tab, memory_bar, models_tab
from studio.ui import messages as msg

CSS = (
    memory_bar.CSS
    + """
#studio-title h1 {margin: 0; font-size: 22px;}
#studio-title p {margin: 0; color: var(--body-text-color-subdued);}
"""
)


def render_bar(ctx: AppContext) -> str:
    """The memory bar from the monitor's latest snapshot: cheap, never waits for a model load."""
    manager = ctx.manager
    return memory_bar.render(
        ctx.monitor.latest(),
        manager.records(),
        budget=manager.budget_bytes(),
        accounted=manager.accounted_bytes(),
        reservations=[(r.owner, n) for r, n in manager.reservations()],
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    """The whole page. Each tab module lays itself out and returns its components."""
    with gr.Blocks(title=msg.TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {msg.TITLE}\n{msg.SUBTITLE}", elem_id="studio-title")
        note = ctx.monitor.latest().note
        if note:
            gr.Markdown(msg.CPU_NOTICE.format(note=note), elem_id="device-note")
        bar = gr.HTML(render_bar(ctx), elem_id="memory-bar")
        timer = gr.Timer(1.0)
        # never queued: the bar keeps moving while the GPU lane is busy
        timer.tick(lambda: render_bar(ctx), None, bar, queue=False, show_progress="hidden", api_name="memory_bar")
        with gr.Tabs(elem_id="studio-tabs"):
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = chat_tab.build(ctx)
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                models = models_tab.build(ctx)
        app.studio_components = {"memory_bar": bar, "memory_timer": timer, "chat": chat, "models": models}
    return app
