"""Settings: frozen dataclasses, from defaults < studio.toml < STUDIO_* environment < command line.

Nothing here imports torch or gradio, so `python launch.py --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from studio.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

GIB = 1024**3
DEFAULT_CONFIG_FILE = "studio.toml"
ENV_PREFIX = "STUDIO_"
DEVICES = ("auto", "cuda", "cpu")
MAX_KEEP_ALIVE_MIN = 7 * 24 * 60  # --keep-alive above a week is a typo (seconds for minutes)
ORPHAN_TRAINING = ("keep", "stop")  # what a fine-tune worker does when the studio that started it dies


def default_data_dir() -> Path:
    """`studio-data/` beside launch.py, like the output folders of the web UIs our users know."""
    return Path(__file__).resolve().parent.parent / "studio-data"


@dataclass(frozen=True)
class StudioConfig:
    """Every setting of a studio run. Field names are the studio.toml keys and, upper-cased, the env names."""

    host: str = "127.0.0.1"  # address the server binds to; --listen makes it 0.0.0.0
    port: int = 7860  # HTTP port
    share: bool = False  # make a temporary public link (requires a login)
    listen: bool = False  # serve on every network interface (requires a login)
    auth: str | None = None  # "user:password" for the login
    auth_file: Path | None = None  # file with one "user:password" per line
    api_key: str | None = None  # key for /v1 (Authorization: Bearer KEY); generated when sharing/listening
    allow_remote_admin: bool = False  # let remote visitors load models by path/id, change the budget, fine-tune
    allow_image_urls: bool = False  # /v1 chat: fetch http(s) image URLs of local requests (never remote visitors')
    allowed_origins: str | None = None  # comma-separated web origins besides the studio's own that may call /v1
    max_upload_mb: float = 512.0  # largest file a visitor may upload (datasets, audio, images)
    max_queue: int = 64  # requests that may wait for the GPU (page and API); one more is told "busy, try again"
    budget_gb: float | None = None  # memory the models may use; None = 12 GiB capped by the device
    reserve_gb: float = 0.8  # kept free for the CUDA context, fragmentation and other programs
    device: str = "auto"  # auto | cuda | cpu
    data_dir: Path = field(default_factory=default_data_dir)  # outputs, run folders, calibration, models
    # more folders whose .gguf files and causal-LM folders the chat picker offers (--models-dir, repeatable)
    models_dir: tuple[Path, ...] = ()
    offline: bool = False  # never contact the Hugging Face Hub
    open_browser: bool = True  # open the page in the browser on start
    # a fine-tune worker whose studio died (killed, crashed): "keep" trains on and the next studio re-adopts it,
    # "stop" stops it after its current step with the adapter saved (Resume continues)
    orphan_training: str = "keep"
    # CPU threads llama.cpp computes with (0 = one per core). On a CPU-only machine that also runs the API's
    # clients, one core left free keeps their work from stalling llama.cpp's threads (see bench/api.py)
    cpu_threads: int = 0
    # minutes a model may sit idle before it is parked in RAM (or unloaded when it cannot be parked; a parked model
    # idle that long again is unloaded); 0 = never, like Ollama's keep_alive. The Models tab sets it per model
    keep_alive: float = 0.0
    config_file: Path | None = None  # the studio.toml that was read, if any (informational)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def bind_host(self) -> str:
        """The address the server binds to."""
        return "0.0.0.0" if self.listen and self.host == "127.0.0.1" else self.host

    @property
    def needs_login(self) -> bool:
        """Sharing or listening on the network never runs without a login."""
        return self.share or self.listen or self.bind_host not in ("127.0.0.1", "localhost", "::1")


# Settings that are paths, floats, ints and booleans, for parsing strings from the environment and the file.
_PATHS = {"auth_file", "data_dir", "config_file"}
_PATH_LISTS = {"models_dir"}  # a list in the file, os.pathsep-separated in the environment, repeated on the CLI
_FLOATS = {"budget_gb", "reserve_gb", "max_upload_mb", "keep_alive"}
_INTS = {"port", "max_queue", "cpu_threads"}
_BOOLS = {"share", "listen", "offline", "open_browser", "allow_remote_admin", "allow_image_urls"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(cfg: StudioConfig) -> None:
    """Raise ConfigError naming the setting for any value that cannot work."""
    if not cfg.host.strip():
        raise ConfigError("--host must not be empty.", "Use 127.0.0.1 (this machine only) or 0.0.0.0 (network).")
    if not 1 <= cfg.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, not {cfg.port}.")
    if cfg.budget_gb is not None and cfg.budget_gb <= 0:
        raise ConfigError(
            f"--budget-gb must be a positive number of GB, not {cfg.budget_gb:g}.",
            "Leave it out to use 12 GB capped by the device.",
        )
    if cfg.budget_gb is not None and cfg.budget_gb > 4096:
        raise ConfigError(f"--budget-gb {cfg.budget_gb:g} is more than any device has.")
    if cfg.reserve_gb < 0:
        raise ConfigError(f"--reserve-gb must be zero or more, not {cfg.reserve_gb:g}.")
    if cfg.budget_gb is not None and cfg.reserve_gb >= cfg.budget_gb:
        raise ConfigError(f"--reserve-gb ({cfg.reserve_gb:g}) must be smaller than --budget-gb ({cfg.budget_gb:g}).")
    if cfg.device not in DEVICES:
        raise ConfigError(f"--device must be auto, cuda or cpu, not {cfg.device!r}.")
    if not 0 <= cfg.cpu_threads <= 1024:
        raise ConfigError(
            f"--cpu-threads must be a whole number from 0 to 1024, not {cfg.cpu_threads}.",
            "0 (the default) uses one thread per core.",
        )
    if not 0 <= cfg.keep_alive <= MAX_KEEP_ALIVE_MIN:
        raise ConfigError(
            f"--keep-alive must be a number of minutes from 0 to {MAX_KEEP_ALIVE_MIN}, not {cfg.keep_alive:g}.",
            "0 (the default) never unloads an idle model; 5 unloads one after five idle minutes.",
        )
    if cfg.orphan_training not in ORPHAN_TRAINING:
        raise ConfigError(f"--orphan-training must be keep or stop, not {cfg.orphan_training!r}.")
    if cfg.auth is not None:
        user, sep, password = cfg.auth.partition(":")
        if not sep or not user or not password:
            raise ConfigError("--auth must look like user:password.", "Example: --auth alice:correct-horse-battery")
    if cfg.auth_file is not None:
        read_auth_file(cfg.auth_file)
    if cfg.api_key is not None and (len(cfg.api_key) < 8 or any(c.isspace() for c in cfg.api_key)):
        raise ConfigError(
            "--api-key must be at least 8 characters with no spaces.", "Leave it out to have one generated."
        )
    from studio.security import origin_parts  # here, not at the top: security imports this module

    for origin in (cfg.allowed_origins or "").split(","):
        if origin.strip() and origin_parts(origin) is None:
            raise ConfigError(
                f"--allowed-origins: {origin.strip()!r} is not a web origin.",
                "Give scheme://host[:port] with no path, e.g. --allowed-origins https://app.example,http://pc:3000",
            )
    for folder in cfg.models_dir:
        if not Path(folder).is_dir():
            raise ConfigError(
                f"--models-dir {folder}: {'not a folder' if Path(folder).exists() else 'no such folder'}.",
                "Give a folder that holds .gguf files or model folders; repeat --models-dir for more than one.",
            )
    if not 0 < cfg.max_upload_mb <= 1024 * 1024:
        raise ConfigError(f"--max-upload-mb must be a positive number of MB, not {cfg.max_upload_mb:g}.")
    if not 1 <= cfg.max_queue <= 10_000:
        raise ConfigError(f"--max-queue must be a whole number from 1 to 10000, not {cfg.max_queue}.")


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """The (user, password) pairs in an auth file: one `user:password` per line, # comments allowed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--auth-file {path}: cannot read it ({exc.strerror or exc}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--auth-file {path}: not UTF-8 text.") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"--auth-file {path}: line {number} is not user:password.")
        pairs.append((user, password))
    if not pairs:
        raise ConfigError(f"--auth-file {path}: no user:password line in it.")
    return pairs


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a value from the file or the environment into the field's type, or say which setting is wrong."""
    where = f"{origin}: {name}"
    if value is None:
        return None
    try:
        if name in _BOOLS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if name in _INTS:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if name in _FLOATS:
            if isinstance(value, bool):
                raise ValueError
            text = str(value).strip().lower()
            return None if text in ("", "auto") and name == "budget_gb" else float(value)
        if name in _PATHS:
            return Path(str(value)).expanduser()
        if name in _PATH_LISTS:
            items = value.split(os.pathsep) if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise ValueError
            return tuple(Path(item.strip()).expanduser() for item in items if item.strip())
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        kind = (
            "true/false"
            if name in _BOOLS
            else "a whole number"
            if name in _INTS
            else "a number"
            if name in _FLOATS
            else "a folder or a list of folders"
            if name in _PATH_LISTS
            else "text"
        )
        raise ConfigError(f"{where} must be {kind}, not {value!r}.") from None


