"""`python -m build <command> ...`: the build stages, each reading files and writing one folder.

Each command's module defines `add_arguments(parser)` and `run(args) -> int`; it is imported only
when its command runs (so `engines` works in NVIDIA's TensorRT container without torch).
Adding a stage is one line in COMMANDS.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    # command: (module, one-line help)
    "quantize": ("build.quantize", "INT8 QAT with modelopt: calibrate, sensitivity analysis, short fine-tune"),
    "onnx": ("build.export_onnx", "export ONNX (fp32, fp16, int8 QDQ) and verify each against PyTorch fp32"),
    "engines": ("build.tensorrt", "TensorRT plans fp16/int8 from padded ONNX graphs, verified on held-out texts (GPU + TensorRT only)"),
    "verify-plans": ("build.verify_plans", "run TensorRT plans on the held-out texts with the ONNX gates (skips without TensorRT)"),
    "torchscript": ("build.export_torchscript", "TorchScript fp32/fp16 for the GPU repository (meant for the PyTorch 24.10 container)"),
    "repository": ("build.repository", "Triton model repository for --target cpu|gpu from a checkpoint and its exports (atomic swap)"),
    "throughput": ("build.verify", "ONNX Runtime samples/s on real held-out texts, in-process"),
}

# Errors that are the user's input or environment, printed as one line (exit 2); anything else is a bug.
EXPECTED = ("BuildError", "ParityError", "TensorRTUnavailable", "ConfigError", "CheckpointError",
            "FileNotFoundError", "ValueError", "TorchScriptError", "PlanError")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        top = argparse.ArgumentParser(prog="python -m build", description=__doc__.splitlines()[0])
        top.add_argument("command", choices=list(COMMANDS),
                         help="; ".join(f"{c}: {h}" for c, (_, h) in COMMANDS.items()))
        if argv and argv[0] in ("-h", "--help"):
            top.print_help()
            return 0
        top.parse_args(argv[:1])  # exits 2 with the usage line
        return 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"python -m build {command}", description=COMMANDS[command][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except Exception as e:
        if type(e).__name__ not in EXPECTED:
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
