"""What the benchmark runs on: the CPU (contract/cpu.py: name, cores, instruction sets), GPUs, and
this CPU's GEMM rates, fp32 and INT8.

A GEMM rate is the yardstick of FLOP utilisation: a one-MatMul ONNX graph (n x n @ n x n) run by
ONNX Runtime, the library the served ONNX models run on, on as many threads as they use. fp32
backends are read against the fp32 rate (MatMul, float32), INT8 backends against the INT8 rate
(MatMulInteger, uint8 x int8 -> int32: the integer GEMM both INT8 graphs reach, the QDQ graph
after ONNX Runtime fuses its Q/DQ pairs and the dynamically quantized one directly), because on a
CPU with VNNI or AMX the integer GEMM runs several times faster than the float one and an INT8
backend read against the fp32 rate says nothing about its headroom. Each rate is measured just
before each round (median of `reps` timed runs after a warm-up), because the speed of a shared
machine drifts over minutes and each round is read against its own rate. Further rates go beside
these as further entries of GEMM_GRAPHS, with the same result fields, and into the benchmark's
meta under `matmul_<dtype>`.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import time

import numpy as np

from contract.cpu import cpu_info, has_vnni  # noqa: F401  (the benchmark's CPU facts, one place: contract/cpu.py)


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return [n.strip() for n in out.stdout.splitlines() if n.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        return []


def _matmul_graph(n: int, dtype: str) -> bytes:
    """A serialized ONNX graph c = a @ b on (n, n) inputs: float32 MatMul, or for "int8" MatMulInteger
    of uint8 a and int8 b into int32 (no zero points: the GEMM alone)."""
    from onnx import TensorProto, helper

    if dtype == "fp32":
        types, op, out = (TensorProto.FLOAT, TensorProto.FLOAT), "MatMul", TensorProto.FLOAT
    else:
        types, op, out = (TensorProto.UINT8, TensorProto.INT8), "MatMulInteger", TensorProto.INT32
    a, b = (helper.make_tensor_value_info(x, t, [n, n]) for x, t in zip("ab", types))
    c = helper.make_tensor_value_info("c", out, [n, n])
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8      # readable by every ONNX Runtime this project pins
    return model.SerializeToString()


# dtype -> (what the report calls the operation, the unit of its rate)
GEMM_GRAPHS = {"fp32": ("ONNX Runtime MatMul", "GFLOP/s"), "int8": ("ONNX Runtime MatMulInteger", "GOP/s")}


def _inputs(n: int, dtype: str) -> dict:
    rng = np.random.default_rng(0)
    if dtype == "fp32":
        return {x: rng.standard_normal((n, n), dtype=np.float32) for x in "ab"}
    return {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}


class GemmRate:
    """GEMM rate of ONNX Runtime on this CPU (fp32 GFLOP/s or INT8 GOP/s); `measure()` once per round."""

    def __init__(self, n: int = 2048, reps: int = 10, threads: int = 0, dtype: str = "fp32"):
        from contract.onnx_session import open_session

        if dtype not in GEMM_GRAPHS:
            raise ValueError(f"GEMM rate dtype {dtype!r}: choose from {sorted(GEMM_GRAPHS)}")
        self.n, self.reps, self.dtype = n, max(1, reps), dtype
        self.threads = threads or os.cpu_count() or 1
        self.session = open_session(_matmul_graph(n, dtype), self.threads)
        self.feeds = _inputs(n, dtype)

    def measure(self) -> dict:
        """{"gflops": the median rate (GOP/s for int8: the same field, see "unit"), "best_gflops", ...}."""
        self.session.run(None, self.feeds)            # warm-up: thread pool, caches
        times = []
        for _ in range(self.reps):
            t = time.perf_counter()
            self.session.run(None, self.feeds)
            times.append(time.perf_counter() - t)
        ops = 2 * self.n ** 3
        source, unit = GEMM_GRAPHS[self.dtype]
        return {"gflops": ops / statistics.median(times) / 1e9, "best_gflops": ops / min(times) / 1e9,
                "n": self.n, "reps": self.reps, "threads": self.threads, "dtype": self.dtype,
                "source": source, "unit": unit}
