"""The experiment grid's definitions: the variants, the study's sections, and a resolved `Grid`.

training/experiments.py turns the command line into a `Grid`, training/experiment_runs.py runs each
(variant, seed) of it, training/experiment_report.py writes the tables.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from contract.errors import UserError
from training.defaults import LR_FULL, LR_HEAD_ONLY, LR_LORA

DEFAULT_SEED = 42
SPLIT_SEED = 42           # one split for every variant and seed: rows differ only by what they train
# Defaults sized so that the whole grid finishes in < 30 min on a 2-core CPU (see the README).
DEFAULTS = dict(limit=2000, val_limit=500, test_limit=0, epochs=2, batch_size=16, max_length=128,
                speed_batches=8, speed_rounds=3)
QUICK = dict(limit=200, val_limit=100, test_limit=200, epochs=1, batch_size=16, max_length=64,
             speed_batches=2, speed_rounds=1)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str                 # folder name and --variants key
    title: str                # row label in the report
    kind: str = "fit"         # fit | distill | majority | tfidf
    freeze: str = "full"      # training.lora.freeze_for_strategy
    lora_r: int = 0
    lora_layers: str = "all"  # training.lora.parse_layers
    tabular: bool = False
    second_base: bool = False
    lr: float = LR_FULL
    cost: float = 1.0         # time relative to full fine-tuning, only for the time-left estimate


# learning rates: training/defaults.py says why LoRA and a lone head train at a larger one
VARIANTS = [
    Variant("majority", "Majority class (baseline)", kind="majority", cost=0.0),
    Variant("tfidf-logreg", "TF-IDF + logistic regression (baseline)", kind="tfidf", cost=0.05),
    Variant("full", "Full fine-tuning", cost=1.0),
    Variant("tabular", "Full fine-tuning + tabular features", tabular=True, cost=1.0),
    Variant("second-base", "Second base, full fine-tuning", second_base=True, cost=1.0),
    Variant("lora-r8", "LoRA r8 (query, value)", lora_r=8, lr=LR_LORA, cost=0.8),
    Variant("lora-r1", "LoRA r1 (query, value)", lora_r=1, lr=LR_LORA, cost=0.8),
    Variant("lora-r8-last4", "LoRA r8, last four layers", lora_r=8, lora_layers="last4", lr=LR_LORA, cost=0.6),
    Variant("no-training", "No training (pretrained + random head)", freeze="none", cost=0.15),
    Variant("classifier", "Classifier only", freeze="classifier", lr=LR_HEAD_ONLY, cost=0.4),
    Variant("classifier+1", "Classifier + first layer", freeze="classifier+1", cost=0.9),
    Variant("classifier+2", "Classifier + first two layers", freeze="classifier+2", cost=0.9),
    Variant("lora-r4", "LoRA r4 (query, value)", lora_r=4, lr=LR_LORA, cost=0.8),
    Variant("distilled", "Distilled student", kind="distill", lr=2e-4, cost=0.6),
]
BY_NAME = {v.name: v for v in VARIANTS}

# The study's tables (reference-results.md sections 1, 3 and 4) and which rows each shows.
SECTIONS = [
    ("Variants (study section 1: BERT and LoRA)",
     ["full", "second-base", "tabular", "lora-r8", "lora-r1", "lora-r8-last4"]),
    ("Which parameters to train (study section 3: the freezing grid)",
     ["no-training", "classifier", "classifier+1", "classifier+2", "lora-r4", "full"]),
    ("Baselines", ["majority", "tfidf-logreg"]),
]


class ExperimentError(UserError, ValueError):
    """Options that do not describe a runnable grid; the message says which and why."""



@dataclasses.dataclass
class Grid:
    """Resolved options: everything a run's result depends on, plus where things go."""
    out: Path
    model: Path
    second_base: Path | None
    sizes: dict
    epochs: int
    batch_size: int
    max_length: int
    seeds: list[int]
    variants: list[Variant]
    student_layers: list[int]
    temperature: float
    mix: float
    device: str
    progress: bool
    speed_batches: int
    speed_rounds: int
    quick: bool
    grad_accum: int = 1
    processes: int = 1        # torchrun's WORLD_SIZE: batch_size is per process

    @property
    def runs_dir(self) -> Path:
        return self.out / "experiments"

    def run_dir(self, variant: Variant, seed: int | None) -> Path:
        return self.runs_dir / variant.name / (f"seed{seed}" if seed is not None else "once")

