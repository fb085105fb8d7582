"""Where this process stands in a torchrun job, from the environment torchrun gives each worker.

No torch import: the command line reads this before it decides what to load (rank 0 alone logs and
writes the split), and `python -m training fetch` must stay light.
"""
from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Context:
    """This process's place in the job, from torchrun's environment (one process when absent)."""
    env = os.environ
    return Context(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                   local_rank=int(env.get("LOCAL_RANK", 0)))


def launched() -> bool:
    """Started by torchrun (even with one process): its agent passes signals on to the workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files. Known before any process group exists."""
    return from_env().is_main
