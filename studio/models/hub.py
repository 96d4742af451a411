"""Hugging Face Hub models: use the local cache when it has them, else download with progress, else say why not.

Loaders call `local_snapshot(spec, offline)` and load from the folder it returns, so a download is one visible step
(huggingface_hub's tqdm bars, which the page shows through `gr.Progress(track_tqdm=True)`) and a missing network is
one clear sentence after a few seconds, not a minute of retries and a library's stack trace.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from studio.errors import ModelLoadError
from studio.models.specs import ModelSpec

# What a transformers causal LM needs from its repository: configs, tokenizer files and safetensors weights.
# Left out: other formats of the same weights (original/ and consolidated checkpoints, ONNX, GGUF) that would
# double or triple the download.
LM_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
LM_IGNORE = ["original/*", "consolidated*", "onnx/*", "*.onnx*", "openvino/*", "*.gguf", "*.msgpack", "*.h5"]

OFFLINE_TIP = "Start the studio without --offline to download it, pick a local folder, or use the starter model."
NO_NETWORK_TIP = (
    "Connect this machine to the internet, or download the model elsewhere and pick its folder, or use the "
    "starter model, which needs no download."
)
ENV_OFFLINE = "HF_HUB_OFFLINE is set in the studio's environment, so the Hugging Face library makes no requests"
ENV_OFFLINE_TIP = (
    "Unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) and restart the studio to download it, or pick a local "
    "folder, or use the starter model."
)


def no_network_tip(why: str) -> str:
    """What to do when the Hub is out of reach for the reason `why` (from hub_unreachable)."""
    return ENV_OFFLINE_TIP if why == ENV_OFFLINE else NO_NETWORK_TIP


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def env_offline() -> bool:
    """Whether the Hugging Face library was told to stay offline by the environment (HF_HUB_OFFLINE), which it
    reads once at import: a download would then fail however reachable the Hub is."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable(timeout: float = 3.0) -> str:
    """Why the Hub cannot be reached ("" when it can): one TCP connection, no retries."""
    if env_offline():
        return ENV_OFFLINE
    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot folder of `repo_id` if it holds a config and weights, else None. Never networks."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=True,
                allow_patterns=LM_PATTERNS,
                ignore_patterns=LM_IGNORE,
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    has_weights = any(folder.glob("*.safetensors"))
    return folder if (folder / "config.json").is_file() and has_weights else None


def local_snapshot(spec: ModelSpec, offline: bool, cache_dir: Path | None = None) -> Path:
    """A local folder with `spec`'s Hub repository: from the cache, or downloaded now (tqdm progress)."""
    repo = spec.source
    found = cached_snapshot(repo, spec.revision, cache_dir)
    if found is not None:
        return found
    if offline:
        raise ModelLoadError(f"{repo} is not downloaded yet and the studio runs offline (--offline).", OFFLINE_TIP)
    why = hub_unreachable()
    if why:
        raise ModelLoadError(
            f"{repo} is not downloaded yet and the Hugging Face Hub is out of reach: {why}.", no_network_tip(why)
        )
    return download(spec, cache_dir)


def download(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """Download the files a causal LM needs; errors name the repository and what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    repo = spec.source
    try:
        folder = Path(
            snapshot_download(
                repo,
                revision=spec.revision,
                cache_dir=cache_dir,
                allow_patterns=LM_PATTERNS,
                ignore_patterns=LM_IGNORE,
                endpoint=hub_endpoint(),
            )
        )
    except GatedRepoError:
        raise ModelLoadError(
            f"{repo} is gated: its authors ask you to accept their licence first.",
            f"Accept it on https://huggingface.co/{repo}, then log in here with `hf auth login`.",
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{repo} does not exist on the Hugging Face Hub (or it is private).",
            "Check the spelling (owner/name), or log in with `hf auth login` for a private model.",
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(
            f"{repo} has no revision {spec.revision!r}.", "Leave the revision empty for the default."
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(
            f"Downloading {repo} failed: {str(exc).splitlines()[0][:200]}",
            "Try again; downloaded files are kept, so it resumes where it stopped.",
        ) from None
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"{repo} has no .safetensors weights; the studio does not load pickle (.bin) weights from the Hub.",
            "Pick a repository that ships safetensors (most do), or convert the weights first.",
        )
    return folder
