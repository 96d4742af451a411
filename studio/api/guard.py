"""The door of /v1: the API key when one is set (always when shared or listening), and the upload size limit;
and the same size limit on the bodies of Gradio's own routes.

Gradio's login covers the page and the Gradio API, not routes added beside them, so /v1 checks its own key:
`Authorization: Bearer KEY`, which is what the official `openai` client sends for `api_key=KEY`.

Gradio limits each file sent to its upload route (`max_file_size`), but reads the JSON of its other routes
(`/gradio_api/queue/join`, `/run/...`, `/call/...`) whole, whatever its size, also when it comes chunked with no
Content-Length. Those bodies get `--max-upload-mb` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fastapi

    from studio.context import AppContext

PROTECTED_PREFIX = "/v1"
UPLOAD_SUFFIX = "/upload"  # Gradio's upload route: it checks each file against max_file_size itself
BODY_METHODS = ("POST", "PUT", "PATCH")


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


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
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            headers = _headers(scope)
            refusal, too_large = self.check(headers), _too_large
        elif scope.get("method") in BODY_METHODS and not path.rstrip("/").endswith(UPLOAD_SUFFIX):
            headers = _headers(scope)
            refusal, too_large = self.check_size(headers, _too_large_plain), _too_large_plain
        else:  # a GET (the page, its files) or an upload: nothing to check here
            await self.app(scope, receive, send)
            return
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if not headers.get("content-length", "").isdigit():  # chunked: no size to check up front
            cap = BodyCap(scope, receive, send, self.policy.max_upload_bytes, too_large)
            try:
                await self.app(scope, cap.receive, cap.send)
            except Exception:
                if not cap.refused:  # after a 413 the route fails on its cut body: expected, not logged
                    raise
            return
        await self.app(scope, receive, send)

    def check_size(self, headers: dict[str, str], too_large: Any) -> Any:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_upload_bytes:
            return too_large(f"{int(length) / 1024**2:.1f} MB", self.policy.max_upload_bytes)
        return None

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
        return self.check_size(headers, _too_large)


def _too_large(size: str, limit: int) -> Any:
    return _error(
        413,
        f"The request is {size}; this studio accepts up to {limit / 1024**2:.0f} MB (--max-upload-mb).",
        "request_too_large",
    )


def _too_large_plain(size: str, limit: int) -> Any:
    """The same refusal for Gradio's routes, in the shape Gradio answers errors ({"detail": ...})."""
    from fastapi.responses import JSONResponse

    message = f"The request is {size}; this studio accepts up to {limit / 1024**2:.0f} MB (--max-upload-mb)."
    return JSONResponse({"detail": message, "error": message}, status_code=413)


class BodyCap:
    """A body sent without Content-Length (chunked), counted as it arrives: past the limit, answer 413 at once and
    tell the route the client left. Else Starlette would buffer a JSON body of any size in memory, or spool a
    multipart one to disk, before the route could look at its size."""

    def __init__(self, scope: dict, receive: Any, send: Any, limit: int, too_large: Any = _too_large) -> None:
        self.scope, self._receive, self._send, self.limit = scope, receive, send, limit
        self.too_large = too_large
        self.seen = 0
        self.refused = False  # the 413 went out; the route's own answer is dropped
        self.started = False  # the route began its answer (then a 413 cannot be sent, only the cut)

    async def receive(self) -> dict:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.refused = True
                if not self.started:
                    await self.too_large(f"over {self.limit / 1024**2:.0f} MB", self.limit)(
                        self.scope, self._receive, self._send
                    )
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: dict) -> None:
        if self.refused:
            return
        self.started = True
        await self._send(message)


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Check every /v1 request, and the size of every body sent to Gradio's routes, before the route runs."""
    app.add_middleware(V1Guard, policy=ctx.security)
