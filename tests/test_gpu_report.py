"""clients/gpu_report.py on CPU: the report `make gpu-report` writes, assembled from benchmark.json files
in the benchmark's own schema (each rendered by clients/benchmark.py here, so the schema is the real
one), the models' states, the plans' verification and the TorchScript record; the reference study's
figures stay in their own, quoted table; what no step left is listed as missing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from build.verify import Parity
from clients.benchmark import render_markdown
from clients.gpu_report import STUDY, main, reference_rows, load

GPU = "NVIDIA RTX A6000"


def bench(batch: int, figures: dict[str, float], sweep: bool = False) -> dict:
    """A benchmark.json as `python -m clients benchmark` writes it, for the given ensembles' samples/s."""
    ref = figures["bert_pytorch_fp32"]
    rows = [{"model": m, "framework": "TensorRT" if "trt" in m else "PyTorch", "precision": m.rsplit("_", 1)[1].upper(),
             "samples_per_s": s, "rounds_samples_per_s": [s] * 3, "requests": 10, "p50_ms": 1000 * batch / s,
             "p95_ms": 1100 * batch / s, "p99_ms": 1200 * batch / s, "accuracy": 0.9 if "int8" not in m else 0.895,
             "flop_utilisation": None, "hardware": GPU, "runs_on": "GPU", "speedup": s / ref,
             "recovery": 1.0 if "int8" not in m else 0.895 / 0.9} for m, s in figures.items()]
    doc = {"meta": {"date": "2026-12-01 10:00 UTC", "command": f"python -m clients benchmark --batch-size {batch}",
                    "url": "127.0.0.1:8001", "protocol": "grpc", "texts": 600, "text_source": "artifacts/demo split",
                    "batch_size": batch, "rounds": 3, "hardware": {"cpu": "x", "logical_cores": 16, "isa": [],
                                                                    "gpus": [GPU]},
                    "matmul": {"gflops": 100.0}, "flops": None, "load_average": [0.5, 0.6], "in_process": None,
                    "notes": []},
           "rows": rows, "targets": {}, "sweep": None}
    if sweep:
        doc["sweep"] = {"model": "bert_trt_int8", "texts_per_level": 256, "batch_samples_per_s": 900.0,
                        "levels": [{"concurrency": c, "samples_per_s": 100.0 * c, "vs_batch": c / 9, "p50_ms": 2.0,
                                    "p99_ms": 5.0, "p95_ms": 4.0} for c in (1, 8)]}
    render_markdown(doc)          # the benchmark's own renderer accepts it: the schema is the real one
    return doc