def _field_names() -> list[str]:
    return [f.name for f in fields(StudioConfig) if f.name != "config_file"]


def read_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    """The settings in a studio.toml; an unreadable or malformed file is a ConfigError naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        if required:
            raise ConfigError(f"--config {path}: no such file.")
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc}).") from None
    data = data.get("studio", data) if isinstance(data.get("studio"), dict) else data
    known = set(_field_names())
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}.", f"Known settings: {', '.join(sorted(known))}.")
        values[name] = _coerce(name, value, str(path))
    return values


def read_env(environ: dict[str, str]) -> dict[str, Any]:
    """Settings from STUDIO_* variables (e.g. STUDIO_PORT=7861, STUDIO_BUDGET_GB=8)."""
    values = {}
    for name in _field_names():
        var = ENV_PREFIX + name.upper()
        if var in environ:
            values[name] = _coerce(name, environ[var], var)
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line. Every default is SUPPRESS so that only flags the user gave override file and env."""
    p = argparse.ArgumentParser(
        prog="python launch.py",
        description="ML Studio: chat, images, speech and fine-tuning on one GPU, inside one memory budget.",
        argument_default=argparse.SUPPRESS,
        epilog="Every flag can also be set in studio.toml or as a STUDIO_<NAME> environment variable "
        "(e.g. STUDIO_BUDGET_GB=10). Precedence: defaults < studio.toml < environment < command line.",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="HTTP port (default 7860)")
    p.add_argument("--share", action="store_true", help="create a temporary public link (a login is required)")
    p.add_argument("--listen", action="store_true", help="serve on all network interfaces (a login is required)")
    p.add_argument("--auth", metavar="USER:PASS", help="login for the page and the API")
    p.add_argument("--auth-file", metavar="FILE", help="file with one user:password per line")
    p.add_argument("--api-key", metavar="KEY", help="key the /v1 API requires (generated when sharing/listening)")
    p.add_argument(
        "--allow-remote-admin",
        action="store_true",
        help="let remote visitors load models by path or id, change the budget and start fine-tuning",
    )
    p.add_argument(
        "--allow-image-urls",
        action="store_true",
        help="let /v1/chat/completions fetch http(s) image URLs for requests from this machine (never remote ones)",
    )
    p.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="comma-separated web origins (https://app.example) whose pages may call /v1 besides the studio's own",
    )
    p.add_argument("--max-upload-mb", metavar="MB", help="largest upload a visitor may send (default 512)")
    p.add_argument(
        "--max-queue", metavar="N", help="requests that may wait for the GPU; one more hears 'busy' (default 64)"
    )
    p.add_argument("--budget-gb", metavar="GB", help="memory budget for models (default: 12 GB capped by the device)")
    p.add_argument("--reserve-gb", metavar="GB", help="memory kept free for the CUDA context and others (0.8)")
    p.add_argument("--device", choices=DEVICES, help="where models run (default auto: CUDA if an NVIDIA GPU is found)")
    p.add_argument("--data-dir", metavar="DIR", help="outputs, run folders, calibration, converted models")
    p.add_argument(
        "--models-dir",
        metavar="DIR",
        action="append",
        help="another folder of .gguf files or model folders for the chat picker (repeat for more)",
    )
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    p.add_argument("--no-browser", dest="open_browser", action="store_false", help="do not open the browser")
    p.add_argument(
        "--orphan-training",
        choices=ORPHAN_TRAINING,
        help="when the studio dies mid fine-tune: keep training (the next start re-adopts it) or stop with the "
        "adapter saved (default keep)",
    )
    p.add_argument(
        "--cpu-threads",
        metavar="N",
        help="CPU threads for llama.cpp (default 0: one per core; fewer leaves room for API clients on CPU)",
    )
    p.add_argument(
        "--keep-alive",
        metavar="MINUTES",
        help="park (else unload) a model idle this many minutes; a parked one idle as long again is unloaded "
        "(default 0: never)",
    )
    p.add_argument("--config", metavar="FILE", help=f"settings file (default ./{DEFAULT_CONFIG_FILE} if present)")
    return p


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> StudioConfig:
    """Merge defaults < studio.toml < STUDIO_* env < CLI into one validated StudioConfig."""
    environ = dict(os.environ if environ is None else environ)
    cli = vars(build_parser().parse_args(argv))
    explicit = cli.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    config_path = Path(explicit).expanduser() if explicit else Path(DEFAULT_CONFIG_FILE)
    values: dict[str, Any] = read_config_file(config_path, required=bool(explicit))
    values.update(read_env(environ))
    values.update({name: _coerce(name, value, _flag(name)) for name, value in cli.items()})
    if config_path.exists():
        values["config_file"] = config_path
    try:
        return StudioConfig(**values)
    except TypeError as exc:  # a wrong type slipped through (e.g. a TOML table)
        raise ConfigError(f"bad setting: {exc}") from None


def with_overrides(cfg: StudioConfig, **changes: Any) -> StudioConfig:
    """A copy of cfg with some settings changed (validated)."""
    return replace(cfg, **changes)
