"""The experiment grid's runner: the data split once, then each (variant, seed) trained or reused.

Each run lives in <out>/experiments/<variant>/seed<k>/ and ends with result.json (written atomically):
a rerun reuses finished runs whose settings match, resumes an interrupted training from its saved
state, and redoes runs whose settings changed.

Under torchrun every rank walks the same jobs: rank 0 looks at the run folders and decides for all
(reuse, restart, resume), every rank takes part in the training, and rank 0 alone runs the
baselines, times inference and writes the files.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from contract.files import atomic_write_text
from contract.progress import progress
from training.experiment_grid import BY_NAME, SPLIT_SEED, Grid, Variant
from training.launch import Context, is_main_process

log = logging.getLogger("training")


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
    if is_main_process():  # under torchrun every rank makes the same split; rank 0 writes it
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
        if grid.processes > 1 or grid.grad_accum > 1:  # another global batch is another experiment
            s.update(processes=grid.processes, grad_accum=grid.grad_accum)
    if v.kind == "distill":
        s.update(student_layers=grid.student_layers, temperature=grid.temperature, mix=grid.mix)
    return s


# ---- progress --------------------------------------------------------------------------------
class GridProgress:
    """A line per run ('[i/N] variant seed: what') and a bar over the whole grid in units of `cost`
    (full fine-tuning = 1), so its pace and time left follow the trainings, not the baselines."""

    def __init__(self, jobs: list[tuple[Variant, int | None]], enabled: bool):
        self.jobs = jobs
        self.bar = progress(total=sum(v.cost for v, _ in jobs), desc="grid", enabled=enabled, leave=True,
                            smoothing=0, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, "
                                                    "about {remaining} left")
        self.loads = [os.getloadavg()[0]]  # other jobs on the same cores slow every figure down

    def start(self, i: int, what: str) -> None:
        v, seed = self.jobs[i]
        self.loads.append(os.getloadavg()[0])
        log.info(f"[{i + 1}/{len(self.jobs)}] {v.name}{f' seed {seed}' if seed is not None else ''}: {what}")

    def finished(self, v: Variant, reused: bool) -> None:
        if reused:  # done by an earlier invocation: says nothing about this one's pace
            self.bar.total = max(self.bar.n, self.bar.total - v.cost)
            self.bar.refresh()
        else:
            self.bar.update(v.cost)

    def close(self) -> None:
        self.bar.close()


# ---- one run ---------------------------------------------------------------------------------
def write_json(path: Path, doc) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1, default=str) + "\n")


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
    return TrainConfig(epochs=grid.epochs, batch_size=grid.batch_size, grad_accum=grid.grad_accum, lr=v.lr,
                       max_length=grid.max_length, seed=seed, device=grid.device, progress=grid.progress)


def train_variant(v: Variant, seed: int, grid: Grid, parts, run_dir: Path, settings: dict, resume: bool) -> dict:
    """Train (or resume) one variant with the project's trainer; returns its metrics.json dict.
    Under torchrun every rank calls this for the same runs: the trainer shares the work."""
    import torch

    from training import distill, trainer

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


def _plan(v: Variant, run_dir: Path, settings: dict) -> dict:
    """Rank 0's look at a run folder: reuse its result, reuse its training, resume it, or start it."""
    stored = _read_json(run_dir / "settings.json")
    if run_dir.exists() and stored != settings:
        log.info(f"{run_dir}: made with other settings; starting it again")
        shutil.rmtree(run_dir)
    result = _read_json(run_dir / "result.json")
    if result is not None and result.get("settings") == settings:
        return {"result": result}
    write_json(run_dir / "settings.json", settings)
    metrics = _read_json(run_dir / "metrics.json")
    trained = v.kind in ("fit", "distill") and metrics is not None and metrics.get("experiment") == settings
    return {"result": None, "trained": trained, "resume": (run_dir / "trainer_state.pt").exists()}


def execute(v: Variant, seed: int | None, grid: Grid, ds, parts, progress: GridProgress, i: int,
            ctx: Context = Context()) -> dict | None:
    """Run (or reuse) one (variant, seed); returns its result.json dict (None on ranks other than 0)."""
    from training import baselines, distributed

    run_dir = grid.run_dir(v, seed)
    settings = run_settings(v, seed, grid, ds)
    plan = distributed.broadcast(_plan(v, run_dir, settings) if ctx.is_main else None, ctx)
    if plan["result"] is not None:
        progress.start(i, "done earlier, reusing result.json")
        progress.finished(v, reused=True)
        return plan["result"]

    t0, cpu0 = time.perf_counter(), time.process_time()
    if v.kind in ("fit", "distill") and not plan["trained"]:
        progress.start(i, "resuming the interrupted training" if plan["resume"]
                       else "evaluating (nothing to train)" if v.freeze == "none"
                       else f"training {grid.epochs} epoch(s) on {len(parts['train']):,} texts")
        metrics = train_variant(v, seed, grid, parts, run_dir, settings, plan["resume"])
    if not ctx.is_main:
        return None
    if v.kind in ("majority", "tfidf"):
        progress.start(i, "fitting")
        fn = baselines.majority if v.kind == "majority" else baselines.tfidf_logreg
        out = fn(parts["train"], parts["test"])
        metrics = {"test": out.pop("test"), **out}
    else:
        if plan["trained"]:
            progress.start(i, "trained earlier; measuring inference speed")
            metrics = _read_json(run_dir / "metrics.json")
        ckpts = {"model": run_dir / "checkpoint"}
        if v.kind == "distill":  # teacher and student timed in the same rounds: their ratio is fair
            ckpts["teacher"] = grid.run_dir(BY_NAME["full"], seed) / "checkpoint"
        speed = measure_inference(ckpts, parts["test"], grid.max_length, batches=grid.speed_batches,
                                  rounds=grid.speed_rounds)
        metrics["inference_samples_per_second"] = speed["model"]
        if v.kind == "distill":
            metrics["teacher_inference_samples_per_second"] = speed["teacher"]
    seconds = time.perf_counter() - t0
    if plan["trained"]:  # trained by an earlier invocation: count its time too
        seconds += sum(h["train_seconds"] + h["eval_seconds"] for h in metrics.get("epochs") or [])
    result = _result(v, seed, settings, metrics, seconds)
    # CPU seconds of this process: well below threads x wall seconds means other jobs shared the cores
    result["cpu_seconds"] = time.process_time() - cpu0
    write_json(run_dir / "result.json", result)
    progress.finished(v, reused=plan["trained"])
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

