"""Parity checks: an exported model is accepted only if it agrees with the PyTorch fp32 model on
real held-out texts.

For each ONNX file (run by ONNX Runtime on CPUExecutionProvider) against the PyTorch fp32 model on
the same tokenized batches: max and mean |logit difference|, agreement of predicted labels,
accuracy on the test texts and its recovery (accuracy / PyTorch fp32 accuracy). Limits:

    fp32  max |dlogit| <= 1e-4     (the same arithmetic, other kernels)
    fp16  max |dlogit| <= 1e-2
    int8  recovery     >= 99%      (a floor that protects users; the build aims higher), for the QAT
                                   graph and the dynamically quantized one (int8dyn) alike

Next to each graph the report names what it is and the instructions this CPU runs its matmuls on
(contract/cpu.py): an INT8 graph's speed depends on them (VNNI, AMX) more than on anything else.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from build.artifacts import BuildError, Encoder, Examples, accuracy, batches, predictions
from contract.cpu import gemm_instructions, read_cpuinfo
from contract.files import atomic_write_json, atomic_write_text
from contract.names import DEFAULT_MAX_LENGTH
from contract.tables import markdown_table

LIMITS = {"fp32": ("max_abs_dlogit", 1e-4), "fp16": ("max_abs_dlogit", 1e-2), "int8": ("recovery", 0.99),
          "int8dyn": ("recovery", 0.99)}
GRAPHS = {"fp32": "float32", "fp16": "float16, fp32 inputs and logits",
          "int8": "INT8 QDQ from QAT (activation scales fixed at calibration; TensorRT's input)",
          "int8dyn": "INT8 dynamic (ONNX Runtime MatMulInteger, activation scales at run time)"}


class ParityError(BuildError):
    """An artifact that disagrees with the PyTorch fp32 model beyond its precision's limit."""


@dataclasses.dataclass
class Parity:
    precision: str
    path: str
    texts: int
    max_abs_dlogit: float
    mean_abs_dlogit: float
    agreement: float          # share of texts with the same predicted label as PyTorch fp32
    accuracy: float
    reference_accuracy: float  # PyTorch fp32 on the same texts
    recovery: float
    passed: bool
    reason: str
    graph: str = ""            # what kind of graph (GRAPHS)
    instructions: str = ""     # what this CPU runs its matmuls on (contract.cpu.gemm_instructions)

    def row(self) -> list:
        return [self.precision, Path(self.path).name, self.texts, f"{self.max_abs_dlogit:.2e}",
                f"{self.mean_abs_dlogit:.2e}", self.agreement, self.accuracy, f"{100 * self.recovery:.2f}%",
                "PASS" if self.passed else "FAIL: " + self.reason]

    def onnx_row(self) -> list:
        """row() with what the graph is and what this CPU runs its matmuls on, after the file."""
        row = self.row()
        return row[:2] + [self.graph, self.instructions] + row[2:]


PARITY_HEADER = ["precision", "file", "texts", "max abs dlogit", "mean abs dlogit", "label agreement",
                 "accuracy", "recovery vs PyTorch fp32", "verdict"]
ONNX_PARITY_HEADER = PARITY_HEADER[:2] + ["graph", "matmuls on this CPU"] + PARITY_HEADER[2:]


def ort_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # a file that is not a loadable model
        raise ParityError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:300]})") from None


def batched_logits(run_batch, examples: Examples, encoder: Encoder, batch_size: int = 32) -> np.ndarray:
    """run_batch(feeds) -> logits on the same length-sorted batches as the PyTorch reference, returned
    in the examples' order. Every runtime an export is judged in (ONNX Runtime, TensorRT) goes through it."""
    from build.artifacts import length_sorted

    ordered, order = length_sorted(examples)
    parts = [np.asarray(run_batch(feeds), dtype=np.float32) for feeds, _ in batches(ordered, encoder, batch_size)]
    out = np.zeros((len(examples), parts[0].shape[-1] if parts else 0), np.float32)
    if parts:
        out[order] = np.concatenate(parts)
    return out


def onnx_logits(path: str | Path, examples: Examples, encoder: Encoder, batch_size: int = 32) -> np.ndarray:
    """ONNX Runtime's logits in the examples' order (batched_logits)."""
    sess = ort_session(path)
    wanted = {i.name for i in sess.get_inputs()}
    return batched_logits(lambda feeds: sess.run(["logits"], {k: v for k, v in feeds.items() if k in wanted})[0],
                          examples, encoder, batch_size)


