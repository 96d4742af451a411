"""The door of /v1: the API key when one is set (always when shared or listening), and the upload size limit.

Gradio's login covers the page and the Gradio API, not routes added beside them, so /v1 checks its own key:
`Authorization: Bearer KEY`, which is what the official `openai` client sends for `api_key=KEY`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fastapi

    from studio.context import AppContext

PROTECTED_PREFIX = "/v1"


def _error(status: int, message: str, code: str) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Check every /v1 request before its route runs."""
    policy = ctx.security

    @app.middleware("http")
    async def v1_guard(request, call_next):  # noqa: ANN001 - Starlette's middleware signature
        path = request.url.path
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            if not policy.api_key_ok(request.headers.get("authorization")):
                given = bool(request.headers.get("authorization"))
                return _error(
                    401,
                    ("Incorrect API key." if given else "This studio's API needs an API key.")
                    + " Send it as 'Authorization: Bearer KEY' (the openai client's api_key); the owner finds it "
                    "in the console where the studio started, or sets it with --api-key.",
                    "invalid_api_key",
                )
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > policy.max_upload_bytes:
                return _error(
                    413,
                    f"The request is {int(length) / 1024**2:.1f} MB; this studio accepts up to "
                    f"{policy.max_upload_bytes / 1024**2:.0f} MB (--max-upload-mb).",
                    "request_too_large",
                )
        return await call_next(request)
