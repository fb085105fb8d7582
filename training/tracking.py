"""Experiment trackers: TensorBoard (offline event files), Weights & Biases, MLflow.

Only rank 0 of a torchrun job reports (the trainer gives the other ranks `none`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from training.errors import TrainError

REPORTERS = ("none", "tensorboard", "wandb", "mlflow")
_TRACKER_HINTS = {"wandb": "pip install wandb, then `wandb login` or WANDB_MODE=offline",
                  "mlflow": "pip install mlflow; MLFLOW_TRACKING_URI picks the server"}


def check_report_to(kind: str):
    """The tracker's module (None for none/tensorboard), or a clear error before any work is done."""
    if kind not in REPORTERS:
        raise TrainError(f"--report-to {kind!r}: expected one of {REPORTERS}")
    if kind in _TRACKER_HINTS:
        try:
            return __import__(kind)
        except ImportError:
            raise TrainError(f"--report-to {kind}: the `{kind}` package is not installed ({_TRACKER_HINTS[kind]})") from None
    return None


class Reporter:
    """Sends scalars to TensorBoard (offline event files), Weights & Biases or MLflow."""

    def __init__(self, kind: str, out_dir: Path, config: dict):
        module = check_report_to(kind)
        self.kind, self.backend = kind, None
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.backend = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
            self.backend.add_text("config", json.dumps(config, indent=1, default=str))
        elif kind == "wandb":
            self.backend = module.init(project=os.environ.get("WANDB_PROJECT", "bert-triton"), dir=str(out_dir),
                                       name=out_dir.name, config=config, resume="allow")
        elif kind == "mlflow":
            self.backend = module
            module.start_run(run_name=out_dir.name)
            module.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, scalars: dict, step: int) -> None:
        flat = {k: v for k, v in _flatten(scalars).items() if isinstance(v, (int, float)) and v is not None}
        if self.kind == "tensorboard":
            for k, v in flat.items():
                self.backend.add_scalar(k, v, step)
        elif self.kind == "wandb":
            self.backend.log(flat, step=step)
        elif self.kind == "mlflow":
            self.backend.log_metrics({k.replace("/", "_"): v for k, v in flat.items()}, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.backend.close()
        elif self.kind == "wandb":
            self.backend.finish()
        elif self.kind == "mlflow":
            self.backend.end_run()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
