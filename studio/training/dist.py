"""This process's place in a torchrun / accelerate launch group, and the few collective calls training needs.

A worker run alone is a group of one: every method is then a no-op and torch.distributed is never imported.

`accelerate launch --cpu --num_processes N` starts one process and leaves the other N - 1 to mpirun (its
"multi-CPU" launch needs an MPI hostfile); `accelerate_cpu_processes` notices that and the worker starts the N
processes itself, through torch.distributed.run, so the README's command runs as written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun / accelerate launch group (world 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: str) -> None:
        if self.world > 1:
            import torch.distributed as td

            if device == "cuda":
                import torch

                torch.cuda.set_device(self.local_rank)
            td.init_process_group(backend="nccl" if device == "cuda" else "gloo")

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()

    def sum(self, values: list[float], device: str) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as td

        t = torch.tensor(values, dtype=torch.float64, device=device)
        td.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: str) -> bool:
        return self.sum([1.0 if flag else 0.0], device)[0] > 0

    def wait_all(self, device: str) -> None:
        """Return once every process of the group got here (a one-number all-reduce, so it runs on gloo and nccl)."""
        self.sum([0.0], device)


def _accelerate_args(cmdline: Sequence[str]) -> list[str] | None:
    """The arguments after `launch` when `cmdline` is an `accelerate launch` (any of its spellings), else None."""
    for i, part in enumerate(cmdline):
        name = os.path.basename(part)
        if name == "accelerate-launch" or part == "accelerate.commands.launch":
            return list(cmdline[i + 1 :])
        if part == "launch" and i > 0 and os.path.basename(cmdline[i - 1]).startswith("accelerate"):
            return list(cmdline[i + 1 :])
    return None


def accelerate_cpu_processes(
    environ: dict[str, str] | None = None, parent_cmdline: Sequence[str] | None = None
) -> int:
    """How many processes `accelerate launch --num_processes N` asked for when it started this process alone (its
    simple launcher: the CPU, or no GPU to spread over); 1 when not launched so, or already one of a group."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "LOCAL_RANK" in env or "ACCELERATE_MIXED_PRECISION" not in env:
        return 1  # torchrun / accelerate's multi-GPU launch set RANK; accelerate's simple launcher always sets this
    if parent_cmdline is None:
        try:
            import psutil

            parent_cmdline = psutil.Process().parent().cmdline()
        except Exception:  # noqa: BLE001 - no parent to read: run as one process, as before
            return 1
    rest = _accelerate_args(parent_cmdline)
    if rest is None:
        return 1
    from accelerate.commands.launch import launch_command_parser  # accelerate's own reading of its flags

    try:
        args = launch_command_parser().parse_args(rest)
    except SystemExit:
        return 1
    if args.mpirun_hostfile or (args.num_machines or 1) > 1:
        return 1  # mpirun or other machines start the rest
    return max(1, args.num_processes or 1)


def relaunch(processes: int, argv: Sequence[str]) -> int:
    """Run `python -m studio.training.worker ARGV` as `processes` CPU processes (torch.distributed.run, gloo) at
    accelerate's main process address and port; SIGTERM/SIGINT pass on to them. Returns their exit status."""
    env = os.environ
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command += [
        f"--master_addr={env.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={env.get('MASTER_PORT', '29500')}",
    ]
    command += ["-m", "studio.training.worker", *argv]
    print(f"accelerate launch --cpu: starting {processes} worker processes", file=sys.stderr, flush=True)
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, frame: child.send_signal(sig))  # noqa: ARG005 - handler signature
    return child.wait()
