"""How training speed scales with processes (a command, not a test): `python -m training bench --processes 1,2`.

One group of worker processes per process count, all started before any timing and kept alive;
they take turns (the order rotates every round), so one run shows them side by side under the same
machine load, and an idle group blocks on its queue without using a core. Every worker runs one
thread and the trainer's own step (training/loop.TrainStep) under the trainer's DDP wrapper (gloo),
on a shard of the same global batch (training/distributed.shard): 1 process steps through the whole
batch, N processes through 1/N each and all-reduce the gradients. Figures: training samples/s (the
global batch x steps / wall time of the steps), the speedup over 1 process, and the scaling
efficiency = speedup / processes (1.0 = perfect).

Weights are random from the model's config.json: speed does not depend on their values.
"""
from __future__ import annotations

import os
import queue
import socket
import statistics
import time

import numpy as np
import torch
import torch.multiprocessing as mp

from contract.cpu import cpu_info, describe

READY_TIMEOUT = 600  # seconds for a group to load and warm up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, spec: dict, commands, results) -> None:
    """One process of a group: set up as torchrun would, warm up, then time `steps` on command."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from training import distributed
    from training.bench import synthetic_batch
    from training.config import BertConfig
    from training.loop import TrainStep, make_optimizer, make_scheduler
    from training.model import BertForSequenceClassification

    ctx, device = distributed.setup("cpu")
    config = BertConfig.from_json_file(os.path.join(spec["model"], "config.json")).with_labels(["neg", "pos"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], 1e-5, 0.01, device)
    step = TrainStep(model, opt, make_scheduler(opt, 10**6, 0.0), net=distributed.wrap(model, ctx, device))
    batch = synthetic_batch(config, spec["batch_size"], spec["seq_len"])  # the same global batch on every rank
    per_rank = -(-spec["batch_size"] // world)
    micro = [({k: v[torch.as_tensor(idx)] for k, v in batch.items()}, w)
             for idx, w in distributed.shard(np.arange(spec["batch_size"]), ctx, per_rank)]
    step(micro)  # warm-up: first-call allocations, optimizer state, gloo buffers
    results.put(("ready", rank))
    while (steps := commands.get()) is not None:
        distributed.barrier(ctx)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(micro)
        distributed.barrier(ctx)
        if ctx.is_main:
            results.put(("seconds", time.perf_counter() - t0))


class Group:
    """`processes` workers of one job, waiting for a number of steps to time."""

    def __init__(self, processes: int, spec: dict):
        ctx = mp.get_context("spawn")
        self.n, self.results = processes, ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(processes)]
        port = _free_port()
        self.procs = [ctx.Process(target=_worker, args=(r, processes, port, spec, self.commands[r], self.results),
                                  daemon=True) for r in range(processes)]
        for p in self.procs:
            p.start()

    def wait_ready(self) -> None:
        for _ in range(self.n):
            self._get("ready", READY_TIMEOUT)

    def time_steps(self, steps: int) -> float:
        for q in self.commands:
            q.put(steps)
        return self._get("seconds", READY_TIMEOUT)

    def _get(self, kind: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got, value = self.results.get(timeout=1.0)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in self.procs):
                    raise RuntimeError(f"a worker of the {self.n}-process group exited "
                                       f"({[p.exitcode for p in self.procs]})") from None
                continue
            if got == kind:
                return value
        raise TimeoutError(f"the {self.n}-process group gave no {kind!r} within {timeout} s")

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def main(args) -> None:
    from training.fetch import default_base_model

    counts = sorted(set(args.processes))
    if counts[0] != 1:
        counts = [1] + counts  # speedup and efficiency are against one process
    spec = {"model": str(args.model or default_base_model()), "batch_size": args.batch_size, "seq_len": args.seq_len}
    print(f"torch {torch.__version__}; CPU: {describe(cpu_info())}; one thread per process; global batch "
          f"{args.batch_size} x {args.seq_len} tokens (every position a real token); config {spec['model']} "
          f"(random weights); full fine-tuning; {args.steps} steps per turn, {args.repeats} rounds")
    if counts[-1] > (os.cpu_count() or 1):
        print(f"note: {counts[-1]} processes on {os.cpu_count()} CPUs: processes share cores")
    groups = {n: Group(n, spec) for n in counts}
    try:
        for g in groups.values():
            g.wait_ready()
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        rates: dict[int, list[float]] = {n: [] for n in counts}
        for rnd in range(args.repeats):
            order = counts[rnd % len(counts):] + counts[:rnd % len(counts)]
            for n in order:
                rates[n].append(args.batch_size * args.steps / groups[n].time_steps(args.steps))
            print(f"round {rnd + 1}/{args.repeats}: " + ", ".join(f"{n} process{'es' if n > 1 else ''} "
                                                                  f"{rates[n][-1]:.1f} samples/s" for n in counts),
                  flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    finally:
        for g in groups.values():
            g.close()
    print(f"{'processes':>9}  {'samples/s':>9}  {'speedup':>7}  {'efficiency':>10}")
    for n in counts:  # per-round ratios: a slow spell on the machine hits both sides of a ratio alike
        speedup = statistics.median(a / b for a, b in zip(rates[n], rates[1]))
        print(f"{n:>9}  {statistics.median(rates[n]):>9.1f}  {speedup:>6.2f}x  {speedup / n:>10.0%}")
