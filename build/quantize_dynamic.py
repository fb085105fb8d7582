"""fp32 ONNX -> INT8 ONNX quantized dynamically by ONNX Runtime: the CPU's second INT8 graph.

The QAT graph (build/quantize.py, exported with Q/DQ pairs) fixes every activation's scale at
calibration and is the one TensorRT takes. This graph instead quantizes the weights once here
(int8, one scale per output channel) and each MatMul's input at run time from its own min/max
(uint8): ONNX Runtime fuses that into DynamicQuantizeMatMul / MatMulIntegerToFloat on the CPU.
Which of the two runs faster depends on the CPU's INT8 instructions (contract/cpu.py), so both
are built, verified against PyTorch fp32 and served, and the benchmark shows the choice.

Only the MatMuls with a constant weight are quantized (the encoder's dense layers, the pooler and
the classifier): the attention products and the embeddings stay in float. Per-channel weight
scales keep the label agreement with fp32 high where one scale per tensor loses the
recovery floor on small fine-tuned models. The source is the padded fp32 export: packing runs the
dense layers on real tokens only but adds gathers and scatters around them that cost an INT8
graph, whose matmuls are cheap, more than the padding they save when the served model runs
length-sorted chunks.

reduce_range (7-bit weights) follows ONNX Runtime's advice for CPUs without VNNI or AMX, whose
u8 x s8 kernels sum pairs in saturating int16; "auto" decides from the CPU the build runs on,
which should be the kind of CPU that serves the graph (the build report names it).
"""
from __future__ import annotations

import logging
from pathlib import Path

from contract.cpu import int8_reduce_range, read_cpuinfo
from contract.files import atomic_write

REDUCE_RANGE = ("auto", "on", "off")


class _NoPreprocessAdvice(logging.Filter):
    """ONNX Runtime logs advice to run its shape-inference pre-processing first, which fails on
    this graph's dynamic shapes and is not needed for MatMul-only quantization."""

    def filter(self, record):
        return "pre-processing before quantization" not in record.getMessage()


def resolve_reduce_range(choice: str = "auto") -> bool:
    if choice not in REDUCE_RANGE:
        raise ValueError(f"reduce range {choice!r}: choose from {REDUCE_RANGE}")
    if choice == "auto":
        return int8_reduce_range(read_cpuinfo()[1])
    return choice == "on"


def quantize_dynamic_graph(fp32_path: str | Path, out_path: str | Path, reduce_range: bool = False) -> dict:
    """Write the dynamically quantized graph of `fp32_path` to `out_path` (atomically); returns
    what went into it, for the build report."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weights": "int8, per output channel", "activations": "uint8, per tensor, scaled at run time",
                "quantized ops": "MatMul with constant weights", "reduce_range": bool(reduce_range)}
    advice = _NoPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        atomic_write(out_path, lambda tmp: quantize_dynamic(
            str(fp32_path), str(tmp), op_types_to_quantize=["MatMul"], per_channel=True,
            reduce_range=bool(reduce_range), weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True}))
    finally:
        logging.getLogger().removeFilter(advice)
    return settings
