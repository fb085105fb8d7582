"""reports/gpu/report.md: what `make gpu-report` measured on a GPU, beside the reference study's figures.

    python -m clients.gpu_report [--out reports/gpu] [--build-dir artifacts/demo/build]
                                 [--repository model_repository]

Reads what the steps before it left in --out: environment.json, models.json and classify.json
(clients/gpu_probe.py), batch-<n>/benchmark.json (`python -m clients benchmark`, one per batch
size) and perf/summary.json (`python -m clients perf`); from --build-dir the plans' record and
verification (engines/engines.json, onnx/build_report.json) and which torch traced the TorchScript
(torchscript/torchscript.json, the repository's build.json). Writes report.md and report.json.
A step that left nothing is listed as missing; no figure is filled in.

The reference study's table (BERT-base fine-tuned on Stack Overflow questions, batch 32, one NVIDIA
A6000) is quoted in its own table as the study published it: those figures were not measured here.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from contract.files import atomic_write_json, atomic_write_text
from contract.tables import markdown_table

REFERENCE_BATCH = 32
# (framework, precision, our ensemble) in the study's order, and the study's published figures:
# samples/s at batch 32, speedup over PyTorch FP32, test accuracy, accuracy recovery
STUDY = (
    ("PyTorch", "FP32", "bert_pytorch_fp32", 125, 1.00, 0.7857, 1.0000),
    ("PyTorch", "FP16", "bert_pytorch_fp16", 370, 2.96, 0.7857, 1.0000),
    ("ONNX Runtime", "FP16", "bert_onnx_fp16", 408, 3.26, 0.7857, 1.0000),
    ("TensorRT", "FP16", "bert_trt_fp16", 511, 4.09, 0.7857, 1.0000),
    ("TensorRT", "INT8", "bert_trt_int8", 543, 4.34, 0.7816, 0.9947),
)
STUDY_SETUP = ("BERT-base (uncased) fine-tuned on 140,272 Stack Overflow questions, batch 32 (one request "
               "of 32 texts), one NVIDIA A6000, INT8 by quantization-aware training")


def _read(path: Path, missing: list[str]):
    if not path.is_file():
        missing.append(str(path))
        return None
    return json.loads(path.read_text())


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x, spec=".1f", suffix="") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def load(out: Path, build_dir: Path | None, repository: Path | None) -> dict:
    missing: list[str] = []
    inputs = {name: _read(out / f"{name}.json", missing) for name in ("environment", "models", "classify")}
    inputs["benchmarks"] = {}
    for path in sorted(out.glob("batch-*/benchmark.json")):
        batch = int(re.fullmatch(r"batch-(\d+)", path.parent.name).group(1))
        inputs["benchmarks"][batch] = json.loads(path.read_text())
    if REFERENCE_BATCH not in inputs["benchmarks"]:
        missing.append(str(out / f"batch-{REFERENCE_BATCH}" / "benchmark.json"))
    inputs["perf"] = _read(out / "perf" / "summary.json", missing)
    build_dir = Path(build_dir) if build_dir else None
    inputs["engines"] = _read(build_dir / "engines" / "engines.json", missing) if build_dir else None
    inputs["build_report"] = _read(build_dir / "onnx" / "build_report.json", missing) if build_dir else None
    inputs["torchscript"] = _read(build_dir / "torchscript" / "torchscript.json", missing) if build_dir else None
    inputs["repository"] = _read(Path(repository) / "build.json", missing) if repository else None
    inputs["missing"] = missing
    return inputs


def why_not_measured(ensemble: str, inputs: dict) -> str:
    """What the inputs say about an ensemble the benchmark has no row for."""
    models = inputs.get("models") or {}
    for m in models.get("failed", []):
        if m["name"] in (ensemble, f"{ensemble}_model"):
            return f"{m['name']} {m['state']}: {m['reason']}"
    skipped = (inputs.get("repository") or {}).get("skipped", {})
    if ensemble in skipped:
        return f"not in the repository: {skipped[ensemble]}"
    return "no benchmark row"


def reference_rows(inputs: dict) -> list[dict]:
    """The study's five rows, with our figures at batch 32 where we have them."""
    bench = inputs["benchmarks"].get(REFERENCE_BATCH)
    ours = {r["model"]: r for r in (bench or {}).get("rows", [])}
    rows = []
    for framework, precision, ensemble, sps, speedup, acc, rec in STUDY:
        r = ours.get(ensemble)
        rows.append({"framework": framework, "precision": precision, "ensemble": ensemble,
                     "measured": r is not None, "why_not": None if r else why_not_measured(ensemble, inputs),
                     "samples_per_s": r and r["samples_per_s"], "speedup": r and r.get("speedup"),
                     "accuracy": r and r.get("accuracy"), "recovery": r and r.get("recovery"),
                     "p50_ms": r and r.get("p50_ms"), "p95_ms": r and r.get("p95_ms"),
                     "study": {"samples_per_s": sps, "speedup": speedup, "accuracy": acc, "recovery": rec}})
    return rows


