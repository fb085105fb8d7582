"""The experiment report's pictures (matplotlib, Agg backend: files only, no display needed).

Each function takes the rows of experiments.json (see training/experiments.py) and writes one PNG:
- accuracy_vs_params: test accuracy (micro-F1 for multi-label) against trainable parameters, log x;
  baselines without trainable parameters are horizontal lines, not points at x = 0 (no log of 0);
- val_loss: validation loss per epoch, one line per trained variant (mean over seeds);
- seconds_per_epoch: training seconds per epoch per trained variant (bar = mean, whisker = min-max over
  seeds; the baselines' fit seconds are in the table).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from contract.files import atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))


def _done(rows):
    return [r for r in rows if r["status"] == "done"]


def accuracy_vs_params(rows: list[dict], path: Path, metric_name: str = "accuracy") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [r for r in _done(rows) if r["trainable_parameters"]]
    flat = [r for r in _done(rows) if not r["trainable_parameters"]]
    for r in points:
        s = r["summary"]["metric"]
        x = r["trainable_parameters"]
        ax.errorbar([x], [100 * s["mean"]], yerr=[[100 * (s["mean"] - s["min"])], [100 * (s["max"] - s["mean"])]],
                    fmt="o", capsize=3)
        ax.annotate(r["variant"], (x, 100 * s["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for i, r in enumerate(flat):  # no trainable parameters: a level to beat, drawn across the plot
        y = 100 * r["summary"]["metric"]["mean"]
        ax.axhline(y, ls="--", lw=1, color=f"C{(i + 3) % 10}", label=f"{r['variant']} (0 trainable)")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"test {metric_name} (%)")
    ax.set_title(f"Test {metric_name} vs trainable parameters (whiskers: min-max over seeds)")
    if flat:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def val_loss(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in _done(rows):
        curves = [run["val_loss_per_epoch"] for run in r["runs"] if run.get("val_loss_per_epoch")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = np.mean([c[:n] for c in curves], axis=0)
        ax.plot(range(n), mean, marker="o", label=r["variant"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss per epoch (mean over seeds)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def seconds_per_epoch(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    timed = [r for r in _done(rows) if r.get("kind") in ("fit", "distill") and r["summary"].get("seconds_per_epoch")]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(timed), 2) + 1.2))
    names = [r["variant"] for r in timed]
    s = [r["summary"]["seconds_per_epoch"] for r in timed]
    mean = np.array([x["mean"] for x in s])
    err = np.array([[x["mean"] - x["min"] for x in s], [x["max"] - x["mean"] for x in s]])
    ax.barh(names, mean, xerr=err, capsize=3, color="C0")
    for y, v in enumerate(mean):
        ax.annotate(f"{v:.1f} s", (v, y), textcoords="offset points", xytext=(4, -3), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training seconds per epoch")
    ax.set_title("Seconds per epoch (bar: mean, whisker: min-max over seeds)")
    ax.grid(True, axis="x", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def write_all(rows: list[dict], out_dir: Path, metric_name: str, prefix: str = "experiments") -> list[Path]:
    out_dir = Path(out_dir)
    return [accuracy_vs_params(rows, out_dir / f"{prefix}_accuracy_vs_params.png", metric_name),
            val_loss(rows, out_dir / f"{prefix}_val_loss.png"),
            seconds_per_epoch(rows, out_dir / f"{prefix}_seconds_per_epoch.png")]
