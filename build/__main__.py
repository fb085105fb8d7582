"""`python -m build <command> ...`: the build stages, each reading files and writing one folder.

Each command's module defines `add_arguments(parser)` and `run(args) -> int`; it is imported only
when its command runs (so `engines` works in NVIDIA's TensorRT container without torch).
Adding a stage is one line in COMMANDS; contract/cli.py decides how errors end a run.
"""
from __future__ import annotations

import sys

from contract.cli import Command, main as run_cli

COMMANDS = {
    "quantize": Command("INT8 QAT with modelopt: calibrate, sensitivity analysis, short fine-tune", "build.quantize"),
    "onnx": Command("export ONNX (fp32, fp16, int8 QDQ) and verify each against PyTorch fp32", "build.export_onnx"),
    "engines": Command("TensorRT plans fp16/int8 from padded ONNX graphs, verified on held-out texts "
                       "(GPU + TensorRT only)", "build.tensorrt"),
    "verify-plans": Command("run TensorRT plans on the held-out texts with the ONNX gates "
                            "(skips without TensorRT)", "build.verify_plans"),
    "torchscript": Command("TorchScript fp32/fp16 for the GPU repository (meant for the PyTorch 24.10 "
                           "container)", "build.export_torchscript"),
    "repository": Command("Triton model repository for --target cpu|gpu from a checkpoint and its exports "
                          "(atomic swap)", "build.repository"),
    "throughput": Command("ONNX Runtime samples/s on real held-out texts, in-process", "build.verify"),
}


def main(argv: list[str] | None = None) -> int:
    return run_cli("python -m build", __doc__.splitlines()[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
