"""Launch policy for a studio others can reach: logins, the API key, what remote visitors may do, uploads.

No gradio or torch here: the policy is plain data plus checks that take the request's host facts, so the page
handlers, the /v1 routes and the tests all use the same rules.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from studio.config import StudioConfig
from studio.errors import StudioError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class PermissionDenied(StudioError):
    """A remote visitor asked for something only the studio's owner may do."""


@dataclass(frozen=True)
class SecurityPolicy:
    """What the running studio allows. Built once from the config; lives in the AppContext."""

    api_key: str | None = None  # /v1 requires `Authorization: Bearer <api_key>` when set
    allow_remote_admin: bool = False  # remote visitors may load by path/id, change the budget, fine-tune
    max_upload_bytes: int = 512 * 1024**2  # largest upload
    exposed: bool = False  # shared or listening on the network

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
        )
        return policy, generated

    # ----- who is asking --------------------------------------------------------------------------------

    def is_remote(self, client_host: str | None, headers: Mapping[str, str] | None = None) -> bool:
        """True unless the request comes from this machine, directly. A share link's tunnel connects from
        127.0.0.1 but carries the public host name (and proxies add X-Forwarded-For), so both are checked."""
        if not _is_loopback(client_host):
            return True
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        host = headers.get("host", "")
        if host and _strip_port(host) not in LOOPBACK_NAMES:
            return True
        forwarded = headers.get("x-forwarded-for", "")
        return any(not _is_loopback(part.strip()) for part in forwarded.split(",") if part.strip())

    def require_owner(self, client_host: str | None, headers: Mapping[str, str] | None, action: str) -> None:
        """Raise PermissionDenied when a remote visitor tries an owner-only `action` ("load models by path")."""
        if self.allow_remote_admin or not self.is_remote(client_host, headers):
            return
        raise PermissionDenied(
            f"Remote visitors cannot {action} on this studio.",
            "Use the models the owner has loaded; the owner can allow it with --allow-remote-admin.",
        )

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
