"""TensorRT plans judged like the ONNX exports: the same held-out texts, the same gates, the same report.

Each plan runs on the texts the `onnx` stage verified on (reference.json beside the ONNX files,
build/reference.py) and must pass the gate of its precision in build/verify.py against the same
PyTorch fp32 logits: fp16 max |dlogit| <= 1e-2, int8 accuracy recovery >= 99%. The results go
into that folder's build_report.json ("plans") and build_report.md (a second parity table).

    python -m build verify-plans --onnx <build>/onnx --engines <build>/engines

`python -m build engines` runs the same check on new plans before they replace the old ones.
Where TensorRT is absent this command says so and exits 0: there is nothing it can run here.
Needs TensorRT's Python API, numpy and tokenizers; nothing else (the builder image installs those two).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

from build.artifacts import Encoder
from build.reference import read_reference
from build.tensorrt import ENGINE_PRECISIONS, PlanError, TensorRTUnavailable
from build.verify import LIMITS, PARITY_HEADER, Parity, batched_logits, compare, raise_on_failure
from contract.files import atomic_write_json, atomic_write_text
from contract.tables import markdown_table

REPORT_JSON, REPORT_MD = "build_report.json", "build_report.md"
SECTION = "## Parity of TensorRT plans against PyTorch fp32"
# The tensor types the repository's tensorrt_plan configs declare (build/model_configs.py); a plan
# whose types differ would be refused by Triton at load, so it is refused here first.
SERVED_DTYPES = {"input_ids": "int64", "attention_mask": "int64", "token_type_ids": "int64", "features": "float32",
                 "logits": "float32"}


def dtype_problems(dtypes: dict) -> list[str]:
    """Tensors of a plan (name -> numpy dtype name) whose type is not the one the configs declare."""
    return [f"{n} is {d}, the Triton config declares {SERVED_DTYPES[n]}" for n, d in dtypes.items()
            if n in SERVED_DTYPES and str(d) != SERVED_DTYPES[n]]


def tensorrt_version() -> str | None:
    """The TensorRT Python API's version, or None where `import tensorrt` fails."""
    try:
        import tensorrt
        return tensorrt.__version__
    except Exception:
        return None


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "GPU"


def plan_files(engines_dir: str | Path, precisions=ENGINE_PRECISIONS) -> dict[str, Path]:
    """model_<precision>.plan for each precision present in `engines_dir`."""
    return {p: Path(engines_dir) / f"model_{p}.plan" for p in precisions
            if (Path(engines_dir) / f"model_{p}.plan").is_file()}


def verify_plans(onnx_dir: str | Path, plans: dict[str, Path], batch_size: int = 32, log=print) -> list[Parity]:
    """Every plan against the `onnx` stage's PyTorch fp32 reference; raises TensorRTUnavailable first
    where TensorRT's Python API is absent."""
    from build.plan_runner import CudaRuntime, PlanRunner

    if tensorrt_version() is None:
        raise TensorRTUnavailable("TensorRT's Python API is not importable here (`import tensorrt` failed)")
    examples, reference, meta = read_reference(onnx_dir)
    encoder = Encoder(onnx_dir, meta["max_length"])
    cuda = CudaRuntime()
    results = []
    for precision, path in plans.items():
        t0 = time.time()
        with PlanRunner(path, cuda) as run:
            problems = dtype_problems(run.dtypes)
            if problems:
                raise PlanError(f"{path}: " + "; ".join(problems))
            logits = batched_logits(run, examples, encoder, batch_size)
        r = compare(precision, path, logits, reference, examples.labels, meta["multi_label"])
        log(f"  {path.name}: max |dlogit| {r.max_abs_dlogit:.2e}, agreement {r.agreement:.4f}, accuracy "
            f"{r.accuracy:.4f} vs {r.reference_accuracy:.4f} ({100 * r.recovery:.2f}%) "
            f"{'PASS' if r.passed else 'FAIL: ' + r.reason} [{time.time() - t0:.0f}s]")
        results.append(r)
    return results


def limits_line() -> str:
    parts = [f"{p} max |dlogit| <= {v:g}" if m == "max_abs_dlogit" else f"{p} accuracy recovery >= {100 * v:g}%"
             for p, (m, v) in LIMITS.items() if p in ENGINE_PRECISIONS]
    return "Limits (those of the ONNX exports, build/verify.py): " + ", ".join(parts) + "."


def update_report(folder: str | Path, results: list[Parity], info: dict) -> None:
    """Put the plans' parity into `folder`'s build report: "plans" and "plans_info" in the JSON, the
    last section of the markdown (replaced, not appended, when the plans are checked again)."""
    folder = Path(folder)
    data = json.loads((folder / REPORT_JSON).read_text()) if (folder / REPORT_JSON).is_file() else {}
    data["plans"] = [dataclasses.asdict(r) for r in results]
    data["plans_info"] = info
    md = (folder / REPORT_MD).read_text() if (folder / REPORT_MD).is_file() else "# Build report\n"
    section = [f"{SECTION} (TensorRT {info.get('tensorrt', '?')}, {info.get('gpu', 'GPU')})", ""]
    section += [f"- {k}: {v}" for k, v in info.items() if k not in ("tensorrt", "gpu")]
    section += ["", markdown_table(PARITY_HEADER, [r.row() for r in results]), limits_line(), ""]
    atomic_write_json(folder / REPORT_JSON, data)
    atomic_write_text(folder / REPORT_MD, md.split(SECTION)[0].rstrip() + "\n\n" + "\n".join(section))


def report_plans(results: list[Parity], onnx_dir: str | Path, report_dir: str | Path, plans_dir: str | Path) -> None:
    """The results, naming the plans in `plans_dir` (where they end up), into `report_dir`'s build
    report; a copy of the `onnx` stage's report is made there first when it is another folder."""
    onnx_dir, report_dir = Path(onnx_dir), Path(report_dir)
    for r in results:
        r.path = str(Path(plans_dir) / Path(r.path).name)
    if report_dir.resolve() != onnx_dir.resolve():
        for name in (REPORT_JSON, REPORT_MD):
            if (onnx_dir / name).is_file():
                shutil.copy2(onnx_dir / name, report_dir / name)
    update_report(report_dir, results, {"tensorrt": tensorrt_version(), "gpu": gpu_name(), "plans": str(plans_dir),
                                        "held-out texts": results[0].texts if results else 0})


# ---- command line: python -m build verify-plans --------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--onnx", type=Path, required=True, help="output folder of `python -m build onnx` "
                   "(reference.json and the build report the results are added to)")
    p.add_argument("--engines", type=Path, required=True, help="output folder of `python -m build engines`")
    p.add_argument("--precisions", default=",".join(ENGINE_PRECISIONS), help="comma-separated, from fp16,int8")
    p.add_argument("--batch-size", type=int, default=32)


def run(args) -> int:
    version = tensorrt_version()
    if version is None:
        print("plan verification skipped: TensorRT is not installed here (no `import tensorrt`); it runs in "
              "the builder container on a GPU machine (docker compose run --rm builder engines)")
        return 0
    plans = plan_files(args.engines, tuple(p for p in args.precisions.split(",") if p))
    if not plans:
        raise TensorRTUnavailable(f"no model_<precision>.plan in {args.engines} (build them: python -m build engines)")
    results = verify_plans(args.onnx, plans, args.batch_size)
    report_plans(results, args.onnx, args.onnx, args.engines)
    print(f"added the plans' parity to {args.onnx / REPORT_MD}")
    raise_on_failure(results)
    return 0
