"""python -m training experiments: the reference study's tables, regenerated on one dataset.

    python -m training experiments --out reports                      # offline default (MiniLM + tweets)
    python -m training experiments --quick --out /tmp/smoke           # tiny sizes, a smoke test
    python -m training experiments --seeds 3 --variants full,lora-r8  # mean ± std over three seeds
    python -m training experiments --data train-sample.csv --second-base path/to/bert-overflow

One dataset is split once (80/10/10, fixed seed, the same split `fit` makes without --limit); the
training split is then subsampled to --limit texts and validation to --val-limit, while the test
split stays whole unless --test-limit says otherwise, so that its standard error stays small.
Every variant trains with the project's trainer (best epoch by validation loss, scored on test) and
the classic baselines run on the same split. Each run lives in <out>/experiments/<variant>/seed<k>/
and ends with result.json, written atomically: a rerun skips finished runs whose settings match,
resumes an interrupted training from its saved state, and redoes runs whose settings changed.
The report is <out>/experiments.md (+ .json, + three PNG plots).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from training.defaults import LR_FULL, LR_HEAD_ONLY, LR_LORA

log = logging.getLogger("training")

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


class ExperimentError(ValueError):
    """Options that do not describe a runnable grid; the message says which and why."""


# ---- command line ----------------------------------------------------------------------------
def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data (as for `fit`)")
    d.add_argument("--data", help="CSV file (default: the bundled tweets, data/tweets.csv)")
    d.add_argument("--dataset", default="auto", choices=["auto", "tweets", "stackoverflow", "csv", "multilabel"])
    d.add_argument("--text-column", help="csv/multilabel: the text column (default: text)")
    d.add_argument("--label-column", help="csv: the label column (default: label)")
    d.add_argument("--label-columns", type=_csv_list, help="multilabel: the 0/1 label columns, e.g. toxic,insult")
    d.add_argument("--labels", type=_csv_list, help="csv: the allowed label values in class order")
    d.add_argument("--tweets-task", default="binary", choices=["binary", "3class"])
    d.add_argument("--encoding", default="utf-8", help="text encoding of --data (tweets: always latin-1)")
    s = p.add_argument_group("sizes")
    s.add_argument("--limit", type=int, help=f"training texts, a stratified subset of the training split "
                                             f"(0 = all; default {DEFAULTS['limit']})")
    s.add_argument("--val-limit", type=int, help=f"validation texts (0 = all; default {DEFAULTS['val_limit']})")
    s.add_argument("--test-limit", type=int, help="test texts (0 = the whole test split, the default)")
    s.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    m = p.add_argument_group("models and training")
    m.add_argument("--model", help="base checkpoint folder (default: the bundled MiniLM-L6)")
    m.add_argument("--second-base", help="another pretrained BERT checkpoint folder for the second-base row")
    m.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']}")
    m.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    m.add_argument("--max-length", type=int, help=f"tokens per text (default {DEFAULTS['max_length']})")
    m.add_argument("--seeds", type=int, default=1, help="seeds per variant (reported as mean ± std)")
    m.add_argument("--seed", type=int, default=DEFAULT_SEED, help="first seed (the others follow it)")
    m.add_argument("--variants", type=_csv_list,
                   help="subset to run, e.g. full,lora-r8 (default: all of " + ", ".join(BY_NAME) + ")")
    m.add_argument("--student-layers", help="teacher layers copied into the distilled student "
                                            "(default: first and last, e.g. 0,5 of a 6-layer teacher)")
    m.add_argument("--temperature", type=float, default=2.0, help="distillation temperature T")
    m.add_argument("--mix", type=float, default=0.5, help="distillation: weight of the teacher's soft loss")
    m.add_argument("--device", default="auto", help="training device: auto, cpu, cuda (inference speed is CPU)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="reports", help="experiments.md/.json, plots and the runs' folders go here")
    o.add_argument("--no-progress", action="store_true", help="no per-step progress bars")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m training experiments", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return ap.parse_args(argv)


# ---- the plan --------------------------------------------------------------------------------
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

    @property
    def runs_dir(self) -> Path:
        return self.out / "experiments"

    def run_dir(self, variant: Variant, seed: int | None) -> Path:
        return self.runs_dir / variant.name / (f"seed{seed}" if seed is not None else "once")


def resolve(args) -> Grid:
    from training.config import BertConfig
    from training.fetch import default_base_model

    preset = QUICK if args.quick else DEFAULTS
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else preset[name]  # noqa: E731
    sizes = {k: pick(k) for k in ("limit", "val_limit", "test_limit")}
    if any(v < 0 for v in sizes.values()):
        raise ExperimentError(f"--limit/--val-limit/--test-limit must be >= 0 (0 = all), got {sizes}")
    epochs, batch_size, max_length = pick("epochs"), pick("batch_size"), pick("max_length")
    if epochs < 1 or batch_size < 1 or args.seeds < 1:
        raise ExperimentError(f"--epochs, --batch-size and --seeds must be >= 1 (got {epochs}, {batch_size}, {args.seeds})")
    model = Path(args.model) if args.model else default_base_model()
    if not (model / "config.json").exists():
        raise ExperimentError(f"--model {model}: not a checkpoint folder (no config.json)")
    second = Path(args.second_base) if args.second_base else None
    if second is not None and not (second / "config.json").exists():
        raise ExperimentError(f"--second-base {second}: not a checkpoint folder (no config.json)")

    names = args.variants or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ExperimentError(f"--variants: unknown {unknown}; choose from {', '.join(BY_NAME)}")
    if "distilled" in names and "full" not in names:
        log.info("--variants: adding 'full', the distilled student's teacher")
        names = ["full"] + names
    variants = [v for v in VARIANTS if v.name in names]  # the registry's order: teacher before student

    n_layers = BertConfig.from_json_file(model / "config.json").num_hidden_layers
    if args.student_layers:
        try:
            layers = [int(x) for x in _csv_list(args.student_layers)]
        except ValueError:
            raise ExperimentError(f"--student-layers {args.student_layers!r}: expected integers like 0,5") from None
    else:
        layers = [0, n_layers - 1] if n_layers > 1 else [0]
    if "distilled" in names and (not layers or any(not 0 <= i < n_layers for i in layers)):
        raise ExperimentError(f"--student-layers {layers}: the teacher ({model}) has layers 0..{n_layers - 1}")
    return Grid(out=Path(args.out), model=model, second_base=second, sizes=sizes, epochs=epochs,
                batch_size=batch_size, max_length=max_length,
                seeds=[args.seed + i for i in range(args.seeds)], variants=variants, student_layers=layers,
                temperature=args.temperature, mix=args.mix, device=args.device, progress=not args.no_progress,
                speed_batches=preset["speed_batches"], speed_rounds=preset["speed_rounds"], quick=args.quick)


def _data_spec(args):
    from training.data import DataSpec
    return DataSpec(kind=args.dataset, path=args.data, text_column=args.text_column, label_column=args.label_column,
                    label_columns=args.label_columns, labels=args.labels, tweets_task=args.tweets_task,
                    encoding=args.encoding)


def prepare_data(spec, grid: Grid):
    """Load, split 80/10/10 once, subsample train/val (and test if asked); save split.json."""
    from training import data

    ds = data.load_dataset(spec)
    idx = data.make_split(ds, SPLIT_SEED)
    limits = {"train": grid.sizes["limit"], "val": grid.sizes["val_limit"], "test": grid.sizes["test_limit"]}
    for name, n in limits.items():
        if n and n < len(idx[name]):  # stratified, so the class shares of the split are kept
            sub = data.stratified_subsample(ds.subset(idx[name]), n, SPLIT_SEED)
            position = {int(r): i for i, r in enumerate(ds.rows)}
            idx[name] = np.array(sorted(position[int(r)] for r in sub.rows), dtype=np.int64)
    parts = {k: ds.subset(v) for k, v in idx.items()}
    data.save_split(grid.runs_dir / "split.json", ds, idx, SPLIT_SEED, limit=grid.sizes["limit"] or None)
    full_sizes = {k: len(v) for k, v in data.make_split(ds, SPLIT_SEED).items()}
    return ds, parts, full_sizes


def absent_reason(v: Variant, grid: Grid, parts) -> str | None:
    if v.tabular and parts["train"].features is None:
        return ("the dataset has no tabular features (only the Stack Overflow schema has them: "
                "--dataset stackoverflow --data train-sample.csv)")
    if v.second_base and grid.second_base is None:
        return ("no second pretrained base was named (--second-base PATH); the offline default ships only "
                "MiniLM-L6, and none is invented")
    return None


def run_settings(v: Variant, seed: int | None, grid: Grid, ds) -> dict:
    """What a run's result depends on; a stored run is reused only when this matches exactly."""
    s = {"variant": dataclasses.asdict(v), "seed": seed, "data": dataclasses.asdict(ds.spec),
         "sha256": ds.sha256, "split_seed": SPLIT_SEED, "sizes": grid.sizes}
    s["variant"].pop("cost")  # only the time estimate reads it
    if v.kind in ("fit", "distill"):
        s.update(model=str(grid.second_base if v.second_base else grid.model), epochs=grid.epochs,
                 batch_size=grid.batch_size, max_length=grid.max_length)
    if v.kind == "distill":
        s.update(student_layers=grid.student_layers, temperature=grid.temperature, mix=grid.mix)
    return s


