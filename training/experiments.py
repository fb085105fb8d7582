"""python -m training experiments: the reference study's tables, regenerated on one dataset.

    python -m training experiments --out reports                      # offline default (MiniLM + tweets)
    python -m training experiments --quick --out /tmp/smoke           # tiny sizes, a smoke test
    python -m training experiments --seeds 3 --variants full,lora-r8  # mean ± std over three seeds
    python -m training experiments --data train-sample.csv --second-base path/to/bert-overflow
    torchrun --nproc-per-node 2 -m training experiments --out reports # each training on 2 processes

One dataset is split once (80/10/10, fixed seed, the same split `fit` makes without --limit); the
training split is then subsampled to --limit texts and validation to --val-limit, while the test
split stays whole unless --test-limit says otherwise, so that its standard error stays small.
Every variant trains with the project's trainer (best epoch by validation loss, scored on test) and
the classic baselines run on the same split. The variants are in training/experiment_grid.py, the
runner (reuse, resume, timing) in training/experiment_runs.py, the report in
training/experiment_report.py: <out>/experiments.md (+ .json, + three PNG plots).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from training.experiment_grid import BY_NAME, DEFAULT_SEED, DEFAULTS, QUICK, VARIANTS, ExperimentError, Grid
from training.launch import from_env

log = logging.getLogger("training")


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
    m.add_argument("--batch-size", type=int, help=f"per process (default {DEFAULTS['batch_size']})")
    m.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (as for `fit`)")
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


def resolve(args) -> Grid:
    from training.config import BertConfig
    from training.fetch import default_base_model

    preset = QUICK if args.quick else DEFAULTS
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else preset[name]  # noqa: E731
    sizes = {k: pick(k) for k in ("limit", "val_limit", "test_limit")}
    if any(v < 0 for v in sizes.values()):
        raise ExperimentError(f"--limit/--val-limit/--test-limit must be >= 0 (0 = all), got {sizes}")
    epochs, batch_size, max_length = pick("epochs"), pick("batch_size"), pick("max_length")
    if min(epochs, batch_size, args.seeds, args.grad_accum) < 1:
        raise ExperimentError(f"--epochs, --batch-size, --grad-accum and --seeds must be >= 1 (got {epochs}, "
                              f"{batch_size}, {args.grad_accum}, {args.seeds})")
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
                speed_batches=preset["speed_batches"], speed_rounds=preset["speed_rounds"], quick=args.quick,
                grad_accum=args.grad_accum, processes=from_env().world_size)


def _data_spec(args):
    from training.data import DataSpec
    return DataSpec(kind=args.dataset, path=args.data, text_column=args.text_column, label_column=args.label_column,
                    label_columns=args.label_columns, labels=args.labels, tweets_task=args.tweets_task,
                    encoding=args.encoding)


# ---- the grid --------------------------------------------------------------------------------
def run_grid(args) -> dict | None:
    """Run every job of the grid and write the report; returns it (None on ranks other than 0)."""
    import torch

    from training import distributed
    from training.experiment_report import build_report, fmt_time, write_report
    from training.experiment_runs import GridProgress, absent_reason, execute, prepare_data

    t_start = time.perf_counter()
    grid = resolve(args)
    try:  # under torchrun: join the job before the first decision
        ctx, _ = distributed.setup(grid.device)
    except distributed.DistributedError as e:
        raise ExperimentError(str(e)) from None
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
    progress = GridProgress(jobs, enabled=grid.progress and ctx.is_main)
    try:
        results = [execute(v, seed, grid, ds, parts, progress, i, ctx) for i, (v, seed) in enumerate(jobs)]
    finally:
        progress.close()
    if not ctx.is_main:
        return None
    wall = time.perf_counter() - t_start
    progress.loads.append(os.getloadavg()[0])
    log.info(f"grid finished in {fmt_time(wall)}")

    report = build_report(grid, ds, parts, full_sizes, results, absent, wall,
                          threads=torch.get_num_threads(), argv=getattr(args, "argv", None))
    report["machine"]["load_average_1min"] = {"min": min(progress.loads), "max": max(progress.loads),
                                              "samples": len(progress.loads)}
    write_report(report, grid)
    return report


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
    if rep is not None:  # rank 0 (or the only process)
        from training.experiment_report import fmt_time
        print((Path(args.out) / "experiments.md").read_text())
        print(f"({fmt_time(rep['wall_seconds'])} wall clock)")


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
    logging.basicConfig(level=logging.INFO if from_env().is_main else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
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
