"""Fine-tuning: AdamW + warmup/linear decay, clipping, AMP on CUDA, best epoch by validation loss.

    model = prepare_model(base, parts["train"], lora=LoRAConfig(r=8), seed=42)
    metrics = fit(model, parts, TrainConfig(epochs=3), out_dir, tokenizer_from=base)

The run folder gets `checkpoint/` (the best epoch's weights in Hugging Face layout, LoRA merged),
`adapter.safetensors` (LoRA runs), `metrics.json`, and while training `trainer_state.pt`, from which
`fit(..., resume=True)` continues where it stopped (training/run_state.py). The caller writes
`split.json` (see data.save_split).

Under torchrun the same code trains on several processes with DistributedDataParallel
(training/distributed.py says how the work is shared): the global batch is `batch_size` x processes
x `grad_accum`, the schedule counts global steps, and only rank 0 writes files or shows progress.

A `loss_fn(logits, batch, model)` hook replaces the hard-label training loss (distillation uses it);
validation and test losses are always the hard-label loss, so runs compare on one scale.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contract.files import atomic_write_json
from contract.progress import progress as progress_bar
from training import distributed, lora as lora_lib, run_state
from training.config import BertConfig
from training.data import EncodedDataset, TextDataset, check_max_length, load_tokenizer
from training.defaults import LR_FULL
from training.errors import TrainError, TrainingInterrupted
from training.launch import launched
from training.loop import LossFn, TrainStep, amp_dtype, autocast, forward_logits, make_optimizer, make_scheduler
from training.metrics import classification_metrics
from training.model import BertForSequenceClassification, normalize_keys, read_state_dict, resolve_checkpoint
from training.run_state import STATE_FILE
from training.tracking import Reporter, check_report_to

log = logging.getLogger("training")

__all__ = ["TrainConfig", "Trainer", "fit", "prepare_model", "parameter_counts", "TrainError", "TrainingInterrupted",
           "STATE_FILE", "check_report_to", "classification_metrics"]


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32         # per process; the global batch is batch_size x processes x grad_accum
    grad_accum: int = 1          # micro-batches per optimizer step
    eval_batch_size: int = 64
    lr: float = LR_FULL
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 42
    bucket: bool = True          # length-bucketed batches: less padding, same randomness per epoch
    device: str = "auto"         # auto | cpu | cuda | cuda:N (under torchrun: the GPU of LOCAL_RANK)
    amp: str = "auto"            # auto (CUDA: bf16 if supported, else fp16 + GradScaler) | bf16 | fp16 | off
    report_to: str = "none"
    progress: bool = True

    # what must match for --resume to continue a run (progress bars and trackers may change)
    RESUME_KEYS = ("epochs", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio", "max_grad_norm",
                   "max_length", "seed", "bucket")


# ---- model preparation -----------------------------------------------------------------------
def prepare_model(base, train: TextDataset, tabular: bool = False, lora: lora_lib.LoRAConfig | None = None,
                  freeze: str = "full", seed: int = 42) -> BertForSequenceClassification:
    """Load `base` with a head for `train`'s labels; add tabular inputs, LoRA or a freezing strategy."""
    torch.manual_seed(seed)  # the new head's initialisation is part of the run's determinism
    overrides = {}
    if tabular:
        if train.features is None:
            raise TrainError("--tabular: this dataset has no tabular features (only the Stack Overflow loader makes them)")
        f = train.features.astype(np.float64)
        std = f.std(0)
        std[std < 1e-6] = 1.0  # a feature constant in training: centre it, never blow it up
        overrides = dict(num_tabular_features=f.shape[1], tabular_mean=f.mean(0).tolist(),
                         tabular_std=std.tolist(), tabular_feature_names=train.feature_names)
    model = _load_with_head(base, train.label_names, train.problem_type, overrides)
    if lora is not None:
        if freeze != "full":
            raise TrainError(f"--freeze {freeze} and LoRA both choose what trains; use one of them")
        lora_lib.apply_lora(model, lora)
    else:
        lora_lib.freeze_for_strategy(model, freeze)
    return model


def _load_with_head(base, labels: list[str], problem_type: str, overrides: dict) -> BertForSequenceClassification:
    """from_pretrained, except that a classifier of another shape (another label count, added tabular
    inputs) is replaced by a fresh one, with a warning, instead of being an error."""
    folder = resolve_checkpoint(base)
    config = BertConfig.from_json_file(folder / "config.json").with_labels(labels, problem_type)
    model = BertForSequenceClassification(dataclasses.replace(config, **overrides))
    state = normalize_keys(read_state_dict(folder))
    own = model.state_dict()
    stale = [k for k in state if k.startswith("classifier.") and k in own and state[k].shape != own[k].shape]
    if stale:
        warnings.warn(f"{folder}: its classifier {tuple(state['classifier.weight'].shape)} does not fit this task "
                      f"{tuple(own['classifier.weight'].shape)} ({len(labels)} labels"
                      f"{', tabular inputs' if overrides else ''}): a new head is trained", stacklevel=3)
    model.load_hf_state_dict({k: v for k, v in state.items() if k not in stale}, source=str(folder))
    model.source_folder = folder
    return model


