"""Downloads of Hugging Face Hub models that the page starts, watches and cancels.

`download_snapshot` fetches what a model needs (configs, tokenizer files, safetensors weights; never the .bin, .pth,
ONNX or msgpack copies of the same weights) into the Hugging Face cache, where the loaders and the plan look for Hub
ids, reporting bytes done of the total as it goes, and stopping when asked. Every failure is one line that says
what is wrong and what to do: an unknown repository, one that needs a login, the Hub out of reach, a full disk.
`HubDownloads` runs them in background threads, so every page (a reloaded one too) can poll their progress.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from studio.errors import ModelLoadError, is_disk_full
from studio.models.hub import LM_IGNORE, LM_PATTERNS, OFFLINE_TIP, cached_snapshot, hub_unreachable, no_network_tip
from studio.text import fmt_bytes

LOGIN_TIP = "Log in on this machine with `hf auth login` (or set HF_TOKEN before starting the studio), then Download."
MAX_WORKERS = 4  # files fetched at once


class DownloadCancelled(Exception):
    """Raised inside the download (from its progress bar) when the user pressed Cancel."""


@dataclass(frozen=True)
class DownloadStatus:
    """Where one download stands, as plain data the page shows."""

    repo: str  # the Hub id
    state: str  # "checking" | "downloading" | "done" | "cancelled" | "failed"
    done_bytes: int = 0  # bytes written so far (this run; files already cached count as done)
    total_bytes: int = 0  # bytes of all the files it fetches (0 while unknown)
    files: int = 0  # files it fetches
    message: str = ""  # a failure's reason and what to do; "done": the folder
    started: float = 0.0  # time.time() at start
    finished: float = 0.0  # time.time() at the end, 0 while running

    @property
    def running(self) -> bool:
        return self.state in ("checking", "downloading")


def explain(repo: str, exc: BaseException) -> ModelLoadError:
    """A download's failure as one line naming the repository, and what to do about it."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if is_disk_full(exc):
        return ModelLoadError(
            f"The disk is full: {repo} could not be written to the Hugging Face cache ({cache_dir()}).",
            "Free some space (or set HF_HOME to a bigger disk and restart the studio), then Download again: the "
            "files already here are kept.",
        )
    for e in chain:
        if isinstance(e, GatedRepoError):
            return ModelLoadError(
                f"{repo} is gated: its authors ask you to accept their licence on https://huggingface.co/{repo} "
                "and to download it with your account.",
                LOGIN_TIP,
            )
        if isinstance(e, RevisionNotFoundError):
            return ModelLoadError(
                f"{repo} has no such revision on the Hub.", "Leave the revision empty for the default."
            )
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, RepositoryNotFoundError) and status == 404:
            return ModelLoadError(
                f"{repo} does not exist on the Hugging Face Hub.",
                "Check the spelling: owner/name, as on the model's page (for example Qwen/Qwen2.5-0.5B-Instruct).",
            )
        if isinstance(e, (RepositoryNotFoundError, HfHubHTTPError)) and status == 401:
            return ModelLoadError(
                f"{repo} was not found on the Hub without a login (401): it does not exist, or it is private.",
                f"Check the spelling; for a private model: {LOGIN_TIP}",
            )
        if isinstance(e, (RepositoryNotFoundError, HfHubHTTPError)) and status == 403:
            return ModelLoadError(
                f"The Hub refused {repo} (403): it is private or gated, and this machine's login has no access.",
                f"Ask for access on https://huggingface.co/{repo} (a gated model: accept its licence there); "
                f"then: {LOGIN_TIP}",
            )
    if any(_is_network_error(e) for e in chain):
        why = hub_unreachable() or f"the connection failed ({str(chain[-1]).splitlines()[0][:120]})"
        return ModelLoadError(
            f"{repo} cannot be downloaded: the Hugging Face Hub is out of reach: {why}.", no_network_tip(why)
        )
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return ModelLoadError(
        f"Downloading {repo} failed: {first}", "Try again; the files already here are kept and it resumes."
    )


