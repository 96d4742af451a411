"""Fine-tune runs as the studio process sees them: create a run folder, start the worker as a child process under a
memory reservation, stop, resume, list, merge, and re-adopt the workers a studio that died left training.
Imports no torch: the worker does the training.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import BudgetError, InputError, StudioError
from studio.models.estimate import weights_info
from studio.models.leases import Reservation
from studio.models.manager import ModelManager
from studio.models.records import Plan
from studio.models.specs import ModelSpec
from studio.text import fmt_bytes
from studio.training.datasets import Dataset, split, write_jsonl
from studio.training.job import (
    ACTIVE_STATES,
    JobEstimate,
    RunDir,
    TrainJob,
    check_disk,
    estimate_job,
    new_run_dir,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULE = "studio.training.worker"
POLL_ADOPTED = 0.5  # seconds between checks that an adopted worker (not our child: no wait()) still runs
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPlan:
    """What starting a job would take, shown before it starts."""

    estimate: JobEstimate
    budget: int
    plan: Plan  # what the manager would evict to make room
    free_disk: int

    @property
    def message(self) -> str:
        e = self.estimate
        head = f"Memory: {e.breakdown()}, against a budget of {fmt_bytes(self.budget)}."
        if not self.plan.fits:
            return f"{head} It does not fit: {self.plan.reason}"
        moves = ""
        if self.plan.evictions:
            names = ", ".join(f"{ev.name} ({ev.action})" for ev in self.plan.evictions)
            moves = f" Starting makes room by moving {names}."
        disk = f" Disk: checkpoints take up to {fmt_bytes(e.disk_bytes)}; {fmt_bytes(self.free_disk)} free."
        return head + moves + disk


@dataclass
class _Active:
    """A worker this studio accounts for: its own child, or one adopted from a studio that died."""

    run: RunDir
    pid: int
    reservation: Reservation | None
    proc: subprocess.Popen | None = None  # None when adopted: not our child, so it is polled, never waited on
    log: Any = None  # our child's worker.log handle, closed when it ends

    def running(self) -> bool:
        return self.proc.poll() is None if self.proc is not None else is_worker(self.pid, self.run)


def is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def is_worker(pid: int | None, run: RunDir) -> bool:
    """`pid` is alive and is the training worker of `run`, not a process that took the pid of one that ended."""
    if not is_alive(pid):
        return False
    import psutil

    try:
        args = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return False
    if WORKER_MODULE not in args or "--merge" in args:
        return False
    return any(_same_path(arg, run.path) for arg in args[args.index(WORKER_MODULE) + 1 :])


def _same_path(arg: str, path: Path) -> bool:
    try:
        return not arg.startswith("-") and os.path.samefile(arg, path)
    except OSError:
        return False


class RunManager:
    """The studio's fine-tune runs under `runs_root`; at most one trains at a time (one GPU).
    `orphan_training` is what a worker does when this studio dies: "keep" training (the next studio's `adopt`
    takes it on) or "stop" with its adapter saved."""

    def __init__(
        self,
        manager: ModelManager,
        runs_root: Path,
        *,
        python: str = sys.executable,
        orphan_training: str = "keep",
    ) -> None:
        self.manager = manager
        self.root = Path(runs_root)
        self.python = python
        self.orphan_training = orphan_training
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()

    # ----- planning -----------------------------------------------------------------------------------------

    def estimate(self, job: TrainJob) -> JobEstimate:
        spec = ModelSpec(
            "base-for-training", job.base_model, "hub" if job.source_type == "hub" else "folder", job.load_precision
        )
        info = weights_info(spec)
        return estimate_job(job, info)

    def plan(self, job: TrainJob) -> JobPlan:
        est = self.estimate(job)
        plan = self.manager.plan_reservation(est.total)  # what `manager.reserve` would park or unload, read-only
        self.root.mkdir(parents=True, exist_ok=True)
        return JobPlan(est, self.manager.budget_bytes(), plan, shutil.disk_usage(self.root).free)

    # ----- runs ---------------------------------------------------------------------------------------------

    def create(self, job: TrainJob, dataset: Dataset, eval_fraction: float = 0.1) -> RunDir:
        """A new run folder with its data and job.json (written before anything starts)."""
        train, evals = split(dataset.samples, eval_fraction, job.seed)
        job = TrainJob(
            **{
                **job.__dict__,
                "dataset_name": dataset.name,
                "dataset_shape": dataset.mapping.shape,
                "train_rows": len(train),
                "eval_rows": len(evals),
            }
        )
        job.check()
        run = new_run_dir(self.root, job.base_label or Path(job.base_model).name)
        write_jsonl(run.train_file, train)
        write_jsonl(run.eval_file, evals)
        run.write_job(job)
        run.write_status(state="created", step=0, total_steps=0, message="Created; not started yet.")
        return run

    def get(self, name: str) -> RunDir:
        name = (name or "").strip()
        run = RunDir(self.root / name)
        if not name or "/" in name or name.startswith(".") or not run.job_file.is_file():
            raise InputError(f"No run named {name!r} in {self.root}.", "Pick a run from the list.")
        return run

    def start(self, run: RunDir, *, fresh: bool = False) -> int:
        """Start (or resume) the worker for `run`: reserve its memory, check the disk, launch the child process."""
        job = run.job()
        job.check()
        with self._lock:
            busy = [n for n, a in self._active.items() if a.running()]
            if busy:
                raise StudioError(
                    f"The run {busy[0]} is still training.", "Stop it first: one fine-tune runs at a time."
                )
            est = self.estimate(job)
            check_disk(self.root, est.disk_bytes)
            try:
                reservation = self.manager.reserve(f"fine-tune {run.name}", est.total)
            except BudgetError as exc:
                raise BudgetError(
                    f"This job needs {fmt_bytes(est.total)} ({est.breakdown()}); {exc.message}",
                    "Use QLoRA, a smaller batch or cutoff, gradient checkpointing, or a smaller model.",
                ) from None
            run.stop_file.unlink(missing_ok=True)
            status = run.status()
            run.write_status(
                **{**status, "state": "starting", "message": "Starting the worker", "pid": None, "exit_code": None}
            )
            log = open(run.log_file, "a", encoding="utf-8")  # noqa: SIM115 - closed by the watcher thread
            env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_pythonpath())
            command = [self.python, "-m", WORKER_MODULE, str(run.path), "--orphan-training", self.orphan_training]
            command += ["--fresh"] if fresh else []
            try:
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
            except OSError as exc:
                reservation.release()
                log.close()
                raise StudioError(f"Could not start the training worker ({exc}).") from None
            reservation.attach_pid(proc.pid)
            self._active[run.name] = _Active(run, proc.pid, reservation, proc, log)
        threading.Thread(target=self._watch, args=(run, proc), daemon=True, name=f"watch-{run.name}").start()
        return proc.pid

    def adopt(self) -> list[str]:
        """Take on the workers a studio that died (kill -9, a crash) left training: their memory is reserved again
        and one fine-tune at a time still holds until they end. Returns the names of the runs adopted."""
        adopted = []
        for run in self.runs():
            status = run.status()
            pid = status.get("pid")
            if status.get("state") not in ACTIVE_STATES or not is_worker(pid, run):
                continue
            with self._lock:
                if run.name in self._active:
                    continue
                active = _Active(run, pid, self._reserve_adopted(run, pid))
                self._active[run.name] = active
            threading.Thread(target=self._watch_adopted, args=(active,), daemon=True, name=f"adopt-{run.name}").start()
            log.info("Re-adopted the training worker %s of %s", pid, run.name)
            adopted.append(run.name)
        return adopted

    def _reserve_adopted(self, run: RunDir, pid: int) -> Reservation | None:
        """The reservation `start` made for this worker, made again; None (logged) if it cannot be."""
        try:
            nbytes = self.estimate(run.job()).total
            return self.manager.reserve(f"fine-tune {run.name}", nbytes, pid)
        except StudioError as exc:  # the worker runs and is ours to stop, whatever its memory; say why it is uncounted
            log.warning("The running fine-tune %s is not accounted in the budget: %s", run.name, exc)
            return None

    def _watch(self, run: RunDir, proc: subprocess.Popen) -> None:
        self._ended(run, proc.wait())

    def _watch_adopted(self, active: _Active) -> None:
        while active.running():
            time.sleep(POLL_ADOPTED)
        self._ended(active.run, None)  # not our child: its exit code is not ours to read

    def _ended(self, run: RunDir, code: int | None) -> None:
        """A worker ended: release its reservation, and mark it interrupted if it died without saying so."""
        with self._lock:
            active = self._active.pop(run.name, None)
        if active is not None:
            if active.reservation is not None:
                active.reservation.release()
            if active.log is not None:
                active.log.close()
        status = run.status()
        if status.get("state") in ACTIVE_STATES or status.get("state") == "starting":
            # the worker died without saying so (killed, crashed hard): the last checkpoint is still there
            steps = run.checkpoint_steps()
            where = f"Resume continues from step {steps[-1]}." if steps else "No checkpoint yet: Resume starts over."
            run.write_status(
                **{**status, "state": "interrupted", "exit_code": code, "message": f"Worker ended ({code}). {where}"}
            )
        else:
            run.write_status(**{**status, "exit_code": code})

    def stop(self, run: RunDir) -> bool:
        """Ask the worker to stop after its current step (it saves an adapter). False if it was not running."""
        if not self.is_running(run):
            return False
        run.stop_file.touch()
        return True

    def is_running(self, run: RunDir) -> bool:
        with self._lock:
            active = self._active.get(run.name)
        if active is not None:
            return active.running()
        return run.status().get("state") in ACTIVE_STATES and is_alive(run.status().get("pid"))

    def wait(self, run: RunDir, timeout: float | None = None) -> int | None:
        """Wait for the worker to end (tests, scripts); its exit code, or None if it is not our child (an adopted
        worker is waited for all the same)."""
        with self._lock:
            active = self._active.get(run.name)
        if active is None:
            return None
        if active.proc is not None:
            code = active.proc.wait(timeout)
        else:
            code, end = None, None if timeout is None else time.monotonic() + timeout
            while active.running():
                if end is not None and time.monotonic() > end:
                    raise subprocess.TimeoutExpired(f"worker {active.pid}", timeout)
                time.sleep(0.05)
        deadline = time.monotonic() + 5
        while run.name in self._active and time.monotonic() < deadline:  # let the watcher finish its bookkeeping
            time.sleep(0.02)
        return code

    def pid(self, run: RunDir) -> int | None:
        with self._lock:
            active = self._active.get(run.name)
        return active.pid if active else None

    def state(self, run: RunDir) -> dict[str, Any]:
        """status.json, with a worker that died unseen (another studio process, a reboot) marked interrupted."""
        status = run.status()
        if status.get("state") in ACTIVE_STATES and not self.is_running(run) and not is_alive(status.get("pid")):
            status = {**status, "state": "interrupted", "message": "The worker is gone; Resume continues."}
        return status

    def runs(self) -> list[RunDir]:
        """Run folders, newest first."""
        if not self.root.is_dir():
            return []
        found = [RunDir(p) for p in self.root.iterdir() if p.is_dir() and (p / "job.json").is_file()]
        return sorted(found, key=lambda r: r.job_file.stat().st_mtime, reverse=True)

    def merge(self, run: RunDir, timeout: float = 3600) -> Path:
        """Merge the adapter into the base (in a child process, so its memory returns) -> RUN_DIR/merged."""
        if not (run.adapter / "adapter_config.json").is_file():
            raise StudioError(f"{run.name} has no adapter yet.", "Train (or stop) the run first.")
        if self.is_running(run):
            raise StudioError(f"{run.name} is still training.", "Merge after it has finished or stopped.")
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        done = subprocess.run(
            [self.python, "-m", WORKER_MODULE, str(run.path), "--merge"],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(ROOT),
            timeout=timeout,
        )
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error:")]
            raise StudioError(f"Merge failed: {(errors or lines or ['no output'])[-1][:300]}")
        return run.merged

    def close(self) -> None:
        """Ask running workers to stop (the studio is shutting down)."""
        with self._lock:
            items = list(self._active.items())
        for name, active in items:
            if active.running():
                (self.root / name / "STOP").touch()


def _pythonpath() -> str:
    extra = os.environ.get("PYTHONPATH", "")
    return str(ROOT) + (os.pathsep + extra if extra else "")
