"""This CPU: its name, cores and the instruction sets that decide how fast the model's matmuls run.

One place for the build report (which names the instruction set next to each exported graph) and
the benchmark (next to every figure), so both call the same CPU the same thing. Reads
/proc/cpuinfo (Linux); elsewhere the flags are unknown and said to be so. Standard library only.

INT8 speed depends on the dot-product instructions ONNX Runtime's integer GEMM (MLAS) can use:
AMX tiles (Sapphire Rapids and later), VNNI (one instruction multiplies u8 x s8 and accumulates
into int32), or, without VNNI, an AVX-512BW / AVX2 sequence whose u8 x s8 pair sums go through
saturating int16 (`vpmaddubsw`): fewer operations per cycle, and large activations times large
weights can saturate. ONNX Runtime advises `reduce_range` (7-bit weights) for dynamically
quantized graphs on such CPUs.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# the flags that decide matmul speed, in /proc/cpuinfo's spelling
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16")


def read_cpuinfo(path: Path = CPUINFO) -> tuple[str | None, set[str], int | None]:
    """-> (model name, flags of the first CPU, physical cores); (None, set(), None) where unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None, set(), None
    name, flags, cores = None, set(), set()
    physical = None
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and name is None:
            name = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    return name, flags, len(cores) or None


def has_vnni(flags) -> bool:
    return "avx512_vnni" in flags or "avx_vnni" in flags


def has_amx_int8(flags) -> bool:
    return "amx_tile" in flags and "amx_int8" in flags


def instruction_sets(flags) -> list[str]:
    """The names people use for them, widest first: e.g. ["AVX2", "AVX-512", "VNNI", "AMX"]."""
    names = []
    if "avx2" in flags:
        names.append("AVX2")
    if "avx512f" in flags:
        names.append("AVX-512")
    if has_vnni(flags):
        names.append("VNNI")
    if "avx512_bf16" in flags:
        names.append("BF16")
    if has_amx_int8(flags):
        names.append("AMX")
    return names


def int8_kernel(flags) -> str:
    """The instructions ONNX Runtime's u8 x s8 GEMM runs on with these flags, best first."""
    if not flags:
        return "unknown (no CPU flags readable)"
    if has_amx_int8(flags):
        return "AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    if "avx512bw" in flags:
        return "AVX-512BW without VNNI (int16 pair sums)"
    if "avx2" in flags:
        return "AVX2 without VNNI (int16 pair sums)"
    return "SSE (no AVX2)"


def fp32_kernel(flags) -> str:
    if "avx512f" in flags:
        return "AVX-512 FMA"
    if "avx2" in flags and "fma" in flags:
        return "AVX2 FMA"
    return "SSE" if flags else "unknown (no CPU flags readable)"


def gemm_instructions(precision: str, flags) -> str:
    """What this CPU runs a graph's matmuls on: int8* graphs the INT8 GEMM's instructions, fp16
    its native fp16 arithmetic where it has some, everything else the fp32 FMA."""
    if precision.startswith("int8"):
        return int8_kernel(flags)
    if precision == "fp16":
        return "AVX-512 FP16" if "avx512_fp16" in flags else "no fp16 arithmetic (a GPU graph)"
    return fp32_kernel(flags)


def int8_reduce_range(flags) -> bool:
    """ONNX Runtime's advice for dynamically quantized graphs: 7-bit weights where the u8 x s8
    GEMM has no VNNI or AMX (its int16 pair sums can saturate)."""
    return bool(flags) and not (has_vnni(flags) or has_amx_int8(flags))


def cpu_info(path: Path = CPUINFO) -> dict:
    """{"cpu", "logical_cores", "physical_cores", "isa": the ISA_FLAGS present, "instruction_sets",
    "int8_kernel"}: JSON-ready, for reports."""
    name, flags, physical = read_cpuinfo(path)
    return {"cpu": name or platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "physical_cores": physical, "isa": [f for f in ISA_FLAGS if f in flags],
            "instruction_sets": instruction_sets(flags), "int8_kernel": int8_kernel(flags)}


def describe(info: dict) -> str:
    """"AMD EPYC, 2 cores, AVX2 AVX-512 VNNI BF16 (INT8 GEMM: AVX-512 VNNI)": one line for a report."""
    sets = " ".join(info.get("instruction_sets") or []) or "no AVX2"
    return (f"{info['cpu']}, {info['logical_cores']} cores, {sets} "
            f"(INT8 GEMM: {info.get('int8_kernel', 'unknown')})")
