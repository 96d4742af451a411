"""Chat models other local tools keep on this machine, offered by their own names and never copied.

Ollama's store (manifests naming GGUF blobs), LM Studio's models folder, the Hugging Face cache's snapshots, and the
folders given with --models-dir. Everything is found by walking folders, with a bound on depth and on the entries
looked at, and by reading manifests and four magic bytes, so a scan stays cheap. `ModelDiscovery` remembers a scan
for a few seconds, so the pickers can ask on every page load.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.models.formats import is_gguf

MAX_DEPTH = 6  # folders below a root that a walk descends into
MAX_ENTRIES = 5000  # directory entries one root's walk looks at before it stops
MAX_MANIFEST_BYTES = 1024**2  # an Ollama manifest is a few hundred bytes; a larger file is not one
TTL_S = 10.0  # how long ModelDiscovery answers from its last scan
OLLAMA_MODEL = "application/vnd.ollama.image.model"  # the manifest layer that is the GGUF weights
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"  # a vision model's projector, a GGUF too
OLLAMA_REGISTRY = "registry.ollama.ai"  # models pulled by a plain name; others are named with their registry
OLLAMA_SERVICE_HOME = Path("/usr/share/ollama")  # home of the `ollama` user the Linux installer creates
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# The environment variables a scan reads (the cache key of ModelDiscovery).
ENV_VARS = ("OLLAMA_MODELS", "LMSTUDIO_MODELS", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@dataclass(frozen=True)
class FoundModel:
    """A chat model found on disk: how the pickers name it and where it is."""

    label: str  # the tool's own name for it and the tool, e.g. "llama3.2:3b (Ollama)"
    path: Path  # absolute path of the GGUF file or model folder, as found (an HF snapshot's symlink unresolved)
    projector: Path | None = None  # the vision projector the tool pairs with it (Ollama's), if any


def discover_chat_models(
    extra_dirs: Sequence[Path] = (),
    *,
    home: Path | None = None,
    environ: Mapping[str, str] | None = None,
    service_home: Path | None = OLLAMA_SERVICE_HOME,
) -> list[tuple[str, str]]:
    """(label, absolute path) of every chat model `find_chat_models` finds, for a model picker."""
    found = find_chat_models(extra_dirs, home=home, environ=environ, service_home=service_home)
    return [(model.label, str(model.path)) for model in found]


def find_chat_models(
    extra_dirs: Sequence[Path] = (),
    *,
    home: Path | None = None,
    environ: Mapping[str, str] | None = None,
    service_home: Path | None = OLLAMA_SERVICE_HOME,
) -> list[FoundModel]:
    """GGUF models in Ollama's stores, LM Studio's folders and the Hugging Face cache, then GGUF files and causal-LM
    folders in `extra_dirs`. Each tool's models are sorted by label; a file found twice (two Ollama tags of one
    blob, a folder inside another) is kept once, under its first label. `home` and `environ` default to the real
    ones; `service_home` is the Ollama service user's home (None skips it)."""
    home = Path.home() if home is None else Path(home)
    environ = os.environ if environ is None else environ
    groups = [
        [m for store in ollama_stores(home, environ, service_home) for m in ollama_models(store)],
        [m for root in lmstudio_roots(home, environ) for m in lmstudio_models(root)],
        hf_cache_models(hf_cache_root(home, environ)),
        [m for folder in extra_dirs for m in folder_models(Path(folder), home)],
    ]
    seen: set[str] = set()
    found: list[FoundModel] = []
    for group in groups:
        for model in sorted(group, key=lambda m: (m.label.casefold(), m.label, str(m.path))):
            key = os.path.realpath(model.path)
            if key not in seen:
                seen.add(key)
                found.append(model)
    return found


