"""Launch policy for a studio others can reach: logins, the API key, what remote visitors may do, uploads, which
web pages may call the API, and how many wrong passwords a client may try.

No gradio or torch here: the policy is plain data plus checks that take the request's host facts, so the page
handlers, the /v1 routes and the tests all use the same rules.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from studio.config import StudioConfig
from studio.errors import StudioError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Headers a reverse proxy or tunnel adds for the client behind it. Any of them means the request was relayed, so the
# visitor is remote whatever the values say: a proxy may pass a client's own forged "X-Forwarded-For: 127.0.0.1"
# through and put the real address in another header.
FORWARDING_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "client-ip",
    "via",
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class PermissionDenied(StudioError):
    """A remote visitor asked for something only the studio's owner may do."""


@dataclass(frozen=True)
class SecurityPolicy:
    """What the running studio allows. Built once from the config; lives in the AppContext."""

    api_key: str | None = None  # /v1 requires `Authorization: Bearer <api_key>` when set
    allow_remote_admin: bool = False  # remote visitors may load by path/id, change the budget, fine-tune
    max_upload_bytes: int = 512 * 1024**2  # largest upload
    exposed: bool = False  # shared or listening on the network
    login: bool = False  # the page has a login (--auth, --auth-file, or shared/listening): the route list is hidden
    port: int | None = None  # the studio's port: pages on localhost at this port are the studio's own
    allowed_origins: tuple[str, ...] = ()  # other web origins ("https://app.example") that may call /v1 and /sdapi

    @classmethod
    def from_config(cls, config: StudioConfig) -> tuple[SecurityPolicy, str | None]:
        """The policy, and the API key generated for this run (to print) when one is needed and none was given."""
        generated = None
        key = config.api_key
        if key is None and config.needs_login:
            key = generated = "sk-studio-" + secrets.token_urlsafe(24)
        policy = cls(
            api_key=key,
            allow_remote_admin=config.allow_remote_admin,
            max_upload_bytes=int(config.max_upload_mb * 1024**2),
            exposed=config.needs_login,
            login=bool(config.auth or config.auth_file or config.needs_login),
            port=config.port,
            allowed_origins=parse_origins(config.allowed_origins),
        )
        return policy, generated

    # ----- who is asking --------------------------------------------------------------------------------

    def is_remote(self, client_host: str | None, headers: Mapping[str, str] | None = None) -> bool:
        """True unless the request comes from this machine, directly. A share link's tunnel connects from
        127.0.0.1 but carries the public host name, and a reverse proxy on this machine adds a forwarding header
        (any of FORWARDING_HEADERS, whatever its value), so both are checked."""
        if not _is_loopback(client_host):
            return True
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        host = headers.get("host", "")
        if host and _strip_port(host) not in LOOPBACK_NAMES:
            return True
        return any(name in headers for name in FORWARDING_HEADERS)

    def require_owner(self, client_host: str | None, headers: Mapping[str, str] | None, action: str) -> None:
        """Raise PermissionDenied when a remote visitor tries an owner-only `action` ("load models by path")."""
        if self.allow_remote_admin or not self.is_remote(client_host, headers):
            return
        raise PermissionDenied(
            f"Remote visitors cannot {action} on this studio.",
            "Use the models the owner has loaded; the owner can allow it with --allow-remote-admin.",
        )

    # ----- which pages may call the API -----------------------------------------------------------------

    def origin_ok(self, origin: str | None, host: str | None, scheme: str = "http") -> bool:
        """Whether a request with this `Origin` header may use /v1 or /sdapi. No Origin: not a browser page (curl,
        the openai client), allowed. Else the studio's own pages only: localhost, 127.0.0.1 or [::1] at the
        studio's port; the request's own Host when the studio is shared or listening (locally a foreign Host with
        a matching Origin is a DNS-rebinding page); and --allowed-origins."""
        if origin is None:
            return True
        given = origin_parts(origin)
        if given is None:  # "null" (a sandboxed frame, a file:// page) or garbage
            return False
        if given in {origin_parts(o) for o in self.allowed_origins}:
            return True
        if given[1] in LOOPBACK_NAMES and self.port is not None and given[2] == self.port:
            return True
        if host and _strip_port(host) in LOOPBACK_NAMES and given == origin_parts(f"{scheme}://{host}"):
            return True
        return self.exposed and bool(host) and given == origin_parts(f"{scheme}://{host}")

    # ----- API key --------------------------------------------------------------------------------------

    def api_key_ok(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries the key (always true when no key is set)."""
        if not self.api_key:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    # ----- uploads --------------------------------------------------------------------------------------

    def check_upload_size(self, size: int, what: str = "The file") -> None:
        if size > self.max_upload_bytes:
            raise PermissionDenied(
                f"{what} is {size / 1024**2:.1f} MB; this studio accepts uploads up to "
                f"{self.max_upload_bytes / 1024**2:.0f} MB.",
                "Use a smaller file, or the owner can raise --max-upload-mb.",
            )


class FailureLimiter:
    """Wrong passwords and API keys, counted per client: after `limit` failures within `window` seconds, the
    client is refused for `lockout` seconds. At most `max_clients` clients are remembered (the oldest go first), so
    a flood of addresses cannot grow it; one lock guards it (the page's login and /v1 share it)."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        lockout: float = 60.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.lockout, self.clock = limit, window, lockout, clock
        self.max_clients = max_clients
        # client key -> (its recent failure times, locked out until), least recently failed first
        self._clients: OrderedDict[str, tuple[deque[float], float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it may now."""
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                return 0
            wait = entry[1] - self.clock()
            return int(wait) + 1 if wait > 0 else 0

    def failed(self, key: str) -> int:
        """Count one failure; returns the seconds `key` is now locked out for (0 while under the limit)."""
        now = self.clock()
        with self._lock:
            times, until = self._clients.pop(key, (deque(maxlen=self.limit), 0.0))
            times.append(now)
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                until = now + self.lockout
                times.clear()
            self._clients[key] = (times, until)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            return int(until - now) + 1 if until > now else 0

    def __len__(self) -> int:
        return len(self._clients)


def client_key(client_host: str | None, headers: Mapping[str, str]) -> str:
    """Whom to count a failure against: the client's address; for requests relayed by a proxy or tunnel on this
    machine (all from 127.0.0.1), also the address the proxy added (the last one, which the client cannot choose)
    or the host they came through, so that one visitor's failures do not lock out the owner."""
    host = client_host or "unknown"
    if not _is_loopback(client_host):
        return host
    headers = {k.lower(): v for k, v in headers.items()}
    for name in ("x-forwarded-for", "x-real-ip", "forwarded"):
        if headers.get(name, "").strip():
            return f"{host} for {headers[name].split(',')[-1].strip()[:64]}"
    if any(name in headers for name in FORWARDING_HEADERS) or _strip_port(headers.get("host", "")) not in (
        LOOPBACK_NAMES | {""}
    ):
        return f"{host} via {headers.get('host', '')[:64]}"
    return host


def parse_origins(text: str | None) -> tuple[str, ...]:
    """The comma-separated --allowed-origins (checked by the config) as a tuple."""
    return tuple(part.strip().rstrip("/") for part in (text or "").split(",") if part.strip())


def origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the default port filled in; None when it is not scheme://host[:port]."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, host, port or DEFAULT_PORTS[parts.scheme]


def request_facts(request: Any) -> tuple[str | None, dict[str, str]]:
    """(client host, headers) of a gr.Request or a Starlette/FastAPI request."""
    if request is None:
        return None, {}
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None else None
    raw = getattr(request, "headers", None) or {}
    try:
        headers = {str(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        headers = {}
    return host, headers


def _strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_owner(policy: SecurityPolicy, request: Any, action: str) -> None:
    """`SecurityPolicy.require_owner` for a gr.Request (or a Starlette request)."""
    host, headers = request_facts(request)
    policy.require_owner(host, headers, action)


def require_loaded_or_owner(policy: SecurityPolicy, manager: Any, spec: Any, request: Any) -> None:
    """Remote visitors use the models the owner has loaded in this run (even if since evicted: reloading the
    owner's choice is fine); loading anything else is the owner's call."""
    host, headers = request_facts(request)
    if policy.allow_remote_admin or not policy.is_remote(host, headers):
        return
    records = manager.records()
    if spec.key in {r.key for r in records}:
        return
    names = ", ".join(sorted({r.name for r in records})) or "none yet"
    raise PermissionDenied(
        f"Remote visitors can use the models the owner has loaded (now: {names}), not load {spec.name}.",
        "Pick a loaded model, or ask the owner to load this one (or to allow it with --allow-remote-admin).",
    )


def require_loaded_choice_or_owner(policy: SecurityPolicy, manager: Any, kind: str, choice: Any, request: Any) -> None:
    """Before a typed model (a folder, a file, a Hub id) is looked up: a remote visitor may name only a `kind` model
    the owner has loaded (its source as the pickers offer it, its name or key). Anything else gets the same answer
    whether or not such a path exists on the server, so the plan and load actions cannot probe its files."""
    host, headers = request_facts(request)
    if policy.allow_remote_admin or not policy.is_remote(host, headers):
        return
    text = str(choice or "").strip()
    models = manager.models(kind)
    if text and any(text in (spec.source, rec.name, rec.key) for rec, spec in models):
        return
    names = ", ".join(sorted({rec.name for rec, _ in models})) or "none yet"
    raise PermissionDenied(
        f"Remote visitors can use the models the owner has loaded (now: {names}), not other models or server paths.",
        "Pick a loaded model, or ask the owner to load the one you want (or to allow it with --allow-remote-admin).",
    )