def torch_logits(model, examples: Examples, encoder: Encoder, batch_size: int = 32) -> np.ndarray:
    from build.quantize import logits_of

    return logits_of(model, examples, encoder, batch_size)


def compare(precision: str, path: str | Path, logits: np.ndarray, reference: np.ndarray, labels,
            multi_label: bool = False, thresholds=()) -> Parity:
    """Judge `logits` (from the artifact at `path`) against the PyTorch fp32 `reference` logits;
    labels are decided as the served post-process decides them (multi-label: `thresholds`)."""
    if logits.shape != reference.shape:
        return Parity(precision, str(path), len(reference), float("inf"), float("inf"), 0.0, 0.0,
                      accuracy(predictions(reference, multi_label, thresholds), labels), 0.0, False,
                      f"logits shape {logits.shape} != PyTorch {reference.shape}")
    diff = np.abs(logits.astype(np.float64) - reference)
    pred = predictions(logits, multi_label, thresholds)
    ref_pred = predictions(reference, multi_label, thresholds)
    acc, ref_acc = accuracy(pred, labels), accuracy(ref_pred, labels)
    recovery = acc / ref_acc if ref_acc > 0 else float(acc == ref_acc)
    metric, limit = LIMITS[precision]
    result = Parity(precision, str(path), len(reference), float(diff.max()), float(diff.mean()),
                    float((pred == ref_pred).mean()), acc, ref_acc, recovery, True, "")
    value = getattr(result, metric)
    ok = value <= limit if metric == "max_abs_dlogit" else value >= limit
    if not np.isfinite(diff).all():
        ok, value = False, float("nan")
    if not ok:
        result.passed = False
        result.reason = (f"max |dlogit| {value:.3g} > {limit:g}" if metric == "max_abs_dlogit"
                         else f"accuracy recovery {100 * value:.2f}% < {100 * limit:g}%")
    return result


def verify_artifacts(checkpoint: str | Path, artifacts: dict[str, str | Path], test: Examples,
                     max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 32, adapter: str | Path | None = None,
                     log=print, reference_to: str | Path | None = None) -> list[Parity]:
    """Every artifact against the PyTorch fp32 model of `checkpoint` on the texts of `test`.

    reference_to: a folder to save the texts and the PyTorch fp32 logits in (build/reference.py),
    so that checks without torch (TensorRT plans) judge against the same reference."""
    from build.artifacts import load_model

    if len(test) == 0:
        raise BuildError("verification needs held-out texts (the split's 'test' part is empty)")
    model = load_model(checkpoint, adapter)
    encoder = Encoder(checkpoint, max_length)
    t0 = time.time()
    reference = torch_logits(model, test, encoder, batch_size).astype(np.float64)
    log(f"PyTorch fp32 reference on {len(test)} held-out texts [{time.time() - t0:.0f}s]")
    if reference_to is not None:
        from build.reference import write_reference
        write_reference(reference_to, test, reference, max_length, model.config.multi_label)
    results = []
    flags = read_cpuinfo()[1]
    for precision, path in artifacts.items():
        t0 = time.time()
        r = compare(precision, path, onnx_logits(path, test, encoder, batch_size), reference, test.labels,
                    model.config.multi_label, model.config.label_thresholds)
        r.graph, r.instructions = GRAPHS.get(precision, ""), gemm_instructions(precision, flags)
        log(f"  {precision}: max |dlogit| {r.max_abs_dlogit:.2e}, agreement {r.agreement:.4f}, accuracy "
            f"{r.accuracy:.4f} vs {r.reference_accuracy:.4f} ({100 * r.recovery:.2f}%) "
            f"{'PASS' if r.passed else 'FAIL: ' + r.reason} [{time.time() - t0:.0f}s]")
        results.append(r)
    return results


