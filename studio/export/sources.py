"""What an export starts from: a fine-tune run folder, a transformers model folder (or a Hub id already
downloaded), or the word `starter`. Resolved and checked before anything heavy is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from studio.errors import InputError
from studio.export.convert import Architecture, architecture, read_config
from studio.training.job import ACTIVE_STATES, RunDir

STARTER = "starter"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SOURCE_TIP = "Give a fine-tune run folder (with job.json), a model folder (with config.json), or the word starter."


@dataclass(frozen=True)
class ExportSource:
    """A resolved, checked source."""

    kind: str  # run | folder | starter
    label: str  # its name in file names and the GGUF metadata (the run's or the model's)
    model_folder: Path  # the transformers folder of the weights, or of the run's base: config and tokenizer
    arch: Architecture  # the covered architecture of that folder
    run: RunDir | None = None  # the run, for kind "run"
    base_label: str = ""  # the base model's name, for a run

    @property
    def is_run(self) -> bool:
        return self.run is not None


def resolve(source: str, data_dir: Path) -> ExportSource:
    """The source the user named, checked: a run with an adapter, a covered architecture, local files."""
    text = (source or "").strip()
    if not text:
        raise InputError("Name what to export.", SOURCE_TIP)
    if text == STARTER:
        from studio.models.starter import STARTER_NAME, ensure_starter

        folder = ensure_starter(Path(data_dir) / "models")
        return ExportSource("starter", STARTER_NAME, folder, architecture(read_config(folder), STARTER_NAME))
    path = Path(text).expanduser()
    if path.is_dir() and (path / "job.json").is_file():
        return _run(RunDir(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: neither a run folder (job.json) nor a model folder (config.json).", SOURCE_TIP)
        folder = path.resolve()
        return ExportSource("folder", folder.name, folder, architecture(read_config(folder), folder.name))
    if path.is_file():
        kind = "a GGUF file already" if path.suffix.lower() == ".gguf" else "a file, not a folder"
        raise InputError(f"{path}: {kind}.", SOURCE_TIP)
    if HUB_ID.match(text):
        folder = hub_folder(text)
        return ExportSource("folder", text.split("/")[-1], folder, architecture(read_config(folder), text))
    raise InputError(f"{text}: no such folder.", SOURCE_TIP)


def _run(run: RunDir) -> ExportSource:
    job = run.job()
    if not (run.adapter / "adapter_config.json").is_file():
        raise InputError(f"The run {run.name} has no adapter yet.", "Train (or stop) the run first, then export it.")
    status = run.status()
    if status.get("state") in ACTIVE_STATES and _alive(status.get("pid")):
        raise InputError(f"The run {run.name} is still training.", "Export it after it has finished or stopped.")
    base = Path(job.base_model).expanduser()
    if job.source_type == "hub" and not base.is_dir():
        base = hub_folder(job.base_model)
    elif not base.is_dir():
        raise InputError(f"The run's base model {job.base_model} is not on this machine any more.")
    label = job.base_label or base.name
    return ExportSource("run", run.name, base, architecture(read_config(base), label), run, label)


def hub_folder(repo: str) -> Path:
    """The local snapshot of a Hub model that was downloaded before; the export never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, a bad id, no huggingface_hub: the same answer
        raise InputError(
            f"{repo} is not downloaded on this machine.", "Load it once in the Chat tab (or give a local folder)."
        ) from None


def _alive(pid: object) -> bool:
    from studio.training.runs import is_alive

    return isinstance(pid, int) and is_alive(pid)
