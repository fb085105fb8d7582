"""Stopping and resuming a run: `trainer_state.pt` and the SIGINT/SIGTERM handling around it.

The state holds the weights, the optimizer, the schedule, the gradient scaler, every process's
random-number state and where the loop stood. It is written (by rank 0 alone, atomically) at the end
of every epoch and when a signal asks the run to stop; `--resume` continues from it:

- with the same number of processes, exactly: the same batches, the same dropout masks, the same
  final weights as a run that was never interrupted;
- with another number, at the same step with the same global batch (the per-process batch and the
  gradient accumulation are recomputed, and the log says how); dropout masks then differ.

Under torchrun every rank must stop at the same step, or the others would wait forever in the next
gradient all-reduce: a signal sets a flag on the rank that got it, and the flag travels with the
step's loss all-reduce, so all ranks see it after the same step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from contract.files import atomic_write
from training import distributed
from training.launch import Context

log = logging.getLogger("training")

STATE_FILE = "trainer_state.pt"
# torchrun's agent passes a Ctrl-C on to its workers, which the terminal has already signalled:
# repeats this close together are one request, not the "again to abort" one
SIGNAL_GRACE_SECONDS = 2.0
# the options that decide the global batch; another process count may change them on resume
BATCH_KEYS = ("batch_size", "grad_accum")
OPTIONAL_DEFAULTS = {"grad_accum": 1}  # keys a state written before they existed did not record


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save and stop after the current step; another one aborts."""

    def __init__(self, grace: float = 0.0):
        self.signum: int | None = None
        self.grace, self.when = grace, 0.0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is not None:
            if now - self.when > self.grace:
                raise KeyboardInterrupt
            return
        self.signum, self.when = signum, now
        log.warning(f"{signal.Signals(signum).name}: saving the state after this step (again to abort)")

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def agree(self, ctx: Context, device, *values: float) -> tuple[bool, list[float]]:
        """(did any rank ask to stop, `values` summed over the ranks), in one all-reduce."""
        if not ctx.enabled:
            return self.requested, list(values)
        *summed, stops = distributed.sum_across([*values, float(self.requested)], ctx, device)
        if stops and self.signum is None:  # another rank was signalled: this one stops with it
            self.signum, self.when = signal.SIGTERM, time.monotonic()
        return bool(stops), [float(v) for v in summed]


# ---- the state file ---------------------------------------------------------------------------
def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save(path: Path, ctx: Context, state: dict) -> None:
    """Every rank calls this (their random states are gathered); rank 0 writes, then all wait for it,
    so no rank exits on an interruption before the state is whole on disk."""
    rngs = distributed.gather(rng_state(), ctx)
    if ctx.is_main:
        atomic_write(path, lambda tmp: torch.save({**state, "rng": rngs}, tmp))
    distributed.barrier(ctx)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def check(saved: dict, now: dict) -> list[str]:
    """What differs between the fingerprint saved with a state and this run's, beyond what a change
    in the number of processes may change."""
    saved_cfg = {**OPTIONAL_DEFAULTS, **saved["config"]}
    same_world = saved.get("processes", 1) == now["processes"]
    diff = [k for k, v in now["config"].items() if (same_world or k not in BATCH_KEYS) and saved_cfg.get(k) != v]
    diff += [k for k in ("model", "trainable", "rows") if saved[k] != now[k]]
    return diff


def saved_global_batch(fp: dict) -> int:
    cfg = {**OPTIONAL_DEFAULTS, **fp["config"]}
    return fp.get("global_batch", cfg["batch_size"] * cfg["grad_accum"])


def adapt_batch(global_batch: int, ctx: Context, batch_size: int) -> tuple[int, int]:
    """(per-process batch, accumulation steps) that make `global_batch` on this many processes, the
    per-process batch no larger than asked."""
    per_rank = math.ceil(global_batch / ctx.world_size)
    micro = min(batch_size, per_rank)
    return micro, math.ceil(per_rank / micro)


def restore_rng(state: dict, ctx: Context, seed: int, progress: dict) -> bool:
    """Each rank takes back its own random state; returns False when the process count changed, in
    which case each rank starts a fresh stream derived from (seed, rank, position in the run)."""
    rngs = state.get("rng") or [{"torch": state["torch_rng"], "cuda": state.get("cuda_rng")}]
    if len(rngs) != ctx.world_size:
        fresh = np.random.SeedSequence([seed, ctx.rank, progress["epoch"], progress["step"]]).generate_state(1)
        torch.manual_seed(int(fresh[0]))
        return False
    mine = rngs[ctx.rank]
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["cuda"])
    return True
