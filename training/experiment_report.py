"""The experiment grid's report: experiments.json, experiments.md (the study's tables) and the plots.

Rows summarise each variant over its seeds (mean ± sample standard deviation); the header states
the data, the sizes, the noise level of the test split and what every column measures.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import statistics
from pathlib import Path

from contract.files import atomic_write_text
from contract.tables import markdown_table
from training.experiment_grid import SECTIONS, SPLIT_SEED, Grid

log = logging.getLogger("training")


def fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _stats(values: list) -> dict | None:
    vals = [float(x) for x in values if x is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def _reference_parameters(model: Path, ds) -> int:
    """Parameters of full fine-tuning on this task: the 'Relative' column's 100%. Counted on the meta
    device, so nothing is allocated."""
    import torch

    from training.config import BertConfig
    from training.model import BertForSequenceClassification
    config = BertConfig.from_json_file(model / "config.json").with_labels(ds.label_names, ds.problem_type)
    with torch.device("meta"):
        return BertForSequenceClassification(config).num_parameters()


def build_report(grid: Grid, ds, parts, full_sizes: dict, results: list[dict], absent: dict, wall: float,
                 threads: int, argv=None) -> dict:
    multi = ds.multi_label
    reference = _reference_parameters(grid.model, ds)
    rows = []
    for v in grid.variants:
        if v.name in absent:
            rows.append({"variant": v.name, "title": v.title, "status": "absent", "reason": absent[v.name]})
            continue
        runs = [r for r in results if r["variant"] == v.name]
        keys = ("metric", "test_loss", "seconds_per_epoch", "inference_samples_per_second", "trainable_parameters",
                "accuracy_ratio", "speed_ratio", "teacher_metric", "teacher_inference_samples_per_second")
        summary = {k: _stats([r.get(k) for r in runs]) for k in keys}
        params = runs[0]["trainable_parameters"]
        rows.append({"variant": v.name, "title": v.title, "status": "done", "kind": v.kind,
                     "lr": v.lr if v.kind in ("fit", "distill") else None,
                     "trainable_parameters": params, "relative_parameters": params / reference,
                     "total_parameters": runs[0].get("total_parameters"),
                     "best_epochs": [r["best_epoch"] for r in runs], "seeds": [r["seed"] for r in runs],
                     "summary": summary, "runs": runs})
    n_test = len(parts["test"])
    full = next((r for r in rows if r["variant"] == "full" and r["status"] == "done"), None)
    p = full["summary"]["metric"]["mean"] if full else 0.5
    return {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(argv) if argv else None,
        "metric": "micro-F1" if multi else "accuracy",
        "spread": "std (sample standard deviation over seeds); min-max in the JSON and plots",
        "data": {"spec": dataclasses.asdict(ds.spec), "sha256": ds.sha256, "problem_type": ds.problem_type,
                 "label_names": ds.label_names, "class_counts_test": parts["test"].class_counts(),
                 "sizes": {k: len(v) for k, v in parts.items()}, "full_split_sizes": full_sizes,
                 "split_file": str(grid.runs_dir / "split.json")},
        "standard_error": {"p": p, "n": n_test, "se": math.sqrt(p * (1 - p) / n_test),
                           "formula": "sqrt(p(1-p)/n), p = full fine-tuning's test score, n = test texts"},
        "settings": {"model": str(grid.model), "second_base": str(grid.second_base) if grid.second_base else None,
                     "epochs": grid.epochs, "batch_size": grid.batch_size, "max_length": grid.max_length,
                     "seeds": grid.seeds, "student_layers": grid.student_layers, "temperature": grid.temperature,
                     "mix": grid.mix, "quick": grid.quick, "reference_parameters": reference,
                     "processes": grid.processes},
        "machine": {"cpus": os.cpu_count(), "torch_threads": threads, "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "wall_seconds": wall,
        "compute_seconds": sum(r["run_seconds"] for r in results),
        "cpu_seconds": sum(r.get("cpu_seconds") or 0.0 for r in results),
        "full_size_estimate_seconds": _full_size_estimate(results, parts, full_sizes),
        "rows": rows,
    }


def _full_size_estimate(results: list[dict], parts, full_sizes: dict) -> float:
    """Seconds the same grid would take on the whole split: training and validation scale with their
    sizes (measured per epoch here); the rest of each run (test, saving, timing) is kept as measured."""
    scale_train = full_sizes["train"] / max(1, len(parts["train"]))
    scale_val = full_sizes["val"] / max(1, len(parts["val"]))
    scale_test = full_sizes["test"] / max(1, len(parts["test"]))
    total = 0.0
    for r in results:
        train_s, val_s = sum(r["train_seconds_per_epoch"]), sum(r["val_eval_seconds_per_epoch"])
        rest = max(0.0, r["run_seconds"] - train_s - val_s)
        total += train_s * scale_train + val_s * scale_val + rest * scale_test
    return total


# ---- the report ------------------------------------------------------------------------------
def _pm(s: dict | None, fmt, scale: float = 1.0) -> str:
    if s is None:
        return "-"
    text = fmt(s["mean"] * scale)
    return text + (f" ± {fmt(s['std'] * scale)}" if s["n"] > 1 else "")


def _row_cells(r: dict) -> list[str]:
    s = r["summary"]
    best = r["best_epochs"]
    return [r["title"],
            _pm(s["test_loss"], lambda x: f"{x:.4f}"),
            _pm(s["metric"], lambda x: f"{x:.2f}%", 100),
            f"{r['trainable_parameters']:,}",
            f"{100 * r['relative_parameters']:.2f}%",
            _pm(s["seconds_per_epoch"], lambda x: f"{x:.1f}"),
            "-" if all(b is None for b in best) else ", ".join(str(b) for b in best),
            _pm(s["inference_samples_per_second"], lambda x: f"{x:.0f}")]


def _table(rows: list[dict], names: list[str], metric: str) -> str:
    head = ["Model", "Test loss", metric.capitalize(), "Trainable params", "Relative", "s/epoch", "Best epoch",
            "CPU samples/s"]
    by = {r["variant"]: r for r in rows}
    cells = []
    for name in names:  # a name not selected with --variants has no row
        r = by.get(name)
        if r is not None:
            cells.append([r["title"], f"absent: {r['reason']}"] + [""] * (len(head) - 2) if r["status"] == "absent"
                         else _row_cells(r))
    return markdown_table(head, cells)


def _learning_rates(rows: list[dict]) -> str:
    by_lr: dict[float, list[str]] = {}
    for r in rows:
        if r["status"] == "done" and r.get("lr"):
            by_lr.setdefault(r["lr"], []).append(r["variant"])
    return "; ".join(f"{lr:g} ({', '.join(names)})" for lr, names in sorted(by_lr.items()))


def _contention_line(rep: dict) -> str:
    m, load = rep["machine"], rep["machine"].get("load_average_1min")
    if not load:
        return ""
    busy = load["max"] > (m["cpus"] or 1) + 0.5
    return (f"- Machine load: 1-minute load average {load['min']:.1f}-{load['max']:.1f} on {m['cpus']} CPUs while the "
            f"grid ran" + ("; above the CPU count other jobs competed for the cores, so times and speeds here are "
                           "slower than on an idle machine (ratios measured in the same rounds suffer least)."
                           if busy else "."))


def render_markdown(rep: dict, plots: list[Path], out: Path) -> str:
    metric, rows = rep["metric"], rep["rows"]
    d, st, se = rep["data"], rep["settings"], rep["standard_error"]
    seeds = st["seeds"]
    multi = metric == "micro-F1"
    lines = ["# Experiments: which variant to train and serve",
             "",
             f"Generated {rep['created']} by `{rep['command'] or 'python -m training experiments'}`"
             f"{' (--quick: smoke-test sizes, not findings)' if st['quick'] else ''}.",
             "",
             f"- Data: `{d['spec']['path']}` ({d['spec']['kind']}, {d['problem_type'].replace('_', ' ')}, labels "
             f"{', '.join(d['label_names'])}); split 80/10/10 with seed {SPLIT_SEED} (`{d['split_file']}`), then "
             f"train {d['sizes']['train']:,} of {d['full_split_sizes']['train']:,}, validation "
             f"{d['sizes']['val']:,} of {d['full_split_sizes']['val']:,}, test {d['sizes']['test']:,} of "
             f"{d['full_split_sizes']['test']:,} texts (test classes: "
             + ", ".join(f"{k} {v:,}" for k, v in d["class_counts_test"].items()) + ").",
             f"- Base: `{st['model']}`; {st['epochs']} epoch(s), batch {st['batch_size']}"
             + (f" per process x {st['processes']} processes (torchrun)" if st.get("processes", 1) > 1 else "")
             + f", max length "
             f"{st['max_length']}, AdamW with warmup and linear decay; each run keeps its epoch (numbered from 0) "
             f"with the lowest validation loss and is scored on test with it. Peak learning rates: "
             + _learning_rates(rows) + ".",
             f"- {metric.capitalize()} is on the test split"
             + (" (micro-F1 over all label decisions)" if metric == "micro-F1" else "")
             + f". Seeds: {', '.join(map(str, seeds))}"
             + (f"; cells are mean ± {rep['spread']}." if len(seeds) > 1 else "; one seed per variant."),
             f"- **Noise level:** test n = {se['n']:,}; the standard error of {'a micro-F1' if multi else 'an accuracy'} near "
             f"{100 * se['p']:.1f}% is {100 * se['se']:.2f} points ({se['formula']}). Two rows closer than about "
             f"{200 * se['se']:.1f} points (2 SE) are not distinguishable on this test split"
             + ("; for micro-F1 the binomial formula is only a rough guide." if metric == "micro-F1" else "."),
             f"- Relative = trainable parameters / the {st['reference_parameters']:,} of full fine-tuning of the "
             f"base. s/epoch = training seconds per epoch (evaluation excluded). CPU samples/s = inference of the "
             f"saved (LoRA-merged) model in PyTorch fp32, batch 32 real test texts padded to their longest, "
             f"`torch.inference_mode`, {rep['machine']['torch_threads']} threads on {rep['machine']['cpus']} CPUs "
             f"(shared machine: speeds carry some noise).",
             f"- Duration: {fmt_time(rep['wall_seconds'])} wall clock for this invocation; "
             f"{fmt_time(rep['compute_seconds'])} of run time in all (runs reused from an earlier, interrupted "
             f"invocation count here with their own time). The same grid on the whole split would take about "
             f"{fmt_time(rep['full_size_estimate_seconds'])} (estimated from the measured per-epoch times, "
             f"scaled by split size).",
             _contention_line(rep),
             ""]
    for title, names in SECTIONS:
        if any(r["variant"] in names for r in rows):
            lines += [f"## {title}", "", _table(rows, names, metric)]
    dist = next((r for r in rows if r["variant"] == "distilled" and r["status"] == "done"), None)
    if dist:
        s = dist["summary"]
        layers = ",".join(map(str, st["student_layers"]))
        lines += ["## Distillation (study section 4): student vs its teacher", "",
                  f"Student: teacher layers {layers} (of the full fine-tuned model of the same seed) with its "
                  f"embeddings, pooler and head, trained on the teacher's softened probabilities "
                  f"(KL·T², T = {st['temperature']:g}, mix {st['mix']:g} with the hard-label loss). "
                  f"Teacher and student speeds are timed in the same alternating rounds.", "",
                  markdown_table(
                      ["Model", "Parameters", metric.capitalize(), "CPU samples/s", f"{metric.capitalize()} ratio",
                       "Speed ratio"],
                      [["Teacher (full fine-tuning)", f"{st['reference_parameters']:,}",
                        _pm(s["teacher_metric"], lambda x: f"{x:.2f}%", 100),
                        _pm(s["teacher_inference_samples_per_second"], lambda x: f"{x:.0f}"), "100%", "1.00x"],
                       [f"{dist['title']} ({len(st['student_layers'])} layers: {layers})",
                        f"{dist['total_parameters']:,}", _pm(s["metric"], lambda x: f"{x:.2f}%", 100),
                        _pm(s["inference_samples_per_second"], lambda x: f"{x:.0f}"),
                        _pm(s["accuracy_ratio"], lambda x: f"{x:.2f}%", 100),
                        _pm(s["speed_ratio"], lambda x: f"{x:.2f}x")]])]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, out)})" for p in plots] + [""]
    lines += [f"Per-run folders (metrics.json with every epoch, checkpoint/, result.json): "
              f"`{os.path.relpath(Path(d['split_file']).parent, out)}/<variant>/seed<k>/`.", ""]
    return "\n".join(lines)


def write_report(rep: dict, grid: Grid) -> dict:
    from training import plots

    plot_paths = plots.write_all(rep["rows"], grid.out, rep["metric"])
    rep["plots"] = [str(p) for p in plot_paths]
    atomic_write_text(grid.out / "experiments.json", json.dumps(rep, indent=1, default=str) + "\n")
    md = atomic_write_text(grid.out / "experiments.md", render_markdown(rep, plot_paths, grid.out))
    log.info(f"report: {md}, {grid.out / 'experiments.json'}, " + ", ".join(p.name for p in plot_paths))
    return rep