# ---- progress --------------------------------------------------------------------------------
def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """'[i/N] variant seed: ... | elapsed | about X left', the estimate from the measured runs' pace."""

    def __init__(self, jobs: list[tuple[Variant, int | None]]):
        self.jobs, self.t0 = jobs, time.perf_counter()
        self.cost_done = self.seconds_done = 0.0
        self.loads = [os.getloadavg()[0]]  # other jobs on the same cores slow every figure down

    def start(self, i: int, what: str) -> None:
        v, seed = self.jobs[i]
        elapsed = time.perf_counter() - self.t0
        left = sum(j.cost for j, _ in self.jobs[i:])
        eta = (f"about {_fmt_time(left * self.seconds_done / self.cost_done)} left"
               if self.cost_done > 0 else "time left known after the first trained variant")
        seed_s = f" seed {seed}" if seed is not None else ""
        self.loads.append(os.getloadavg()[0])
        log.info(f"[{i + 1}/{len(self.jobs)}] {v.name}{seed_s}: {what} | elapsed {_fmt_time(elapsed)} | {eta}")

    def finished(self, v: Variant, seconds: float) -> None:
        if v.kind in ("fit", "distill"):  # the baselines' seconds say nothing about a training's pace
            self.cost_done += v.cost
            self.seconds_done += seconds


