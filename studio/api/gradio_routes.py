"""Gradio's own routes answer a call to an event the page does not have with a 404 that names it, not a 500.

Gradio finds the event by its api_name (`/gradio_api/call/NAME`, `/call/v2/NAME`, `/run/NAME`, `/api/NAME`) or by
its fn_index (`/gradio_api/queue/join`) and lets the lookup's FnIndexInferError or KeyError escape the route, which
Starlette answers with a bare "Internal Server Error". The handlers below answer those two lookups only; any
other KeyError is raised again and stays the 500 it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fastapi

GRADIO_PREFIX = "/gradio_api/"
INFO = "GET /gradio_api/info lists the actions and the values each one takes."


def register(app: fastapi.FastAPI) -> None:
    from gradio.route_utils import FnIndexInferError

    app.add_exception_handler(FnIndexInferError, unknown_event)
    app.add_exception_handler(KeyError, unknown_event)


async def unknown_event(request: fastapi.Request, exc: Exception) -> Any:
    message = unknown_event_message(request, exc)
    if message is None:
        raise exc
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message, "error": message}, status_code=404)  # Gradio's error shape


def unknown_event_message(request: fastapi.Request, exc: Exception) -> str | None:
    """The one line for a call to an event the studio does not have, or None when `exc` is something else."""
    if request.method != "POST" or not request.url.path.startswith(GRADIO_PREFIX):
        return None  # the lookups are in the POST routes; a GET's stream may have started its answer
    fns = request.app.get_blocks().fns
    api_name = request.path_params.get("api_name")
    if api_name is not None:
        if any(fn.api_name == api_name for fn in fns.values()):
            return None
        return f"This studio has no action named '{api_name[:80]}'. {INFO}"
    key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
    if isinstance(key, int) and not isinstance(key, bool) and key not in fns:
        return f"This studio has no event with fn_index {key}. {INFO}"
    return None
