"""build_app(ctx) -> gr.Blocks: the header with the live memory bar, then the workbench tabs."""

from __future__ import annotations

import gradio as gr

from studio.context import AppContext
from studio.ui import (
    chat_tab,
    export_panel,
    finetune_tab,
    image_describe,
    image_tab,
    memory_bar,
    models_tab,
    share_panel,
    speech_tab,
)
from studio.ui import messages as msg
from studio.ui.inputs import StudioBlocks

CSS = (
    memory_bar.CSS
    + models_tab.CSS
    + """
#studio-title h1 {margin: 0; font-size: 22px;}
#studio-title p {margin: 0; color: var(--body-text-color-subdued);}
/* a status line that shows a failed run: Gradio's "Error" badge sits at the right, beside the text, not over it */
#chat-stats [data-testid=status-tracker]:has(.error), #image-status [data-testid=status-tracker]:has(.error) {
  align-items: flex-end; justify-content: flex-start; padding-right: 2.75rem !important;
}
#chat-stats:has([data-testid=status-tracker] .error) [data-testid=markdown],
#image-status:has([data-testid=status-tracker] .error) [data-testid=markdown] {padding-right: 8rem;}
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
    with StudioBlocks(title=msg.TITLE, analytics_enabled=False) as app:  # a bad value sent gets a clear error
        gr.Markdown(f"# {msg.TITLE}\n{msg.SUBTITLE}", elem_id="studio-title")
        note = ctx.monitor.latest().note
        if note:
            gr.Markdown(msg.CPU_NOTICE.format(note=note), elem_id="device-note")
        sharing = share_panel.build(ctx)  # the public link and its Revoke button (only with --share)
        bar = gr.HTML(render_bar(ctx), elem_id="memory-bar")
        timer = gr.Timer(1.0)
        # never queued: the bar keeps moving while the GPU lane is busy
        timer.tick(lambda: render_bar(ctx), None, bar, queue=False, show_progress="hidden", api_name="memory_bar")
        with gr.Tabs(elem_id="studio-tabs") as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = chat_tab.build(ctx)
            with gr.Tab("Image", id="image", elem_id="tab-image"):
                image = image_tab.build(ctx)
            with gr.Tab("Speech", id="speech", elem_id="tab-speech"):
                speech = speech_tab.build(ctx)
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune"):
                finetune = finetune_tab.build(ctx)
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                models = models_tab.build(ctx)
        finetune_tab.connect_chat(ctx, finetune, chat, tabs)  # "Try in Chat" attaches the adapter there
        export_panel.connect_chat(models["export_panel"], models, models["export_source"], chat, tabs)
        chat_tab.connect_page_load(ctx, app, chat)  # lists built with the page are refreshed on every (re)load
        speech_tab.wire_send_to_chat(speech, chat["input"], tabs)  # "Send to Chat" opens the transcript there
        image_describe.wire_ask_in_chat(image, chat["images"], tabs)  # a gallery image into Chat's images
        image_tab.connect_page_load(ctx, app, image)  # a reload shows images drawn and models added since start
        finetune_tab.connect_page_load(app, finetune)  # the runs as they are now, the newest chosen and shown
        app.studio_components = {"memory_bar": bar, "memory_timer": timer, "chat": chat, "models": models}
        app.studio_components["finetune"] = finetune
        app.studio_components["sharing"] = sharing
        app.studio_components["image"] = image
        app.studio_components["speech"] = speech
    return app
