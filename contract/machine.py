"""What a figure was measured on: the CPU's name, its cores and the instruction sets that decide speed.

Every speed figure the project prints names its CPU beside it (two machines of one kind may differ:
with or without AVX-512 VNNI, say), so the benchmarks of every stage read it from here.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# the instruction sets that change what fp32 and int8 kernels can do
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu_info() -> dict:
    """{"cpu": model name, "logical_cores", "physical_cores" (None when unknown), "isa": [flags present]}."""
    import psutil

    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "model name" and name in (platform.processor(), platform.machine()):
                name = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def has_vnni(isa: list[str]) -> bool:
    """Whether int8 dot products run in one instruction (AVX-512 VNNI or AVX-VNNI)."""
    return "avx512_vnni" in isa or "avx_vnni" in isa


def describe_cpu() -> str:
    """One line for a report: 'AMD EPYC, 2 logical cores, avx2 fma avx512f ...'."""
    c = cpu_info()
    return f"{c['cpu']}, {c['logical_cores']} logical cores, {' '.join(c['isa']) or 'no AVX2'}"
