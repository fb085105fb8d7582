"""Where an ONNX classifier's time goes, by operator type.

Runs one served ensemble's ONNX graph in this process exactly as its classifier does (the served
tokenizer, session settings, length-sorted chunks side by side: clients/baseline.py) on held-out
texts in requests of --batch, with ONNX Runtime's profiler on, and sums the kernel time of every
operator type. The share spent in matrix products says how far FLOP utilisation can go: when an
INT8 GEMM is several times faster than fp32, the element-wise work around it (GELU, layer norms,
adds, quantize/dequantize, transposes) becomes the larger part, and no GEMM speed-up moves it.
"""
from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

from clients.client import ClientError

# operator types that are matrix products (ONNX Runtime's fused forms included)
GEMM_OPS = frozenset({"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                      "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm", "FusedGemm", "MatMulNBits"})


def kernel_times(profile: Path) -> collections.Counter:
    """Operator type -> microseconds of kernel time, from one ONNX Runtime profile file."""
    times = collections.Counter()
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    return times


def summarize(times: collections.Counter, top: int = 12) -> dict:
    """The `top` operator types by time, the rest together, and the share in matrix products."""
    total = sum(times.values())
    if not total:
        raise ClientError("the profile holds no operator timings: were any texts run?")
    rows = [{"op": op, "ms": us / 1e3, "share": us / total, "gemm": op in GEMM_OPS}
            for op, us in times.most_common(top)]
    rest = total - sum(us for _, us in times.most_common(top))
    if rest:
        rows.append({"op": "(others)", "ms": rest / 1e3, "share": rest / total, "gemm": False})
    gemm = sum(us for op, us in times.items() if op in GEMM_OPS)
    return {"total_ms": total / 1e3, "gemm_share": gemm / total, "rows": rows}


def profile_ensemble(repository, ensemble: str, texts: list[str], batch: int) -> dict:
    from clients.baseline import InProcessOnnx, find_in_repository

    served = find_in_repository(repository, ensemble)
    if served.onnx is None or served.tokenizer_json is None:
        raise ClientError(f"{repository}: {ensemble} has no ONNX classifier served by the Python backend "
                          "and tokenizer there to profile (the GPU's native backends have none)")
    with tempfile.TemporaryDirectory() as tmp:
        # logits only: the post-process is not the graph's time (placeholder labels where none are on disk)
        runner = InProcessOnnx(served, labels=["label"], profile_prefix=str(Path(tmp) / "ort"))
        for i in range(0, len(texts), batch):
            runner.logits(texts[i:i + batch])
        profile = Path(runner.session.end_profiling())
        summary = summarize(kernel_times(profile))
    return {"model": ensemble, "onnx": str(served.onnx), "texts": len(texts), "batch": batch,
            "chunk_rows": runner.chunk_rows, "workers": runner.workers, **summary}


def report_lines(doc: dict) -> list[str]:
    from contract.tables import markdown_table

    lines = [f"# Operator time: {doc['model']} ({Path(doc['onnx']).name}), {doc['texts']} texts in requests of "
             f"{doc['batch']}, chunks of {doc['chunk_rows'] or 'all'} rows, {doc['workers']} at once", "",
             markdown_table(["Operator", "ms", "share", "matrix product"],
                            [[r["op"], f"{r['ms']:.1f}", f"{100 * r['share']:.1f}%", "yes" if r["gemm"] else ""]
                             for r in doc["rows"]], align=["l", "r", "r", "l"]),
             f"Kernel time {doc['total_ms']:.1f} ms, {100 * doc['gemm_share']:.1f}% of it in matrix products."]
    return lines


def add_arguments(p):
    from clients.texts import add_text_arguments

    p.add_argument("--model", default="bert_onnx_int8", help="the ensemble whose ONNX graph to profile "
                   "(default bert_onnx_int8)")
    p.add_argument("--repository", default="model_repository", help="the served repository on disk "
                   "(default model_repository)")
    p.add_argument("--batch", type=int, default=32, help="texts per request, as the benchmark sends them (default 32)")
    p.add_argument("--json", help="also write the table as JSON here")
    add_text_arguments(p, limit=256)


def main(args) -> int:
    from clients.texts import texts_from_args
    from contract.files import atomic_write_json

    if args.batch < 1:
        raise ClientError(f"--batch must be at least 1, got {args.batch}")
    texts = texts_from_args(args).take(args.limit).texts
    doc = profile_ensemble(args.repository, args.model, list(texts), args.batch)
    print("\n".join(report_lines(doc)))
    if args.json:
        atomic_write_json(args.json, doc, indent=1)
    return 0
