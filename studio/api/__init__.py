"""HTTP APIs beside the page: `serve()` launches the Gradio app with the OpenAI-compatible and AUTOMATIC1111 routes on the same server."""

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

    from studio.api import audio, embeddings, gradio_routes, guard, images, openai, sdapi

    # FastAPI's /openapi.json lists every route to anyone: with a login, there is no such list (Gradio's own
    # /gradio_api/info stays behind the login)
    app = App(openapi_url=None) if ctx.security.login else App()
    guard.register(app, ctx)  # the API key and upload limit, before any /v1 route
    openai.register(app, ctx)
    embeddings.register(app, ctx)  # /v1/embeddings: embedding models and the chat models, on the same lane
    images.register(app, ctx)
    sdapi.register(app, ctx)  # AUTOMATIC1111's /sdapi/v1 on the same engine, lane and key
    audio.register(app, ctx)
    gradio_routes.register(app)  # an unknown api_name or fn_index: a 404 naming it, not Gradio's 500
    share = launch_kwargs.pop("share", False)
    launch_kwargs.setdefault("max_file_size", ctx.security.max_upload_bytes)
    if not share:
        return blocks.launch(_app=app, **launch_kwargs)
    # launched locally first; the public link is opened beside it, so its failure is one line, not a crash
    from studio.sharing import ShareLink

    ctx.sharing = ctx.sharing or ShareLink()
    return_at_once = launch_kwargs.pop("prevent_thread_lock", False)
    launch_kwargs["quiet"] = True  # Gradio would advise `share=True`; the studio prints its own lines
    result = blocks.launch(_app=app, prevent_thread_lock=True, **launch_kwargs)
    print(f"* Running on local URL:  {blocks.local_url}", flush=True)
    ctx.sharing.start(blocks)
    if not return_at_once:
        blocks.block_thread()
    return result
