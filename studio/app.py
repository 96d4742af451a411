"""main(argv): command line -> StudioConfig -> AppContext -> UI -> launch. Bad settings end in one line."""

from __future__ import annotations

import logging
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from studio.config import StudioConfig, load_config, read_auth_file
from studio.errors import ConfigError, StudioError

log = logging.getLogger("studio")
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def check_port_free(host: str, port: int) -> None:
    """Fail early, naming --port, instead of a traceback from the web server. Binds as uvicorn will (SO_REUSEADDR),
    so the TIME-WAIT sockets a killed studio leaves behind do not refuse an immediate restart; a listening socket
    still does. Not on Windows, where SO_REUSEADDR would let the bind take a port another program listens on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}).",
                "Another program (maybe another studio) uses it; pick another with --port.",
            ) from None


def resolve_auth(config: StudioConfig) -> tuple[list[tuple[str, str]] | None, str | None]:
    """The login pairs, and a generated password to print when sharing/listening without credentials."""
    pairs: list[tuple[str, str]] = []
    if config.auth:
        user, _, password = config.auth.partition(":")
        pairs.append((user, password))
    if config.auth_file:
        pairs.extend(read_auth_file(config.auth_file))
    if pairs:
        return pairs, None
    if config.needs_login:
        password = secrets.token_urlsafe(18)
        return [("studio", password)], password
    return None, None


def start(config: StudioConfig, *, block: bool = True) -> tuple[Any, Any]:
    """Build the studio and serve it: until interrupted when `block`, else in the background (tests, embedding).
    Returns (AppContext, gr.Blocks); the caller closes both (`blocks.close()`, `ctx.close()`)."""
    check_port_free(config.bind_host, config.port)
    auth, generated = resolve_auth(config)
    from studio.paths import StudioPaths

    StudioPaths.under(config.data_dir).create()  # a data dir we cannot write to says so before the slow imports
    from studio.api import serve
    from studio.context import build_context
    from studio.security import SecurityPolicy
    from studio.ui.layout import CSS, build_app

    ctx = build_context(config)
    try:
        ctx.security, generated_key = SecurityPolicy.from_config(config)
        if config.share:
            from studio.sharing import ShareLink

            ctx.sharing = ShareLink()  # the page shows its state from the start
        app = build_app(ctx)
        app.queue(default_concurrency_limit=1, max_size=config.max_queue)  # full: "busy, try again", not a hang
        if generated:
            print(f"Login required (sharing/listening): user 'studio', password {generated}", flush=True)
        if generated_key:
            print(f"API key for /v1 (sharing/listening): {generated_key}", flush=True)
        print(f"ML Studio on {ctx.device}: data in {ctx.paths.data_dir}", flush=True)
        host = "127.0.0.1" if config.bind_host in ("0.0.0.0", "::") else config.bind_host
        host = f"[{host}]" if ":" in host else host
        print(f"OpenAI-compatible API: http://{host}:{config.port}/v1", flush=True)
        serve(
            app,
            ctx,
            server_name=config.bind_host,
            server_port=config.port,
            share=config.share,
            auth=auth,
            inbrowser=config.open_browser,
            show_error=False,
            css=CSS,
            allowed_paths=[str(ctx.paths.outputs), str(ASSETS)],
            favicon_path=str(ASSETS / "logo.svg"),
            quiet=False,
            prevent_thread_lock=not block,
        )
    except BaseException:
        ctx.close()
        raise
    if block:
        ctx.close()
    return ctx, app


def run(config: StudioConfig) -> None:
    """Build and serve the studio until interrupted."""
    start(config, block=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python launch.py`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
        run(config)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("ML Studio stopped.", file=sys.stderr)