def write(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def make_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    out, build, repo = tmp_path / "reports" / "gpu", tmp_path / "build", tmp_path / "repo"
    figures = {"bert_pytorch_fp32": 400.0, "bert_onnx_fp16": 1500.0, "bert_trt_fp16": 2000.0, "bert_trt_int8": 2600.0}
    write(out / "batch-32" / "benchmark.json", bench(32, figures, sweep=True))
    write(out / "batch-8" / "benchmark.json", bench(8, {k: v / 2 for k, v in figures.items()}))
    write(out / "models.json", {"ready_ensembles": sorted(figures), "failed": [
        {"name": "bert_pytorch_fp16_model", "state": "UNAVAILABLE",
         "reason": "PytorchStreamReader failed reading zip archive: unsupported version"}]})
    write(out / "environment.json", {"date": "2026-12-01 10:00 UTC", "server": {"name": "triton", "version": "2.51.0"},
                                     "nvidia_smi": {"gpus": [{"name": GPU, "driver": "560.35.03", "memory": "49140 MiB",
                                                              "compute_capability": "8.6"}], "cuda_driver_api": "12.6"},
                                     "docker": {"engine": "27.3.1", "images": []}, "host": {"cpu": "AMD EPYC", "logical_cores": 16}})
    write(out / "classify.json", {"texts": ["good day", "bad day"], "results": {
        "bert_trt_int8": {"predictions": [{"label": "positive"}, {"label": "negative"}]},
        "bert_onnx_fp16": {"error": "model 'bert_onnx_fp16' is not loaded"}}})
    plan = Parity("int8", str(build / "engines" / "model_int8.plan"), 600, 0.31, 0.02, 0.99, 0.895, 0.9, 0.9944,
                  True, "")
    write(build / "onnx" / "build_report.json", {"parity": [], "plans": [dataclasses.asdict(plan)]})
    write(build / "engines" / "engines.json", {"backend": "python", "tensorrt": "10.5.0", "profile": {"max_batch": 64},
                                               "verification": {"verified": True, "parity": {"int8": "PASS"}}})
    write(build / "torchscript" / "torchscript.json", {"torch": "2.5.0a0+e000cf0ad9.nv24.10", "cuda": "12.6",
                                                       "failed": {}})
    write(repo / "build.json", {"skipped": {}, "artifacts": {
        "bert_pytorch_fp32_model": "TorchScript fp32 traced with torch 2.5.0a0+e000cf0ad9.nv24.10 (x)"}})
    return out, build, repo


def test_reference_rows_pair_each_study_row_with_our_ensemble(tmp_path):
    out, build, repo = make_inputs(tmp_path)
    rows = {r["ensemble"]: r for r in reference_rows(load(out, build, repo))}
    assert [r["ensemble"] for r in reference_rows(load(out, build, repo))] == [s[2] for s in STUDY]
    assert rows["bert_trt_int8"]["samples_per_s"] == 2600.0 and rows["bert_trt_int8"]["speedup"] == 6.5
    assert rows["bert_trt_int8"]["study"] == {"samples_per_s": 543, "speedup": 4.34, "accuracy": 0.7816,
                                             "recovery": 0.9947}
    fp16 = rows["bert_pytorch_fp16"]
    assert not fp16["measured"] and fp16["samples_per_s"] is None
    assert fp16["why_not"].startswith("bert_pytorch_fp16_model UNAVAILABLE: PytorchStreamReader")


def test_report_keeps_the_study_apart_and_names_what_is_missing(tmp_path, capsys):
    out, build, repo = make_inputs(tmp_path)
    assert main(["--out", str(out), "--build-dir", str(build), "--repository", str(repo)]) == 0
    assert "missing: 1 input(s)" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    measured, study = md.split("## The reference study's comparison, measured here (batch 32)")[1].split(
        "## The reference study's figures (quoted; not measured by this repository)")
    assert "| TensorRT | INT8 | bert_trt_int8 | 2600.0 | 6.50x | 89.50% | 99.44% |" in measured
    assert "| PyTorch | FP16 | bert_pytorch_fp16 | not measured: bert_pytorch_fp16_model UNAVAILABLE" in measured
    for figure in ("| 125 |", "| 370 |", "| 408 |", "| 511 |", "| 543 | 4.34x | 78.16% | 99.47% |"):
        assert figure in study and figure not in measured
    assert "NVIDIA A6000" in study and "not the samples/s" in study
    assert f"- GPU: {GPU} (49140 MiB, compute 8.6), driver 560.35.03; CUDA (driver API) 12.6" in md
    assert "- server: triton 2.51.0" in md
    assert "| Ensemble | batch 8 | batch 32 |" in md and "| bert_trt_int8 | 1300.0 (" in md
    assert "## Concurrency sweep: single-text requests to bert_trt_int8" in md
    assert "| model_int8.plan | 600 | 3.10e-01 |" in md and "TensorRT 10.5.0" in md
    assert "TorchScript traced with torch 2.5.0a0+e000cf0ad9.nv24.10" in md and "traced on the host" not in md
    assert "| bert_onnx_fp16 | model 'bert_onnx_fp16' is not loaded |" in md
    assert md.rstrip().endswith(f"- {out / 'perf' / 'summary.json'}")          # perf did not run: said, not faked
    doc = json.loads((out / "report.json").read_text())
    assert doc["missing"] == [str(out / "perf" / "summary.json")] and len(doc["reference_rows"]) == 5


def test_a_missing_report_folder_is_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