def parameter_counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    total = sum(p.numel() for p in model.parameters()) - lora_params  # the deployed (merged) model
    return {"trainable_parameters": trainable, "total_parameters": total,
            "relative_parameters": trainable / total}


# ---- the trainer -----------------------------------------------------------------------------
class Trainer:
    def __init__(self, model: BertForSequenceClassification, splits: dict[str, TextDataset], cfg: TrainConfig,
                 out_dir, tokenizer_from=None, loss_fn: LossFn | None = None, run_info: dict | None = None):
        self.model, self.cfg, self.loss_fn = model, cfg, loss_fn
        self.out_dir = Path(out_dir)
        self.run_info = run_info or {}
        self.tokenizer_from = Path(tokenizer_from or getattr(model, "source_folder", None) or "")
        if not str(self.tokenizer_from) or not self.tokenizer_from.is_dir():
            raise TrainError("the trainer needs the checkpoint folder holding the tokenizer (tokenizer_from=...)")
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
            raise TrainError(f"--epochs, --batch-size and --grad-accum must be >= 1 "
                             f"(got {cfg.epochs}, {cfg.batch_size}, {cfg.grad_accum})")
        check_max_length(cfg.max_length, model.config.max_position_embeddings)
        try:
            self.dist, self.device = distributed.setup(cfg.device)
        except distributed.DistributedError as e:
            raise TrainError(str(e)) from None
        self.micro_batch, self.grad_accum = cfg.batch_size, cfg.grad_accum
        self.global_batch = cfg.batch_size * self.dist.world_size * cfg.grad_accum  # texts per optimizer step
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        tokenizer = load_tokenizer(self.tokenizer_from)
        self.label_names = splits["train"].label_names
        self.encoded = {name: EncodedDataset(ds, tokenizer, cfg.max_length) for name, ds in splits.items()}
        self.model.to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # a torchrun worker also hears the Ctrl-C its agent passes on: one request, not two
        self.stop = run_state.StopRequest(grace=run_state.SIGNAL_GRACE_SECONDS if launched() else 0.0)

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- evaluation --
    @torch.no_grad()
    def predict(self, model, enc: EncodedDataset) -> np.ndarray:
        """Logits (N, num_labels) in the dataset's order, on every rank (each scores its share)."""
        was_training = model.training
        model.eval()
        out = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
        batches = enc.batches(self.cfg.eval_batch_size, shuffle=False, bucket=True)
        for idx in distributed.eval_batches(batches, self.dist):
            b = self._to_device(enc.collate(idx))
            with self._autocast():
                logits = forward_logits(model, b)
            out[idx] = logits.float().cpu().numpy()
        model.train(was_training)
        return distributed.sum_array(out, self.dist, self.device)

    def evaluate(self, split: str, model=None) -> dict:
        model = model or self.model
        enc = self.encoded[split]
        logits = self.predict(model, enc)
        lg, y = torch.from_numpy(logits), enc.labels
        loss = float(F.binary_cross_entropy_with_logits(lg, y.float()) if model.config.multi_label
                     else F.cross_entropy(lg, y))
        return {"loss": loss, **classification_metrics(logits, y.numpy(), self.label_names, model.config.multi_label)}

    # -- state for --resume --
    def _state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def _fingerprint(self) -> dict:
        return {"config": {k: getattr(self.cfg, k) for k in TrainConfig.RESUME_KEYS},
                "processes": self.dist.world_size, "global_batch": self.global_batch,
                "model": self.model.config.to_dict(),
                "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
                "rows": {s: [int(r) for r in enc.data.rows[:: max(1, len(enc) // 50)]] + [len(enc)]
                         for s, enc in self.encoded.items()}}

    def _save_state(self, opt, sched, scaler, progress: dict) -> None:
        run_state.save(self._state_path(), self.dist, {
            "model": self.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "progress": progress,
            "fingerprint": self._fingerprint()})

    def _resume_from(self) -> dict:
        """Read the saved state, check it belongs to this run, adopt its global batch."""
        path = self._state_path()
        state = run_state.load(path)
        saved = state["fingerprint"]
        diff = run_state.check(saved, self._fingerprint())
        if diff:
            raise TrainError(f"--resume: {path} was made with different settings ({', '.join(diff)}); "
                             f"resume with the same options, or start a new --out")
        processes, world = saved.get("processes", 1), self.dist.world_size
        global_batch = run_state.saved_global_batch(saved)
        if global_batch != self.global_batch:  # the run's batches stay what they were
            self.global_batch = global_batch
            self.micro_batch, self.grad_accum = run_state.adapt_batch(global_batch, self.dist, self.cfg.batch_size)
        if processes != world:
            log.warning(f"--resume: {path} was saved by {processes} process(es), this run has {world}: "
                        f"the global batch stays {global_batch} ({world} x batch <= {self.micro_batch} x "
                        f"grad-accum {self.grad_accum}), and dropout draws new masks")
        return state

    def _restore(self, state: dict, opt, sched, scaler) -> dict:
        self.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        run_state.restore_rng(state, self.dist, self.cfg.seed, state["progress"])
        return state["progress"]

    def _decide_resume(self, resume: bool) -> bool:
        """Rank 0 looks at the run folder and decides for all; each rank must then see the same file."""
        exists = distributed.broadcast(self._state_path().exists(), self.dist)
        if resume and not exists:  # `make train` always passes --resume
            log.info(f"--resume: nothing to resume in {self.out_dir} (no {STATE_FILE}); starting a new run")
            resume = False
        if not resume and exists:
            raise TrainError(f"{self.out_dir} holds an unfinished run ({STATE_FILE}): pass --resume to continue "
                             f"it, or choose another --out")
        blind = [r for r, seen in enumerate(distributed.gather(self._state_path().exists(), self.dist)) if not seen]
        if resume and blind:  # every rank reads the state back: all stop here together
            raise TrainError(f"rank(s) {blind} cannot see {self._state_path()}, which rank 0 saved: the run folder "
                             f"(--out) must be on storage every node shares")
        return resume

    # -- training --
    def fit(self, resume: bool = False) -> dict:
        cfg, model, ctx = self.cfg, self.model, self.dist
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        resume = self._decide_resume(resume)
        counts = parameter_counts(model)
        if counts["trainable_parameters"] == 0:  # e.g. --freeze none: evaluate the model as it is
            return self._finish(best=None, history=[], counts=counts)

        state = self._resume_from() if resume else None
        steps_per_epoch = math.ceil(len(self.encoded["train"]) / self.global_batch)  # global steps
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout: each rank its own masks
        opt = make_optimizer(self.params, cfg.lr, cfg.weight_decay, self.device)
        sched = make_scheduler(opt, cfg.epochs * steps_per_epoch, cfg.warmup_ratio)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        progress = {"epoch": 0, "step": 0, "samples": 0, "loss_sum": 0.0, "seconds": 0.0, "history": [],
                    "best": None, "best_state": None}
        if state is not None:
            progress = self._restore(state, opt, sched, scaler)
            log.info(f"resuming {self.out_dir} at epoch {progress['epoch'] + 1}, step {progress['step']}")
            del state
        step = TrainStep(model, opt, sched, net=distributed.wrap(model, ctx, self.device),
                         max_grad_norm=cfg.max_grad_norm, loss_fn=self.loss_fn, scaler=scaler, autocast=self._autocast)
        if hasattr(self.loss_fn, "setup"):
            self.loss_fn.setup(self)
        reporter = Reporter(cfg.report_to if ctx.is_main else "none", self.out_dir,
                            {**dataclasses.asdict(cfg), **self.run_info, **counts, "processes": ctx.world_size,
                             "global_batch": self.global_batch})
        try:
            with self.stop.installed():
                while progress["epoch"] < cfg.epochs:
                    self._train_epoch(step, scaler, progress, reporter)
                    if self.stop.agree(ctx, self.device)[0]:
                        raise TrainingInterrupted(f"interrupted: state saved in {self._state_path()}; "
                                                  f"rerun with --resume to continue")
            with torch.no_grad():  # back to the best epoch's weights (frozen ones never changed)
                params = dict(model.named_parameters())
                for k, v in progress["best_state"].items():
                    params[k].copy_(v)
            metrics = self._finish(best=progress["best"], history=progress["history"], counts=counts,
                                   reporter=reporter)
        finally:
            reporter.close()
        if ctx.is_main:
            self._state_path().unlink(missing_ok=True)  # finished: nothing left to resume
        return metrics

    def _train_epoch(self, step: TrainStep, scaler, progress: dict, reporter: Reporter) -> None:
        cfg, model, train, ctx = self.cfg, self.model, self.encoded["train"], self.dist
        epoch = progress["epoch"]
        # the global batches one process with this global batch size would draw; each rank takes its share
        batches = train.batches(self.global_batch, shuffle=True, seed=cfg.seed, epoch=epoch, bucket=cfg.bucket)
        model.train()
        bar = progress_bar(total=len(batches), initial=progress["step"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=cfg.progress and ctx.is_main)
        t0 = time.perf_counter()
        for i in range(progress["step"], len(batches)):
            micro = [(self._to_device(train.collate(idx)), weight)
                     for idx, weight in distributed.shard(batches[i], ctx, self.micro_batch)]
            loss_sum = step(micro)
            stopping, (loss_sum,) = self.stop.agree(ctx, self.device, loss_sum)
            progress["samples"] += len(batches[i])
            progress["loss_sum"] += loss_sum
            progress["step"] = i + 1
            running = progress["loss_sum"] / progress["samples"]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{step.lr:.2e}", refresh=False)
            global_step = epoch * len(batches) + i + 1
            if global_step % 10 == 0:
                reporter.log({"train/loss": running, "train/lr": step.lr}, global_step)
            if stopping and i + 1 < len(batches):
                progress["seconds"] += time.perf_counter() - t0
                bar.close()
                self._save_state(step.opt, step.sched, scaler, progress)
                return
        bar.close()
        train_seconds = progress["seconds"] + time.perf_counter() - t0

        t1 = time.perf_counter()
        val = self.evaluate("val")
        record = {"epoch": epoch, "train_loss": progress["loss_sum"] / len(train), "val": val,
                  "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t1,
                  "train_samples_per_second": len(train) / train_seconds}
        progress["history"].append(record)
        if progress["best"] is None or val["loss"] < progress["best"]["val_loss"]:
            progress["best"] = {"epoch": epoch, "val_loss": val["loss"]}
            progress["best_state"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                                      if p.requires_grad}
        log.info(f"epoch {epoch}: train loss {record['train_loss']:.4f}, val loss {val['loss']:.4f}, "
                 f"val accuracy {val['accuracy']:.4f}, {train_seconds:.1f} s "
                 f"({record['train_samples_per_second']:.1f} samples/s)")
        reporter.log({"epoch/train_loss": record["train_loss"], "val": val,
                      "epoch/train_samples_per_second": record["train_samples_per_second"]},
                     (epoch + 1) * len(batches))
        progress.update(epoch=epoch + 1, step=0, samples=0, loss_sum=0.0, seconds=0.0)
        self._save_state(step.opt, step.sched, scaler, progress)

    def _finish(self, best, history, counts, reporter: Reporter | None = None) -> dict:
        """Score the (best) weights on test; rank 0 writes checkpoint/, adapter.safetensors, metrics.json."""
        val = history[best["epoch"]]["val"] if best else self.evaluate("val")
        test = self.evaluate("test")
        if reporter:
            reporter.log({"test": test}, len(history) * math.ceil(len(self.encoded["train"]) / self.global_batch))
        train_seconds = [h["train_seconds"] for h in history]
        metrics = {
            **self.run_info,
            "problem_type": self.model.config.problem_type,
            "label_names": self.label_names,
            "num_train": len(self.encoded["train"]), "num_val": len(self.encoded["val"]),
            "num_test": len(self.encoded["test"]),
            **counts,
            "best_epoch": best["epoch"] if best else None,
            "val": val,
            "test": test,
            "seconds_per_epoch": float(np.mean(train_seconds)) if history else None,
            "train_samples_per_second": float(np.mean([h["train_samples_per_second"] for h in history]))
            if history else None,
            "epochs": history,
            "config": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "progress"},
            "processes": self.dist.world_size,
            "global_batch": self.global_batch,
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "torch_threads": torch.get_num_threads(),
        }
        if self.dist.is_main:
            self.save_checkpoint(self.out_dir / "checkpoint")
            if hasattr(self.model, "lora_config"):
                lora_lib.save_adapter(self.model, self.out_dir / "adapter.safetensors")
            atomic_write_json(self.out_dir / "metrics.json", metrics, indent=1)
        distributed.barrier(self.dist)  # the run folder is complete before any rank returns
        log.info(f"best epoch {metrics['best_epoch']}: test loss {test['loss']:.4f}, test accuracy "
                 f"{test['accuracy']:.4f} -> {self.out_dir / 'checkpoint'}")
        return metrics

    def save_checkpoint(self, out: Path) -> Path:
        """Hugging Face layout; a LoRA model is merged on a copy (the trained model keeps its adapters)."""
        model = copy.deepcopy(self.model).cpu().eval()
        if hasattr(model, "lora_config"):
            lora_lib.merge_and_unload(model)
        return model.save_pretrained(out, tokenizer_from=self.tokenizer_from)


def fit(model, splits: dict[str, TextDataset], cfg: TrainConfig, out_dir, tokenizer_from=None,
        loss_fn: LossFn | None = None, resume: bool = False, run_info: dict | None = None) -> dict:
    """Train, keep the best epoch by validation loss, write the run folder; returns metrics.json's dict."""
    return Trainer(model, splits, cfg, out_dir, tokenizer_from, loss_fn, run_info).fit(resume=resume)