def raise_on_failure(results: list[Parity]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise ParityError("; ".join(f"{Path(r.path).name} rejected: {r.reason} against PyTorch fp32 on "
                                    f"{r.texts} held-out texts" for r in failed))


# ---- the build report ----------------------------------------------------------------------------
def write_report(out_dir: str | Path, results: list[Parity], quantize_report: dict | None = None,
                 info: dict | None = None) -> tuple[Path, Path]:
    """build_report.json and build_report.md: the sensitivity table (if quantized) and the parity table."""
    from build.quantize import sensitivity_markdown

    out_dir = Path(out_dir)
    data = {"info": info or {}, "parity": [dataclasses.asdict(r) for r in results],
            "limits": {k: {"metric": m, "limit": v} for k, (m, v) in LIMITS.items()},
            "quantization": quantize_report}
    md = ["# Build report", ""]
    for k, v in (info or {}).items():
        md.append(f"- {k}: {v}")
    md += ["", "## Parity against PyTorch fp32 (ONNX Runtime, CPUExecutionProvider)", "",
           markdown_table(ONNX_PARITY_HEADER, [r.onnx_row() for r in results]),
           "Limits: fp32 max |dlogit| <= 1e-4, fp16 <= 1e-2, int8 and int8dyn accuracy recovery >= 99%. "
           "Which INT8 graph runs faster depends on the CPU's INT8 instructions: `make benchmark` serves both.",
           ""]
    if quantize_report:
        q = quantize_report
        va = q["val_accuracy"]
        md += ["## INT8 quantization (modelopt)", "",
               f"- calibration: {q['calibration']['method']} on {q['calibration']['texts']} training texts"
               + (f" (percentile {q['calibration']['percentile']})" if q['calibration'].get('percentile') else ""),
               f"- quantizers: {q['quantizers']} (weights per-channel, activations per-tensor); kept in float: "
               f"{q['kept_float_quantizers']} ({', '.join(q['disabled_groups']) or 'none'})",
               f"- QAT: {q['qat']['steps']} steps at lr {q['qat']['learning_rate']:.2e}, batch {q['qat']['batch_size']}",
               f"- groups kept in float, most sensitive first, until INT8 loses at most {q['threshold']:.4f} "
               f"validation accuracy: " + (", ".join(f"{d['group']} -> {d['accuracy']:.4f}" for d in q.get('disable_steps', [])) or "none"),
               f"- validation accuracy ({q['validation_texts']} texts): fp32 {va['fp32']:.4f}, all INT8 "
               f"{va['int8_all']:.4f}, after disabling {va['int8_after_disable']:.4f}, after QAT {va['int8_after_qat']:.4f}",
               "", "### Sensitivity (one group kept in float at a time)", "",
               sensitivity_markdown(q["baseline"], q["sensitivity"], q["threshold"], q["disabled_groups"])]
    json_path = atomic_write_json(out_dir / "build_report.json", data)
    md_path = atomic_write_text(out_dir / "build_report.md", "\n".join(md) + "\n")
    return json_path, md_path


# ---- in-process throughput -----------------------------------------------------------------------
def throughput(path: str | Path, examples: Examples, encoder: Encoder, batch_size: int = 32,
               warmup: int = 2, threads: int | None = None) -> dict:
    """Samples/s of ONNX Runtime on pre-tokenized real texts (each batch padded to its longest)."""
    sess = ort_session(path, threads)
    wanted = {i.name for i in sess.get_inputs()}
    feeds = [{k: v for k, v in f.items() if k in wanted} for f, _ in batches(examples, encoder, batch_size)]
    for f in feeds[:warmup]:
        sess.run(["logits"], f)
    t0 = time.perf_counter()
    n = 0
    for f in feeds:
        sess.run(["logits"], f)
        n += len(f["input_ids"])
    dt = time.perf_counter() - t0
    return {"file": str(path), "samples": n, "seconds": dt, "samples_per_s": n / dt, "batch_size": batch_size,
            "mean_tokens": float(np.mean([f["attention_mask"].sum(1).mean() for f in feeds]))}


# ---- command line: python -m build throughput ----------------------------------------------------
def add_arguments(p) -> None:
    from build.artifacts import add_data_arguments

    p.add_argument("--onnx", type=Path, required=True, help="output folder of `python -m build onnx`")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (its split.json and labels)")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--texts", type=int, default=1024, help="a random sample of N test texts (kept in file order)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    add_data_arguments(p)


def run(args) -> int:
    from build.artifacts import examples_from_args

    test = examples_from_args(args, ["test"], args.texts)["test"]
    encoder = Encoder(args.onnx if (args.onnx / "tokenizer.json").exists() else args.checkpoint, args.max_length)
    rows = []
    for precision in (p for p in args.precisions.split(",") if p):
        path = args.onnx / f"model_{precision}.onnx"
        if not path.exists():
            raise BuildError(f"{path}: not found (run `python -m build onnx --precisions {precision}` first)")
        r = throughput(path, test, encoder, args.batch_size, threads=args.threads)
        r["precision"] = precision
        rows.append(r)
        print(f"{precision}: {r['samples_per_s']:.1f} samples/s ({r['samples']} texts, batch {args.batch_size}, "
              f"{r['mean_tokens']:.1f} tokens per text on average)")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0