# ---- one run ---------------------------------------------------------------------------------
def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _lora_config(v: Variant, base: Path):
    from training.config import BertConfig
    from training.lora import LoRAConfig, parse_layers
    n_layers = BertConfig.from_json_file(base / "config.json").num_hidden_layers
    return LoRAConfig(r=v.lora_r, layers=parse_layers(v.lora_layers, n_layers))


def _train_config(v: Variant, seed: int, grid: Grid):
    from training.trainer import TrainConfig
    return TrainConfig(epochs=grid.epochs, batch_size=grid.batch_size, lr=v.lr, max_length=grid.max_length,
                       seed=seed, device=grid.device, progress=grid.progress)


def train_variant(v: Variant, seed: int, grid: Grid, parts, run_dir: Path, settings: dict) -> dict:
    """Train (or resume) one variant with the project's trainer; returns its metrics.json dict."""
    import torch

    from training import distill, trainer

    resume = (run_dir / trainer.STATE_FILE).exists()
    cfg = _train_config(v, seed, grid)
    info = {"experiment": settings}
    if v.kind == "distill":
        teacher_dir = grid.run_dir(BY_NAME["full"], seed) / "checkpoint"
        teacher = distill.load_teacher(teacher_dir)
        torch.manual_seed(seed)
        student = distill.student_from_layers(teacher, grid.student_layers)
        loss = distill.DistillLoss(teacher, temperature=grid.temperature, mix=grid.mix)
        return trainer.fit(student, parts, cfg, run_dir, tokenizer_from=teacher_dir, loss_fn=loss, resume=resume,
                           run_info=info)
    base = grid.second_base if v.second_base else grid.model
    model = trainer.prepare_model(base, parts["train"], tabular=v.tabular,
                                  lora=_lora_config(v, base) if v.lora_r else None, freeze=v.freeze, seed=seed)
    return trainer.fit(model, parts, cfg, run_dir, tokenizer_from=base, resume=resume, run_info=info)


