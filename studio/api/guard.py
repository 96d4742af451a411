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


class V1Guard:
    """Plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which hides a client's disconnect from the
    route, and the chat route needs it to stop a reply whose client left)."""

    def __init__(self, app: Any, policy: Any) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            refusal = self.check(headers)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, headers: dict[str, str]) -> Any:
        policy = self.policy
        if not policy.api_key_ok(headers.get("authorization")):
            given = bool(headers.get("authorization"))
            return _error(
                401,
                ("Incorrect API key." if given else "This studio's API needs an API key.")
                + " Send it as 'Authorization: Bearer KEY' (the openai client's api_key); the owner finds it "
                "in the console where the studio started, or sets it with --api-key.",
                "invalid_api_key",
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > policy.max_upload_bytes:
            return _error(
                413,
                f"The request is {int(length) / 1024**2:.1f} MB; this studio accepts up to "
                f"{policy.max_upload_bytes / 1024**2:.0f} MB (--max-upload-mb).",
                "request_too_large",
            )
        return None


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Check every /v1 request before its route runs."""
    app.add_middleware(V1Guard, policy=ctx.security)