class ModelDiscovery:
    """`discover_chat_models`, answered from the last scan for `ttl_s` seconds while its inputs are the same, so the
    pickers can ask on every page load. Safe to share between the server's threads: one scans, the others wait."""

    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[tuple, float, list[tuple[str, str]]] | None = None  # inputs, when, result

    def chat_models(
        self,
        extra_dirs: Sequence[Path] = (),
        *,
        home: Path | None = None,
        environ: Mapping[str, str] | None = None,
        service_home: Path | None = OLLAMA_SERVICE_HOME,
    ) -> list[tuple[str, str]]:
        """(label, absolute path) pairs, as `discover_chat_models` returns them."""
        home = Path.home() if home is None else Path(home)
        environ = os.environ if environ is None else environ
        key = (
            tuple(str(d) for d in extra_dirs),
            str(home),
            tuple(environ.get(name) for name in ENV_VARS),
            str(service_home),
        )
        with self._lock:
            now = self._clock()
            if self._last is not None and self._last[0] == key and now - self._last[1] < self.ttl_s:
                return list(self._last[2])
            found = discover_chat_models(extra_dirs, home=home, environ=environ, service_home=service_home)
            self._last = (key, now, found)
            return list(found)


# ----- Ollama ---------------------------------------------------------------------------------------------


def ollama_stores(home: Path, environ: Mapping[str, str], service_home: Path | None) -> list[Path]:
    """$OLLAMA_MODELS (else ~/.ollama/models), and the store of the Linux service's user."""
    stores = [_env_path(environ, "OLLAMA_MODELS") or home / ".ollama" / "models"]
    if service_home is not None:
        stores.append(service_home / ".ollama" / "models")
    return [_absolute(store) for store in stores]


def ollama_models(store: Path) -> list[FoundModel]:
    """The models whose manifest (manifests/<registry>/<namespace>/<model>/<tag>) names a GGUF blob that is there."""
    manifests = store / "manifests"
    found = []
    for manifest in _walk_files(manifests, _Budget(), max_depth=3):
        parts = manifest.relative_to(manifests).parts
        if len(parts) != 4:
            continue
        layers = _manifest_layers(manifest)
        blob = _ollama_blob(store, layers, OLLAMA_MODEL)
        if blob is None or not is_gguf(blob):
            continue
        registry, namespace, model, tag = parts
        if registry != OLLAMA_REGISTRY:
            name = f"{registry}/{namespace}/{model}:{tag}"  # e.g. hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M
        elif namespace != "library":
            name = f"{namespace}/{model}:{tag}"
        else:
            name = f"{model}:{tag}"
        found.append(FoundModel(f"{name} (Ollama)", blob, _ollama_blob(store, layers, OLLAMA_PROJECTOR)))
    return found


