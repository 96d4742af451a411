"""This process's place in a torchrun / accelerate launch group, and the few collective calls training needs.

A worker run alone is a group of one: every method is then a no-op and torch.distributed is never imported.
"""

from __future__ import annotations

import os
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
