"""The Makefile's GPU-path rules, run with `make -n` (or with PY=true, where a recipe must really run)
on a run folder whose stage outputs are files of the right age: the ONNX export follows what was
asked for, and `make gpu-report` chains the steps in the order docs/gpu.md gives."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PADDED = ["PRECISIONS=fp32,fp16,int8", "ONNX_ARGS=--padded"]


@pytest.fixture
def run(tmp_path):
    """A demo run whose checkpoint, quantized model and ONNX export exist, oldest first, and a venv
    marker newer than requirements.lock (so no set-up recipe shows up)."""
    files = [tmp_path / "venv" / ".installed", tmp_path / "run" / "checkpoint" / "model.safetensors",
             tmp_path / "run" / "build" / "quantized" / "quantize.json",
             tmp_path / "run" / "build" / "onnx" / "build_report.json"]
    start = time.time() - 100
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}")
        os.utime(f, (start + i, start + i))
    (tmp_path / "run" / "build" / "onnx.request").write_text("precisions=fp32,int8 args=\n")
    return tmp_path


def make(run: Path, *args: str, dry: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PRECISIONS", "ONNX_ARGS", "MAKEFLAGS", "FORCE")}
    cmd = ["make", "--no-print-directory", *(["-n"] if dry else []), f"VENV={run / 'venv'}", f"RUN={run / 'run'}",
           *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def exports(output: str) -> list[str]:
    return [line for line in output.splitlines() if " -m build onnx " in line]


def test_onnx_reexports_when_other_precisions_or_args_are_asked_for(run):
    assert exports(make(run, "onnx")) == []                                  # nothing asked: up to date
    assert exports(make(run, "onnx", "PRECISIONS=fp32,int8")) == []          # the same request again
    [line] = exports(make(run, "onnx", *PADDED))
    assert "--precisions fp32,fp16,int8" in line and line.rstrip().endswith("--padded")
    [line] = exports(make(run, "onnx", "ONNX_ARGS=--padded"))               # only the args changed
    assert "--precisions fp32,int8" in line and "--padded" in line


def test_a_finished_export_records_its_request(run):
    make(run, "onnx", *PADDED, "PY=true", dry=False)            # `true` stands in for the export itself
    assert (run / "run" / "build" / "onnx.request").read_text() == "precisions=fp32,fp16,int8 args=--padded\n"
    assert exports(make(run, "onnx", *PADDED)) == []
    assert exports(make(run, "repository", "TARGET=gpu")) == []             # unsaid: the last export is used


def test_fp32_and_fp16_alone_need_no_quantized_model(run):
    (run / "run" / "build" / "quantized" / "quantize.json").unlink()
    [line] = exports(make(run, "onnx", "PRECISIONS=fp32,fp16", "ONNX_ARGS=--padded"))
    assert "--precisions fp32,fp16" in line
    assert " -m build quantize " not in make(run, "onnx", "PRECISIONS=fp32,fp16", "ONNX_ARGS=--padded")
    assert " -m build quantize " not in make(run, "onnx", "PRECISIONS=fp32,int8dyn")   # ONNX Runtime quantizes it
    assert " -m build quantize " in make(run, "onnx", "PRECISIONS=fp32,int8", "ONNX_ARGS=--padded")


def test_gpu_report_chains_the_steps_in_order(run):
    out = make(run, "gpu-report", "GPU_BATCHES=1 32")
    r = run / "run"
    steps = [f"--precisions fp32,fp16,int8 --out {r}/build/onnx --padded",
             "-m server admin-key",
             f"docker compose run --rm builder engines RUN={r} CHECKPOINT={r}/checkpoint BUILD_DIR={r}/build",
             "docker compose run --rm torchscript torchscript RUN=",
             "-m build repository --target gpu",
             "docker compose up -d --build triton",
             "-m clients.gpu_probe wait --out reports/gpu",
             "-m clients.gpu_probe probe --out reports/gpu --texts",
             "-m clients benchmark --url 127.0.0.1:8001",
             "-m clients perf --url 127.0.0.1:8001",
             "docker compose logs --no-color triton > reports/gpu/triton.log",
             "docker compose down",
             "-m clients.gpu_report --out reports/gpu --build-dir"]
    at = [out.find(s) for s in steps]
    assert all(i >= 0 for i in at), [s for s, i in zip(steps, at) if i < 0]
    assert at == sorted(at)
    assert "HOST_UID=$(id -u) HOST_GID=$(id -g) docker compose run --rm builder" in out
    # one benchmark per batch size, the concurrency sweep only with the reference study's batch 32
    assert "--batch-size $b --out reports/gpu/batch-$b $([ $b = 32 ] || echo --no-sweep)" in out
    assert "for b in 1 32; do" in out
    # the server is taken down and the report written whatever the measurements did
    tail = out[out.find("docker compose logs"):]
    assert "exit $rc" in tail and "|| rc=1" in out[at[6]:at[10]]
