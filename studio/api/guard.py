"""The door of /v1 and /sdapi: which web pages may call them, the API key when one is set (always when shared or
listening), JSON bodies sent as JSON, and the upload size limit; the same size limit on the bodies of Gradio's own
routes; and a lockout for clients that keep guessing the page's password or the API key.

Gradio's login covers the page and the Gradio API, not routes added beside them, so /v1 checks its own key:
`Authorization: Bearer KEY`, which is what the official `openai` client sends for `api_key=KEY`.

Locally there is no key, so any web page the owner visits could post to 127.0.0.1:7860. A browser always sends
`Origin` with such a request, and it can send a body without asking first (no CORS preflight) only as text/plain,
a form or multipart: so a request whose Origin is not the studio's own is refused (403), and a JSON route takes
only `Content-Type: application/json` (415), which a foreign page cannot send without a preflight that the Origin
check refuses. curl and the openai client send no Origin. The same idea as Ollama's and text-generation-webui's
default of localhost origins only.

Gradio limits each file sent to its upload route (`max_file_size`), but reads the JSON of its other routes
(`/gradio_api/queue/join`, `/run/...`, `/call/...`) whole, whatever its size, also when it comes chunked with no
Content-Length. Those bodies get `--max-upload-mb` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.security import FailureLimiter, client_key

if TYPE_CHECKING:
    import fastapi

    from studio.context import AppContext

PROTECTED_PREFIXES = ("/v1", "/sdapi")
FORM_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")  # multipart; every other POST there is JSON
# POSTs that read no body, which A1111 clients send with no Content-Type (webuiapi's interrupt): no body to mistype
BODYLESS_ROUTES = ("/sdapi/v1/interrupt", "/sdapi/v1/refresh-checkpoints")
LOGIN_PATH = "/login"  # Gradio's login form: a wrong password answers 400
UPLOAD_SUFFIX = "/upload"  # Gradio's upload route: it checks each file against max_file_size itself
BODY_METHODS = ("POST", "PUT", "PATCH")


def _protected(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTECTED_PREFIXES)


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    headers = {"WWW-Authenticate": "Bearer", **(headers or {})} if status == 401 else headers
    return JSONResponse(body, status_code=status, headers=headers)


def _plain_error(status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> Any:
    """A refusal in the shape Gradio's routes and AUTOMATIC1111's /sdapi answer errors ({"detail": ...})."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message, "error": message}, status_code=status, headers=headers)


def _scheme(scope: dict, headers: dict[str, str]) -> str:
    """The scheme the browser used: a proxy that ends TLS says so in X-Forwarded-Proto (a foreign page cannot set
    that header without a preflight, which its Origin fails)."""
    forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded if forwarded in ("http", "https") else scope.get("scheme", "http")


class V1Guard:
    """Plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which hides a client's disconnect from the
    route, and the chat route needs it to stop a reply whose client left)."""

    def __init__(self, app: Any, policy: Any, failures: FailureLimiter | None = None) -> None:
        self.app = app
        self.policy = policy
        self.failures = failures or FailureLimiter()  # wrong passwords and API keys, per client, bounded

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method")
        if _protected(path):
            headers = _headers(scope)
            refusal, too_large = self.check(scope, headers), _too_large
            if path.startswith("/sdapi"):
                too_large = _too_large_plain
        elif method == "POST" and path.rstrip("/") == LOGIN_PATH:
            headers = _headers(scope)
            key = client_key(_client_host(scope), headers)
            refusal, too_large = self.locked_out(key, _plain_error), _too_large_plain
            if refusal is None:
                refusal = self.check_size(headers, _too_large_plain)
            send = self.count_failures(key, send)
        elif method in BODY_METHODS and not path.rstrip("/").endswith(UPLOAD_SUFFIX):
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

    def count_failures(self, key: str, send: Any) -> Any:
        """`send`, counting a refused login (Gradio answers a wrong password with 400) against `key`."""

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start" and message.get("status") in (400, 401):
                self.failures.failed(key)
            await send(message)

        return counted

    def locked_out(self, key: str, refuse: Any) -> Any:
        """A 429 with Retry-After while `key` is locked out after too many wrong passwords or keys."""
        wait = self.failures.retry_after(key)
        if not wait:
            return None
        return refuse(
            429,
            f"Too many wrong passwords or API keys from this client; try again in {wait} s.",
            "too_many_failures",
            {"Retry-After": str(wait)},
        )

    def check_size(self, headers: dict[str, str], too_large: Any) -> Any:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_upload_bytes:
            return too_large(f"{int(length) / 1024**2:.1f} MB", self.policy.max_upload_bytes)
        return None

    def check(self, scope: dict, headers: dict[str, str]) -> Any:
        """The refusal for a /v1 or /sdapi request, or None: a foreign page, a client locked out, a wrong key, a JSON
        route sent something else, a body over the limit; in that order."""
        policy, path = self.policy, scope.get("path", "")
        refuse = _plain_error if path.startswith("/sdapi") else _error
        origin = headers.get("origin")
        if not policy.origin_ok(origin, headers.get("host"), _scheme(scope, headers)):
            return refuse(
                403,
                f"Requests from the web page at {origin[:100]!r} are not allowed here: only the studio's own pages "
                "and programs that send no Origin (curl, the openai client) may call this API. The owner can "
                "allow a page with --allowed-origins.",
                "forbidden_origin",
            )
        key = client_key(_client_host(scope), headers)
        refusal = self.locked_out(key, refuse)
        if refusal is not None:
            return refusal
        if not policy.api_key_ok(headers.get("authorization")):
            given = bool(headers.get("authorization"))
            if given:
                self.failures.failed(key)
            return refuse(
                401,
                ("Incorrect API key." if given else "This studio's API needs an API key.")
                + " Send it as 'Authorization: Bearer KEY' (the openai client's api_key); the owner finds it "
                "in the console where the studio started, or sets it with --api-key.",
                "invalid_api_key",
            )
        if scope.get("method") == "POST" and path.rstrip("/") not in FORM_ROUTES + BODYLESS_ROUTES:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return refuse(
                    415,
                    f"This route reads a JSON body: send it with 'Content-Type: application/json', not "
                    f"{media[:60] or 'no Content-Type'!r} (curl: -H 'Content-Type: application/json').",
                    "unsupported_media_type",
                )
        return self.check_size(headers, _too_large if refuse is _error else _too_large_plain)


def _client_host(scope: dict) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


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
    """Check every /v1 and /sdapi request, every login, and the size of every body sent to Gradio's routes, before
    the route runs."""
    app.add_middleware(V1Guard, policy=ctx.security)