def batch_table(benchmarks: dict) -> str:
    batches = sorted(benchmarks)
    models = []
    for b in batches:
        models += [r["model"] for r in benchmarks[b]["rows"] if r["model"] not in models]
    cells = {(b, r["model"]): r for b in batches for r in benchmarks[b]["rows"]}
    rows = [[m] + [f"{cells[b, m]['samples_per_s']:.1f} ({_num(cells[b, m].get('p95_ms'))} ms)" if (b, m) in cells
                   else "-" for b in batches] for m in models]
    return markdown_table(["Ensemble"] + [f"batch {b}" for b in batches], rows, ["l"] + ["r"] * len(batches))


def render(inputs: dict) -> str:
    env = inputs.get("environment") or {}
    smi = env.get("nvidia_smi", {})
    gpus = "; ".join(f"{g['name']} ({g.get('memory', '?')}, compute {g.get('compute_capability', '?')}), driver "
                     f"{g.get('driver', '?')}" for g in smi.get("gpus", [])) or f"unknown ({smi.get('error', 'not probed')})"
    server = env.get("server", {})
    docker = env.get("docker", {})
    host = env.get("host", {})
    lines = ["# GPU report: the BERT ensembles on NVIDIA's Triton container", "",
             f"Measured {env.get('date', 'at an unknown date')} by `make gpu-report` (docs/gpu.md).", "",
             "## Where it ran", "",
             f"- GPU: {gpus}; CUDA (driver API) {smi.get('cuda_driver_api') or 'unknown'}",
             f"- server: {server.get('name', '?')} {server.get('version', server.get('error', '?'))}",
             f"- Docker engine: {docker.get('engine') or docker.get('error', 'not probed')}",
             f"- host (clients, tokenization of the benchmark texts): {host.get('cpu', '?')}, "
             f"{host.get('logical_cores', '?')} cores"]
    lines += [f"- image {i['image']}: {i.get('id')}, created {i.get('created')}" for i in docker.get("images", [])]
    models = inputs.get("models") or {}
    lines += ["", "## Models", "", f"READY ensembles: {', '.join(models.get('ready_ensembles', [])) or 'none recorded'}."]
    lines += [f"- failed to load: {m['name']} ({m['state']}): {m['reason']}" for m in models.get("failed", [])]

    lines += ["", f"## The reference study's comparison, measured here (batch {REFERENCE_BATCH})", ""]
    rows = reference_rows(inputs)
    lines.append(markdown_table(
        ["Framework", "Precision", "Ensemble", "Samples/s", "Speedup", "Accuracy", "Recovery", "p50 ms", "p95 ms"],
        [[r["framework"], r["precision"], r["ensemble"], _num(r["samples_per_s"]), _num(r["speedup"], ".2f", "x"),
          _pct(r["accuracy"]), _pct(r["recovery"]), _num(r["p50_ms"]), _num(r["p95_ms"])] if r["measured"] else
         [r["framework"], r["precision"], r["ensemble"], f"not measured: {r['why_not']}", "", "", "", "", ""]
         for r in rows], list("lllrrrrrr")))
    bench = inputs["benchmarks"].get(REFERENCE_BATCH)
    if bench:
        m = bench["meta"]
        lines.append(f"{m['texts']} held-out texts from {m['text_source']}, {m['rounds']} rounds; speedup and "
                     f"recovery against bert_pytorch_fp32 on the same texts and rounds. Command: `{m['command']}`.")
    lines += ["", "## The reference study's figures (quoted; not measured by this repository)", "",
              markdown_table(["Framework", "Precision", "Samples/s", "Speedup", "Accuracy", "Recovery"],
                             [[f, p, s, f"{x:.2f}x", _pct(a), _pct(c)] for f, p, _, s, x, a, c in STUDY],
                             list("llrrrr")),
              f"As the study published them: {STUDY_SETUP}. Its model, data and GPU differ from the run above: "
              "compare the ratios (speedup, recovery), not the samples/s.", ""]

    if inputs["benchmarks"]:
        lines += ["## Batch sweep (samples/s, p95 latency per request)", "", batch_table(inputs["benchmarks"])]
    sweep = (bench or {}).get("sweep")
    if sweep:
        lines += [f"## Concurrency sweep: single-text requests to {sweep['model']}", "",
                  markdown_table(["Concurrency", "Samples/s", f"vs batch {REFERENCE_BATCH}", "p95 ms"],
                                 [[lv["concurrency"], _num(lv["samples_per_s"]), _num(lv.get("vs_batch"), ".2f", "x"),
                                   _num(lv.get("p95_ms"))] for lv in sweep["levels"]], list("rrrr"))]
    perf = inputs.get("perf")
    if perf:
        lines += ["## perf_analyzer (one text per request)", "",
                  markdown_table(["Ensemble", "Concurrency", "Infer/s", "p95 ms", "Status"],
                                 [[m, e["concurrency"], _num(e.get("infer_per_s")), _num(e.get("p95_ms")), e["status"]]
                                  for m, entries in perf["results"].items() for e in entries], list("lrrrl"))]
    lines += plans_section(inputs) + classify_section(inputs)
    if inputs["missing"]:
        lines += ["## Missing inputs (a step did not run or failed; see the make output and triton.log)", ""]
        lines += [f"- {m}" for m in inputs["missing"]] + [""]
    return "\n".join(lines)


