"""HTTP APIs beside the page: `serve()` launches the Gradio app with the OpenAI-compatible routes on the same server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gradio as gr

    from studio.context import AppContext


def serve(blocks: gr.Blocks, ctx: AppContext, **launch_kwargs: Any) -> Any:
    """`blocks.launch(**launch_kwargs)` with /v1/... served by the same server (and so through --share too).

    Gradio's own Server mode does the same: it builds a `gradio.routes.App` (a FastAPI app), adds its routes, and
    hands it to `launch(_app=...)`, which adds Gradio's routes after ours. `_app` is private in Gradio 6; a test
    (tests/integration/test_openai_api.py) catches a Gradio that stops honouring it.
    """
    from gradio.routes import App

    from studio.api import openai

    app = App()
    openai.register(app, ctx)
    return blocks.launch(_app=app, **launch_kwargs)