def measure_inference(checkpoints: dict[str, Path], test, max_length: int, batch_size: int = 32,
                      batches: int = 8, rounds: int = 3) -> dict[str, float]:
    """CPU samples/s of each saved model (PyTorch fp32, inference_mode, batches of `batch_size` real test
    texts in file order, each padded to its longest). Models alternate within each round, so a load spike
    from elsewhere hits all of them alike; the median round counts."""
    import torch

    from training.data import load_tokenizer, tokenize
    from training.model import BertForSequenceClassification

    n = min(len(test), batch_size * batches)
    texts = test.texts[:n]
    models, inputs = {}, {}
    for name, ckpt in checkpoints.items():
        models[name] = BertForSequenceClassification.from_pretrained(ckpt).eval().cpu()
        tok = load_tokenizer(ckpt)
        inputs[name] = []
        for i in range(0, n, batch_size):
            b = tokenize(tok, texts[i:i + batch_size], max_length)
            if models[name].config.num_tabular_features:
                b["features"] = torch.as_tensor(test.features[i:i + batch_size], dtype=torch.float32)
            inputs[name].append(b)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up: first calls allocate and pick kernels
            model(**inputs[name][0])
        for _ in range(rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                for b in inputs[name]:
                    model(**b)
                times[name].append(time.perf_counter() - t0)
    return {name: n / statistics.median(t) for name, t in times.items()}


def execute(v: Variant, seed: int | None, grid: Grid, ds, parts, progress: Progress, i: int) -> dict:
    """Run (or reuse) one (variant, seed); returns its result.json dict."""
    from training import baselines

    run_dir = grid.run_dir(v, seed)
    settings = run_settings(v, seed, grid, ds)
    stored = _read_json(run_dir / "settings.json")
    if run_dir.exists() and stored != settings:
        log.info(f"{run_dir}: made with other settings; starting it again")
        shutil.rmtree(run_dir)
    result = _read_json(run_dir / "result.json")
    if result is not None and result.get("settings") == settings:
        progress.start(i, "done earlier, reusing result.json")
        return result
    _write_json(run_dir / "settings.json", settings)

    t0, cpu0 = time.perf_counter(), time.process_time()
    if v.kind in ("majority", "tfidf"):
        progress.start(i, "fitting")
        fn = baselines.majority if v.kind == "majority" else baselines.tfidf_logreg
        out = fn(parts["train"], parts["test"])
        metrics = {"test": out.pop("test"), **out}
    else:
        metrics = _read_json(run_dir / "metrics.json")
        reused = metrics is not None and metrics.get("experiment") == settings
        if not reused:
            progress.start(i, "resuming the interrupted training" if (run_dir / "trainer_state.pt").exists()
                           else "evaluating (nothing to train)" if v.freeze == "none"
                           else f"training {grid.epochs} epoch(s) on {len(parts['train']):,} texts")
            metrics = train_variant(v, seed, grid, parts, run_dir, settings)
        else:
            progress.start(i, "trained earlier; measuring inference speed")
        ckpts = {"model": run_dir / "checkpoint"}
        if v.kind == "distill":  # teacher and student timed in the same rounds: their ratio is fair
            ckpts["teacher"] = grid.run_dir(BY_NAME["full"], seed) / "checkpoint"
        speed = measure_inference(ckpts, parts["test"], grid.max_length, batches=grid.speed_batches,
                                  rounds=grid.speed_rounds)
        metrics["inference_samples_per_second"] = speed["model"]
        if v.kind == "distill":
            metrics["teacher_inference_samples_per_second"] = speed["teacher"]
    seconds = time.perf_counter() - t0
    if v.kind in ("fit", "distill") and reused:  # trained by an earlier invocation: count its time too
        seconds += sum(h["train_seconds"] + h["eval_seconds"] for h in metrics.get("epochs") or [])
    result = _result(v, seed, settings, metrics, seconds)
    # CPU seconds of this process: well below threads x wall seconds means other jobs shared the cores
    result["cpu_seconds"] = time.process_time() - cpu0
    _write_json(run_dir / "result.json", result)
    progress.finished(v, result["run_seconds"])
    return result


def _result(v: Variant, seed, settings: dict, m: dict, seconds: float) -> dict:
    """The fields the report reads, from the trainer's metrics.json (or a baseline's dict)."""
    multi = m.get("problem_type", "").startswith("multi") or "f1_micro" in m["test"]
    history = m.get("epochs") or []
    r = {"variant": v.name, "seed": seed, "settings": settings, "run_seconds": seconds,
         "test_loss": m["test"]["loss"],
         "metric": m["test"]["f1_micro"] if multi else m["test"]["accuracy"],
         "test": m["test"],
         "trainable_parameters": m["trainable_parameters"],
         "total_parameters": m.get("total_parameters"),
         "seconds_per_epoch": m.get("seconds_per_epoch"),
         "best_epoch": m.get("best_epoch"),
         "inference_samples_per_second": m.get("inference_samples_per_second"),
         "val_loss_per_epoch": [h["val"]["loss"] for h in history],
         "train_seconds_per_epoch": [h["train_seconds"] for h in history],
         "val_eval_seconds_per_epoch": [h["eval_seconds"] for h in history],
         "num_train": m.get("num_train"), "num_val": m.get("num_val"), "num_test": m.get("num_test"),
         "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    if v.kind == "distill":
        t = m["teacher_test"]
        r["teacher_metric"] = t["f1_micro"] if multi else t["accuracy"]
        r["teacher_inference_samples_per_second"] = m["teacher_inference_samples_per_second"]
        r["accuracy_ratio"] = r["metric"] / r["teacher_metric"] if r["teacher_metric"] else None
        r["speed_ratio"] = r["inference_samples_per_second"] / r["teacher_inference_samples_per_second"]
    return r


# ---- the grid --------------------------------------------------------------------------------
def run_grid(args) -> dict:
    import torch

    t_start = time.perf_counter()
    grid = resolve(args)
    ds, parts, full_sizes = prepare_data(_data_spec(args), grid)
    log.info(f"data: {ds.spec.path} ({ds.spec.kind}, {len(ds):,} texts) -> "
             + ", ".join(f"{k} {len(v):,} of {full_sizes[k]:,}" for k, v in parts.items()))
    jobs, absent = [], {}
    for v in grid.variants:
        reason = absent_reason(v, grid, parts)
        if reason:
            absent[v.name] = reason
            log.info(f"{v.name}: absent: {reason}")
        elif v.kind in ("majority", "tfidf"):
            jobs.append((v, None))  # deterministic: one run serves every seed
        else:
            jobs += [(v, s) for s in grid.seeds]
    progress = Progress(jobs)
    results = [execute(v, seed, grid, ds, parts, progress, i) for i, (v, seed) in enumerate(jobs)]
    wall = time.perf_counter() - t_start
    progress.loads.append(os.getloadavg()[0])
    log.info(f"grid finished in {_fmt_time(wall)}")

    report = build_report(grid, ds, parts, full_sizes, results, absent, wall,
                          threads=torch.get_num_threads(), argv=getattr(args, "argv", None))
    report["machine"]["load_average_1min"] = {"min": min(progress.loads), "max": max(progress.loads),
                                              "samples": len(progress.loads)}
    write_report(report, grid)
    return report


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
                     "mix": grid.mix, "quick": grid.quick, "reference_parameters": reference},
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


def _table(rows: list[dict], names: list[str], metric: str) -> list[str]:
    head = ["Model", "Test loss", metric.capitalize(), "Trainable params", "Relative", "s/epoch", "Best epoch",
            "CPU samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {r["variant"]: r for r in rows}
    for name in names:
        r = by.get(name)
        if r is None:
            continue  # not selected with --variants
        if r["status"] == "absent":
            lines.append(f"| {r['title']} | absent: {r['reason']} |" + " |" * (len(head) - 2))
        else:
            lines.append("| " + " | ".join(_row_cells(r)) + " |")
    return lines


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
    lines = [f"# Experiments: which variant to train and serve",
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
             f"- Base: `{st['model']}`; {st['epochs']} epoch(s), batch {st['batch_size']}, max length "
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
             f"- Duration: {_fmt_time(rep['wall_seconds'])} wall clock for this invocation; "
             f"{_fmt_time(rep['compute_seconds'])} of run time in all (runs reused from an earlier, interrupted "
             f"invocation count here with their own time). The same grid on the whole split would take about "
             f"{_fmt_time(rep['full_size_estimate_seconds'])} (estimated from the measured per-epoch times, "
             f"scaled by split size).",
             _contention_line(rep),
             ""]
    for title, names in SECTIONS:
        if any(r["variant"] in names for r in rows):
            lines += [f"## {title}", ""] + _table(rows, names, metric) + [""]
    dist = next((r for r in rows if r["variant"] == "distilled" and r["status"] == "done"), None)
    if dist:
        s = dist["summary"]
        layers = ",".join(map(str, st["student_layers"]))
        lines += ["## Distillation (study section 4): student vs its teacher", "",
                  f"Student: teacher layers {layers} (of the full fine-tuned model of the same seed) with its "
                  f"embeddings, pooler and head, trained on the teacher's softened probabilities "
                  f"(KL·T², T = {st['temperature']:g}, mix {st['mix']:g} with the hard-label loss). "
                  f"Teacher and student speeds are timed in the same alternating rounds.", "",
                  f"| Model | Parameters | {metric.capitalize()} | CPU samples/s | {metric.capitalize()} ratio | "
                  f"Speed ratio |", "|---|---|---|---|---|---|",
                  f"| Teacher (full fine-tuning) | {st['reference_parameters']:,} | "
                  f"{_pm(s['teacher_metric'], lambda x: f'{x:.2f}%', 100)} | "
                  f"{_pm(s['teacher_inference_samples_per_second'], lambda x: f'{x:.0f}')} | 100% | 1.00x |",
                  f"| {dist['title']} ({len(st['student_layers'])} layers: {layers}) | {dist['total_parameters']:,} | "
                  f"{_pm(s['metric'], lambda x: f'{x:.2f}%', 100)} | "
                  f"{_pm(s['inference_samples_per_second'], lambda x: f'{x:.0f}')} | "
                  f"{_pm(s['accuracy_ratio'], lambda x: f'{x:.2f}%', 100)} | "
                  f"{_pm(s['speed_ratio'], lambda x: f'{x:.2f}x')} |", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, out)})" for p in plots] + [""]
    lines += [f"Per-run folders (metrics.json with every epoch, checkpoint/, result.json): "
              f"`{os.path.relpath(Path(d['split_file']).parent, out)}/<variant>/seed<k>/`.", ""]
    return "\n".join(lines)