def _is_network_error(e: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(e, httpx2.TransportError):
            return True
    except ImportError:
        pass
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(e, (ConnectionError, TimeoutError, LocalEntryNotFoundError))


def cache_dir() -> Path:
    """The Hugging Face cache the loaders read (HF_HUB_CACHE, or HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or the nearest parent that exists)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def progress_bar_class(report: Callable[[int], None], should_stop: Callable[[], bool]) -> type:
    """A progress-bar class for snapshot_download (the part of tqdm's interface it uses): reports the bytes written
    (its byte bars' largest count) and stops the download when `should_stop()` says so. Draws nothing, and is not a
    tqdm subclass, so what patches tqdm (Gradio's track_tqdm) leaves it alone."""
    lock = threading.Lock()
    byte_bars: list[StudioBar] = []

    class StudioBar:
        def __init__(self, iterable=None, desc: str | None = None, total: float | None = None, **kwargs) -> None:
            self.iterable, self.desc, self.total = iterable, desc or "", total
            self.n = kwargs.get("initial", 0) or 0
            self.unit = kwargs.get("unit", "it")
            self.format_dict = {"rate": None}
            if self.unit == "B":
                with lock:
                    byte_bars.append(self)

        def __enter__(self) -> StudioBar:
            return self

        def __exit__(self, *exc) -> None:
            self.close()

        def __iter__(self):
            yield from self.iterable or ()

        def update(self, n: float | None = 1) -> None:
            if should_stop():
                raise DownloadCancelled
            self.n += n or 0
            if self.unit == "B":
                with lock:
                    done = max(int(b.n) for b in byte_bars)
                report(done)

        def close(self) -> None:
            pass

        def refresh(self, *args, **kwargs) -> None:
            pass

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            self.desc = desc or ""

        set_description_str = set_description

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            pass

    return StudioBar


def plan_files(repo: str, revision: str | None = None, should_stop: Callable[[], bool] = lambda: False) -> list:
    """The files a download would fetch, with their sizes and whether they are cached (one HEAD per file)."""
    from huggingface_hub import snapshot_download

    from studio.models.hub import hub_endpoint

    return snapshot_download(
        repo,
        revision=revision,
        allow_patterns=LM_PATTERNS,
        ignore_patterns=LM_IGNORE,
        endpoint=hub_endpoint(),
        dry_run=True,
        tqdm_class=progress_bar_class(lambda n: None, should_stop),
    )


def download_snapshot(
    repo: str,
    revision: str | None = None,
    *,
    on_progress: Callable[[int, int, int], None] = lambda done, total, files: None,
    should_stop: Callable[[], bool] = lambda: False,
    offline: bool = False,
) -> Path:
    """Download `repo` into the Hugging Face cache and return its snapshot folder. `on_progress(done, total, files)`
    follows the bytes; `should_stop()` cancels (DownloadCancelled; the files fetched so far are kept and a new
    download resumes). Raises ModelLoadError with the reason otherwise."""
    from huggingface_hub import snapshot_download

    from studio.models.hub import hub_endpoint

    if offline:
        raise ModelLoadError(f"{repo} cannot be downloaded: the studio runs offline (--offline).", OFFLINE_TIP)
    why = hub_unreachable()
    if why:
        raise ModelLoadError(
            f"{repo} cannot be downloaded: the Hugging Face Hub is out of reach: {why}.", no_network_tip(why)
        )
    try:
        files = plan_files(repo, revision, should_stop)
    except DownloadCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the page
        raise explain(repo, exc) from None
    total = sum(f.file_size or 0 for f in files)
    cached = sum(f.file_size or 0 for f in files if not f.will_download)
    needed = total - cached
    free = free_bytes(cache_dir())
    if needed > free:
        raise ModelLoadError(
            f"Not enough disk space for {repo}: it needs {fmt_bytes(needed)} more and the Hugging Face cache "
            f"({cache_dir()}) has {fmt_bytes(free)} free.",
            "Free some space, or set HF_HOME to a bigger disk and restart the studio, then Download again.",
        )
    if not any(f.filename.endswith(".safetensors") for f in files):
        raise ModelLoadError(
            f"{repo} has no .safetensors weights; the studio does not load pickle (.bin) weights from the Hub.",
            "Pick a repository that ships safetensors (most do), or convert the weights first.",
        )
    on_progress(cached, total, len(files))
    bar = progress_bar_class(lambda n: on_progress(min(total, cached + n), total, len(files)), should_stop)
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=LM_PATTERNS,
            ignore_patterns=LM_IGNORE,
            endpoint=hub_endpoint(),
            tqdm_class=bar,
            max_workers=MAX_WORKERS,
        )
    except DownloadCancelled:
        raise
    except Exception as exc:  # noqa: BLE001
        if should_stop():
            raise DownloadCancelled from None
        raise explain(repo, exc) from None
    on_progress(total, total, len(files))
    return Path(folder)


class HubDownloads:
    """The studio's Hub downloads: one background thread per repository, their status for every page, cancel."""

    def __init__(self, offline: bool = False) -> None:
        self.offline = offline
        self._lock = threading.Lock()
        self._status: dict[str, DownloadStatus] = {}
        self._stop: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}

    def is_downloaded(self, repo: str) -> bool:
        return cached_snapshot(repo) is not None

    def start(self, repo: str, revision: str | None = None) -> DownloadStatus:
        """Start downloading `repo` (a download of it already running is left to run)."""
        with self._lock:
            now = self._status.get(repo)
            if now is not None and now.running:
                return now
            stop = threading.Event()
            status = DownloadStatus(repo, "checking", started=time.time())
            self._status[repo], self._stop[repo] = status, stop
            thread = threading.Thread(
                target=self._run, args=(repo, revision, stop), name=f"download-{repo}", daemon=True
            )
            self._threads[repo] = thread
        thread.start()
        return status

    def _set(self, repo: str, **changes) -> None:
        with self._lock:
            self._status[repo] = replace(self._status[repo], **changes)

    def _run(self, repo: str, revision: str | None, stop: threading.Event) -> None:
        def progress(done: int, total: int, files: int) -> None:
            self._set(repo, state="downloading", done_bytes=done, total_bytes=total, files=files)

        try:
            folder = download_snapshot(
                repo, revision, on_progress=progress, should_stop=stop.is_set, offline=self.offline
            )
        except DownloadCancelled:
            self._set(repo, state="cancelled", finished=time.time())
        except ModelLoadError as exc:
            self._set(repo, state="failed", message=str(exc), finished=time.time())
        except Exception as exc:  # noqa: BLE001 - the thread never dies silently
            self._set(repo, state="failed", message=str(explain(repo, exc)), finished=time.time())
        else:
            self._set(repo, state="done", message=str(folder), finished=time.time())

    def cancel(self, repo: str) -> DownloadStatus | None:
        """Ask a running download to stop (after the chunk it is writing)."""
        with self._lock:
            stop, status = self._stop.get(repo), self._status.get(repo)
        if stop is not None and status is not None and status.running:
            stop.set()
        return status

    def status(self, repo: str) -> DownloadStatus | None:
        with self._lock:
            return self._status.get(repo)

    def wait(self, repo: str, timeout: float | None = None) -> DownloadStatus | None:
        """Block until `repo`'s download ends (tests, the API)."""
        with self._lock:
            thread = self._threads.get(repo)
        if thread is not None:
            thread.join(timeout)
        return self.status(repo)
