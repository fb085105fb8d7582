"""What the benchmark runs on: the CPU (contract/machine.py), GPUs, and this CPU's GEMM rate.

The GEMM rate is the yardstick of FLOP utilisation: a one-MatMul ONNX graph (n x n @ n x n, fp32)
run by ONNX Runtime, the library the served ONNX models run on, on as many threads as they use.
It is measured just before each round (median of `reps` timed runs after a warm-up), because the
speed of a shared machine drifts over minutes and each round is read against its own rate.
Further rates (e.g. an INT8 GEMM, where the CPU has VNNI) go beside `gemm_rate` as their own
functions with the same result fields, and into the benchmark's `matmul` record under their own key.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import time

import numpy as np

from contract.machine import cpu_info, has_vnni  # noqa: F401  (re-exported: what the benchmark runs on)


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return [n.strip() for n in out.stdout.splitlines() if n.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        return []


def _matmul_graph(n: int) -> bytes:
    """A serialized ONNX graph c = a @ b with a, b float32 (n, n)."""
    from onnx import TensorProto, helper

    a, b = (helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab")
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8      # readable by every ONNX Runtime this project pins
    return model.SerializeToString()


class GemmRate:
    """fp32 GEMM GFLOP/s of ONNX Runtime on this CPU; `measure()` once per round."""

    def __init__(self, n: int = 2048, reps: int = 10, threads: int = 0):
        from contract.onnx_session import open_session

        self.n, self.reps = n, max(1, reps)
        self.threads = threads or os.cpu_count() or 1
        self.session = open_session(_matmul_graph(n), self.threads)
        rng = np.random.default_rng(0)
        self.feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in "ab"}

    def measure(self) -> dict:
        self.session.run(None, self.feeds)            # warm-up: thread pool, caches
        times = []
        for _ in range(self.reps):
            t = time.perf_counter()
            self.session.run(None, self.feeds)
            times.append(time.perf_counter() - t)
        flops = 2 * self.n ** 3
        return {"gflops": flops / statistics.median(times) / 1e9, "best_gflops": flops / min(times) / 1e9,
                "n": self.n, "reps": self.reps, "threads": self.threads, "dtype": "fp32",
                "source": "ONNX Runtime MatMul"}