def _manifest_layers(manifest: Path) -> list[dict]:
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            return []
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return []
    return [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []


def _ollama_blob(store: Path, layers: list[dict], media_type: str) -> Path | None:
    """The blob of the first layer of `media_type`, when its digest is well formed and the file is there."""
    for layer in layers:
        if layer.get("mediaType") == media_type:
            digest = DIGEST.fullmatch(str(layer.get("digest", "")))
            blob = store / "blobs" / f"sha256-{digest.group(1)}" if digest else None
            return blob if blob is not None and blob.is_file() else None
    return None


# ----- LM Studio and the Hugging Face cache ---------------------------------------------------------------


def lmstudio_roots(home: Path, environ: Mapping[str, str]) -> list[Path]:
    """$LMSTUDIO_MODELS if set, ~/.lmstudio/models (LM Studio 0.3) and ~/.cache/lm-studio/models (before)."""
    roots = [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    given = _env_path(environ, "LMSTUDIO_MODELS")
    return [_absolute(root) for root in ([given] if given else []) + roots]


def lmstudio_models(root: Path) -> list[FoundModel]:
    """GGUF files under LM Studio's models folder (publisher/repo/file.gguf), vision projectors left out."""
    return [FoundModel(f"{f.relative_to(root).as_posix()} (LM Studio)", f) for f in _gguf_files(root, _Budget())]


def hf_cache_root(home: Path, environ: Mapping[str, str]) -> Path:
    """The hub cache as huggingface_hub finds it: $HF_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub."""
    cache = _env_path(environ, "HF_HUB_CACHE") or _env_path(environ, "HUGGINGFACE_HUB_CACHE")
    if cache is None:
        hf_home = _env_path(environ, "HF_HOME")
        xdg = _env_path(environ, "XDG_CACHE_HOME") or home / ".cache"
        cache = (hf_home or xdg / "huggingface") / "hub"
    return _absolute(cache)


def hf_cache_models(cache: Path) -> list[FoundModel]:
    """GGUF files in the snapshots of models--org--name/, as the snapshot's path (a symlink into blobs/). The
    revision refs/main names, or a lone one, is labelled plainly; other revisions add @<revision>."""
    budget = _Budget()
    found = []
    for repo in _entries(cache, budget):
        if not repo.name.startswith("models--") or not repo.is_dir(follow_symlinks=False):
            continue
        name = repo.name[len("models--") :].replace("--", "/")
        try:
            main = (Path(repo.path) / "refs" / "main").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            main = ""
        revisions = [e for e in _entries(Path(repo.path) / "snapshots", budget) if e.is_dir(follow_symlinks=False)]
        for revision in revisions:
            tag = "" if revision.name == main or len(revisions) == 1 else f" @{revision.name[:7]}"
            folder = Path(revision.path)
            for f in _gguf_files(folder, budget):
                found.append(FoundModel(f"{name}/{f.relative_to(folder).as_posix()}{tag} (HF cache)", f))
    return found


# ----- folders given with --models-dir --------------------------------------------------------------------


def folder_models(folder: Path, home: Path) -> list[FoundModel]:
    """GGUF files anywhere under `folder`, and causal-LM folders: `folder` itself or one level below it."""
    folder = _absolute(folder.expanduser())
    where = _display(folder, home)
    budget = _Budget()
    found = [FoundModel(f"{f.relative_to(folder).as_posix()} (in {where})", f) for f in _gguf_files(folder, budget)]
    if is_causal_lm_folder(folder):
        found.append(FoundModel(f"{folder.name} (folder, {where})", folder))
    for entry in _entries(folder, _Budget()):
        if entry.is_dir() and is_causal_lm_folder(Path(entry.path)):  # a symlinked model folder counts
            found.append(FoundModel(f"{entry.name} (folder in {where})", Path(entry.path)))
    return found


def is_causal_lm_folder(folder: Path) -> bool:
    """Whether `folder` holds a config.json naming a *ForCausalLM architecture (transformers can chat with it)."""
    try:
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(architectures, list) and any(str(a).endswith("ForCausalLM") for a in architectures)


# ----- bounded walks --------------------------------------------------------------------------------------


class _Budget:
    """How many more directory entries the walks of one root may look at."""

    def __init__(self) -> None:
        self.left = MAX_ENTRIES


def _entries(folder: Path, budget: _Budget) -> list[os.DirEntry]:
    """The entries of `folder`, as many as the budget allows; none when it cannot be read."""
    taken: list[os.DirEntry] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if budget.left <= 0:
                    break
                budget.left -= 1
                taken.append(entry)
    except OSError:  # missing, not a folder, no permission
        pass
    return taken


def _walk_files(root: Path, budget: _Budget, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Files under `root`, shallowest first, down to `max_depth` folders below it. A symlink to a file counts; a
    symlinked or hidden folder is not entered, so a walk never loops."""
    queue = deque([(root, 0)])
    while queue and budget.left > 0:
        folder, depth = queue.popleft()
        for entry in _entries(folder, budget):
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < max_depth and not entry.name.startswith("."):
                        queue.append((Path(entry.path), depth + 1))
                elif entry.is_file():
                    yield Path(entry.path)
            except OSError:
                continue


def _gguf_files(root: Path, budget: _Budget) -> Iterator[Path]:
    """*.gguf files under `root` that start with the GGUF magic, vision projectors (mmproj*) left out."""
    for path in _walk_files(root, budget):
        name = path.name.lower()
        if name.endswith(".gguf") and "mmproj" not in name and is_gguf(path):
            yield path


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = (environ.get(name) or "").strip()
    return Path(value).expanduser() if value else None


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _display(folder: Path, home: Path) -> str:
    """`folder` as a person writes it: ~/llms rather than /home/alice/llms."""
    try:
        inside = folder.relative_to(home).as_posix()
    except ValueError:
        return str(folder)
    return "~" if inside == "." else "~/" + inside
