"""contract/cpu.py: the CPU facts the build report and the benchmark both print, read from cpuinfo
files in /proc/cpuinfo's format (an Intel without VNNI, an AMD with VNNI, a Sapphire Rapids)."""
import pytest

from contract import cpu

CPUINFO = """processor\t: {i}
vendor_id\t: GenuineIntel
model name\t: {name}
physical id\t: 0
core id\t\t: {core}
flags\t\t: fpu sse sse2 {flags}

"""
XEON = "avx avx2 fma avx512f avx512bw avx512cd"                          # Skylake-class, no VNNI
EPYC = "avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16"   # Zen 4
SPR = EPYC + " amx_tile amx_int8 amx_bf16"                                # Sapphire Rapids


def write(tmp_path, name, flags, cores=2, threads_per_core=1):
    path = tmp_path / "cpuinfo"
    path.write_text("".join(CPUINFO.format(i=i, name=name, core=i // threads_per_core, flags=flags)
                            for i in range(cores * threads_per_core)))
    return path


@pytest.mark.parametrize("flags, sets, kernel, reduce", [
    (XEON, ["AVX2", "AVX-512"], "AVX-512BW without VNNI (int16 pair sums)", True),
    (EPYC, ["AVX2", "AVX-512", "VNNI", "BF16"], "AVX-512 VNNI", False),
    (SPR, ["AVX2", "AVX-512", "VNNI", "BF16", "AMX"], "AMX", False),
    ("avx avx2 fma", ["AVX2"], "AVX2 without VNNI (int16 pair sums)", True),
], ids=["xeon-no-vnni", "epyc-vnni", "sapphire-rapids-amx", "avx2-only"])
def test_instruction_sets_and_the_int8_kernel(tmp_path, flags, sets, kernel, reduce):
    info = cpu.cpu_info(write(tmp_path, "Some CPU @ 2.00GHz", flags))
    assert info["instruction_sets"] == sets and info["int8_kernel"] == kernel
    assert cpu.int8_reduce_range(set(flags.split())) is reduce
    assert cpu.gemm_instructions("int8dyn", set(flags.split())) == kernel
    assert cpu.gemm_instructions("fp32", set(flags.split())) == ("AVX-512 FMA" if "avx512f" in flags else "AVX2 FMA")
    assert cpu.describe(info) == f"Some CPU @ 2.00GHz, {info['logical_cores']} cores, {' '.join(sets)} (INT8 GEMM: {kernel})"


def test_cores_name_and_an_unreadable_cpuinfo(tmp_path):
    name, flags, physical = cpu.read_cpuinfo(write(tmp_path, "AMD EPYC", EPYC, cores=2, threads_per_core=2))
    assert (name, physical) == ("AMD EPYC", 2) and "avx512_vnni" in flags
    name, flags, physical = cpu.read_cpuinfo(tmp_path / "missing")
    assert (name, flags, physical) == (None, set(), None)
    assert cpu.int8_kernel(flags).startswith("unknown") and cpu.int8_reduce_range(flags) is False
    assert cpu.cpu_info(tmp_path / "missing")["cpu"]       # falls back to the platform's name