def plans_section(inputs: dict) -> list[str]:
    lines = ["## TensorRT plans and TorchScript", ""]
    engines = inputs.get("engines")
    if engines:
        v = engines.get("verification", {})
        lines.append(f"- plans built with TensorRT {engines.get('tensorrt')} ({engines.get('backend')}), profile "
                     f"{engines.get('profile')}; verified on the held-out texts: "
                     + ("yes" if v.get("verified") else f"no ({v.get('reason') or v.get('parity')})"))
    plans = (inputs.get("build_report") or {}).get("plans") or []
    if plans:
        lines += ["", markdown_table(["Plan", "Texts", "max abs dlogit", "Agreement", "Accuracy", "Recovery", "Verdict"],
                                     [[Path(p["path"]).name, p["texts"], f"{p['max_abs_dlogit']:.2e}", f"{p['agreement']:.4f}",
                                       _pct(p["accuracy"]), _pct(p["recovery"]), "PASS" if p["passed"] else p["reason"]]
                                      for p in plans], list("lrrrrrl"))]
    ts = inputs.get("torchscript")
    artifacts = (inputs.get("repository") or {}).get("artifacts", {})
    fallback = [m for m, a in artifacts.items() if "host fallback" in a]
    if ts:
        lines.append(f"- TorchScript traced with torch {ts['torch']} (CUDA {ts.get('cuda')}); not traced: "
                     f"{', '.join(ts.get('failed', {})) or 'none'}")
    if fallback:
        lines.append(f"- traced on the host instead (may not load in the container's libtorch): {', '.join(fallback)}")
    return lines + [""]


def classify_section(inputs: dict) -> list[str]:
    classified = inputs.get("classify")
    if not classified:
        return []
    texts = classified["texts"]
    rows = [[m] + ([p["label"] for p in r["predictions"]] if "predictions" in r else [r["error"]] + [""] * (len(texts) - 1))
            for m, r in classified["results"].items()]
    return ["## Classification through every READY ensemble", "",
            markdown_table(["Ensemble"] + [t if len(t) < 40 else t[:37] + "..." for t in texts], rows), ""]


def write_report(out: Path, build_dir: Path | None, repository: Path | None) -> dict:
    inputs = load(Path(out), build_dir, repository)
    doc = {"reference_rows": reference_rows(inputs), "study_setup": STUDY_SETUP,
           "batches": {b: d["rows"] for b, d in inputs["benchmarks"].items()}, "missing": inputs["missing"],
           "environment": inputs.get("environment"), "models": inputs.get("models")}
    atomic_write_text(Path(out) / "report.md", render(inputs))
    atomic_write_json(Path(out) / "report.json", doc)
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.gpu_report", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("reports/gpu"))
    p.add_argument("--build-dir", type=Path, help="the run's build folder (plans, TorchScript, build report)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = p.parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out}: no such folder (run `make gpu-report`)", file=sys.stderr)
        return 2
    doc = write_report(args.out, args.build_dir, args.repository)
    print(f"wrote {args.out / 'report.md'}, {args.out / 'report.json'}"
          + (f"; missing: {len(doc['missing'])} input(s)" if doc["missing"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
