"""Several processes, one run: what the trainer needs from torch.distributed under torchrun.

    torchrun --nproc-per-node 2 -m training fit ...       # gloo on CPU, NCCL on GPUs

torchrun starts one process per device and tells each its place in RANK, LOCAL_RANK and
WORLD_SIZE; `setup` joins the process group from them. Without torchrun (or with one process)
nothing here starts a process group and every helper is the identity, so a single process runs the
same code as before any of this existed.

How the work is shared, so that N processes compute what one process would:
- Training: the global batch (`--batch-size` x processes x `--grad-accum`) is the one a single
  process would draw (same length bucketing, same seed); `shard` hands rank r every N-th of its
  texts (interleaved, so each rank gets short and long ones alike) and cuts that into micro-batches.
  Each micro-batch's mean loss is weighted by its share of the global batch, so the averaged
  gradient is the whole batch's, even when the last batch does not divide evenly.
- Evaluation: rank r scores every N-th length-sorted batch (the same batches one process forms),
  and the logits are summed across ranks into one array every rank holds: the metrics are computed
  on the same numbers one process computes.
- Only rank 0 writes files, logs progress and reports to trackers; the others compute.
"""
from __future__ import annotations

import atexit
import logging
import math

import numpy as np
import torch
import torch.distributed as dist

from contract.errors import UserError
from training.launch import Context, from_env

log = logging.getLogger("training")


class DistributedError(UserError):
    """A launch that cannot work here (e.g. more processes than GPUs on a node); says what to do."""


def pick_device(spec: str, ctx: Context) -> torch.device:
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise DistributedError(f"--device {spec}: CUDA is not available on this machine")
    cuda = spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
    if not ctx.enabled:
        return torch.device(("cuda" if cuda else "cpu") if spec == "auto" else spec)
    if not cuda:
        return torch.device("cpu")
    if ":" in spec:
        raise DistributedError(f"--device {spec}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                               f"pass --device cuda (or auto)")
    if ctx.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK {ctx.local_rank}: this node has {torch.cuda.device_count()} GPU(s); "
                               f"start at most that many processes per node (--nproc-per-node)")
    return torch.device("cuda", ctx.local_rank)


def setup(device_spec: str) -> tuple[Context, torch.device]:
    """Join torchrun's process group (once per process) and pick this process's device."""
    ctx = from_env()
    device = pick_device(device_spec, ctx)
    if not ctx.enabled or dist.is_initialized():
        return ctx, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(_leave)
    if not ctx.is_main:  # one voice in the log: rank 0 speaks for the job, the others only warn
        log.setLevel(max(log.level, logging.WARNING))
    log.info(f"torch.distributed: {ctx.world_size} processes ({dist.get_backend()}), rank 0 on {device}")
    return ctx, device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """The module that runs forward: DistributedDataParallel under torchrun, the model itself alone.

    Only the trainable parameters take part in DDP's gradient all-reduce, so LoRA and frozen layers
    need no find_unused_parameters; the buffers (positions, tabular statistics) never change, so they
    are not re-sent at every forward."""
    if not ctx.enabled:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, forward_sync_buffers=False,
        gradient_as_bucket_view=True)


# ---- collectives (identities in a single process) ---------------------------------------------
def sum_across(values, ctx: Context, device: torch.device) -> np.ndarray:
    """Element-wise sum over the ranks of float64 numbers; every rank gets the result."""
    a = np.asarray(values, dtype=np.float64)
    if not ctx.enabled:
        return a
    t = torch.from_numpy(a.copy()).to(device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def sum_array(a: np.ndarray, ctx: Context, device: torch.device) -> np.ndarray:
    """Sum a float32 array across ranks in place of each rank's (zeros where a rank has nothing)."""
    if not ctx.enabled:
        return a
    t = torch.from_numpy(a).to(device)
    dist.all_reduce(t)  # x + 0 is exact: a value only one rank filled arrives unchanged
    return t.cpu().numpy()


def broadcast(obj, ctx: Context):
    """Rank 0's `obj` on every rank (decisions that depend on files only rank 0 may see change)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, ctx: Context) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


# ---- who computes what ----------------------------------------------------------------------
def shard(global_batch: np.ndarray, ctx: Context, micro_batch: int) -> list[tuple[np.ndarray, float]]:
    """This rank's micro-batches of one global batch, each with its loss weight.

    The weight turns a micro-batch's mean loss into its share of the global mean; DDP averages the
    ranks' gradients, so it carries a factor world_size. A rank left without texts (a last batch
    smaller than the number of processes) still runs one text with weight 0: every rank must take
    part in the gradient all-reduce.
    """
    n = len(global_batch)
    mine = global_batch[ctx.rank::ctx.world_size]
    if len(mine) == 0:
        return [(global_batch[:1], 0.0)]
    # contiguous micro-batches of a length-sorted share: each one pads to a similar length
    parts = np.array_split(mine, math.ceil(len(mine) / micro_batch))
    return [(p, len(p) * ctx.world_size / n) for p in parts]  # exactly 1.0 for an even share


def eval_batches(batches: list[np.ndarray], ctx: Context) -> list[np.ndarray]:
    """Rank r's evaluation batches: every world_size-th of the ones a single process forms."""
    return batches[ctx.rank::ctx.world_size]