def write_report(rep: dict, grid: Grid) -> dict:
    from training import plots

    plot_paths = plots.write_all(rep["rows"], grid.out, rep["metric"])
    rep["plots"] = [str(p) for p in plot_paths]
    _write_json(grid.out / "experiments.json", rep)
    md = grid.out / "experiments.md"
    tmp = md.with_name(f".{md.name}.{os.getpid()}.tmp")
    tmp.write_text(render_markdown(rep, plot_paths, grid.out))
    tmp.replace(md)
    log.info(f"report: {md}, {grid.out / 'experiments.json'}, " + ", ".join(p.name for p in plot_paths))
    return rep


# ---- entry points ----------------------------------------------------------------------------
def cmd_experiments(args) -> None:
    """For the `python -m training` dispatcher."""
    from training.trainer import TrainError

    if not getattr(args, "argv", None):  # the command line, for the report's "generated by"
        args.argv = ["python -m training", *sys.argv[1:]]
    try:
        rep = run_grid(args)
    except ExperimentError as e:  # the dispatcher prints the project's errors in one line
        raise TrainError(str(e)) from None
    print((Path(args.out) / "experiments.md").read_text())
    print(f"({_fmt_time(rep['wall_seconds'])} wall clock)")


def main(argv=None) -> int:
    from training.config import ConfigError
    from training.data import DataError
    from training.distill import DistillError
    from training.fetch import FetchError
    from training.model import CheckpointError
    from training.trainer import TrainError, TrainingInterrupted

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = ["python -m training experiments", *argv]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    try:
        cmd_experiments(args)
    except (ExperimentError, DataError, TrainError, ConfigError, CheckpointError, DistillError, FetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        print(f"{e or 'aborted'}; rerun the same command to continue (finished variants are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
