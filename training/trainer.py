"""Fine-tuning: AdamW + warmup/linear decay, clipping, AMP on CUDA, best epoch by validation loss.

    model = prepare_model(base, parts["train"], lora=LoRAConfig(r=8), seed=42)
    metrics = fit(model, parts, TrainConfig(epochs=3), out_dir, tokenizer_from=base)

The run folder gets `checkpoint/` (the best epoch's weights in Hugging Face layout, LoRA merged),
`adapter.safetensors` (LoRA runs), `metrics.json`, and while training `trainer_state.pt`, written at
the end of every epoch and on SIGINT/SIGTERM, from which `fit(..., resume=True)` continues exactly
where it stopped (same batches, same dropout masks, same final weights). The caller writes
`split.json` (see data.save_split).

A `loss_fn(logits, batch, model)` hook replaces the hard-label training loss (distillation uses it);
validation and test losses are always the hard-label loss, so runs compare on one scale.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training import lora as lora_lib
from training.data import EncodedDataset, TextDataset, check_max_length, load_tokenizer
from training.config import BertConfig
from training.defaults import LR_FULL
from training.model import BertForSequenceClassification, normalize_keys, read_state_dict, resolve_checkpoint

log = logging.getLogger("training")

STATE_FILE = "trainer_state.pt"
REPORTERS = ("none", "tensorboard", "wandb", "mlflow")


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived: the state was saved, `--resume` continues."""


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = LR_FULL
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 42
    bucket: bool = True          # length-bucketed batches: less padding, same randomness per epoch
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    amp: str = "auto"            # auto (CUDA: bf16 if supported, else fp16 + GradScaler) | bf16 | fp16 | off
    report_to: str = "none"
    progress: bool = True

    # what must match for --resume to continue a run (progress bars and trackers may change)
    RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm",
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


# ---- metrics ---------------------------------------------------------------------------------
def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str],
                           multi_label: bool) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

    if not multi_label:
        pred = logits.argmax(-1)
        p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=range(len(label_names)),
                                                     average="macro", zero_division=0)
        return {"accuracy": float(accuracy_score(labels, pred)), "precision_macro": float(p),
                "recall_macro": float(r), "f1_macro": float(f)}
    y = labels.astype(int)
    pred = (logits > 0).astype(int)  # sigmoid(logit) > 0.5
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    auc = {}
    for j, name in enumerate(label_names):  # undefined when a split holds only one class of a label
        auc[name] = float(roc_auc_score(y[:, j], logits[:, j])) if 0 < y[:, j].sum() < len(y) else None
    defined = [v for v in auc.values() if v is not None]
    return {"accuracy": float(accuracy_score(y, pred)),  # exact match of the whole label set
            "label_accuracy": float((pred == y).mean()),
            "precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f),
            "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
            "roc_auc": auc, "roc_auc_macro": float(np.mean(defined)) if defined else None}


# ---- experiment trackers ---------------------------------------------------------------------
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


# ---- the trainer -----------------------------------------------------------------------------
LossFn = Callable[[torch.Tensor, dict, torch.nn.Module], torch.Tensor]


class Trainer:
    def __init__(self, model: BertForSequenceClassification, splits: dict[str, TextDataset], cfg: TrainConfig,
                 out_dir, tokenizer_from=None, loss_fn: LossFn | None = None, run_info: dict | None = None):
        self.model, self.cfg, self.loss_fn = model, cfg, loss_fn
        self.out_dir = Path(out_dir)
        self.run_info = run_info or {}
        self.tokenizer_from = Path(tokenizer_from or getattr(model, "source_folder", None) or "")
        if not str(self.tokenizer_from) or not self.tokenizer_from.is_dir():
            raise TrainError("the trainer needs the checkpoint folder holding the tokenizer (tokenizer_from=...)")
        if cfg.epochs < 1 or cfg.batch_size < 1:
            raise TrainError(f"--epochs and --batch-size must be >= 1 (got {cfg.epochs}, {cfg.batch_size})")
        check_max_length(cfg.max_length, model.config.max_position_embeddings)
        self.device = self._pick_device(cfg.device)
        self.amp_dtype = self._pick_amp(cfg.amp)
        tokenizer = load_tokenizer(self.tokenizer_from)
        self.label_names = splits["train"].label_names
        self.encoded = {name: EncodedDataset(ds, tokenizer, cfg.max_length) for name, ds in splits.items()}
        self.model.to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._stop: int | None = None

    # -- setup --
    @staticmethod
    def _pick_device(spec: str) -> torch.device:
        if spec == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if spec.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError(f"--device {spec}: CUDA is not available on this machine")
        return torch.device(spec)

    def _pick_amp(self, amp: str):
        if amp not in ("auto", "bf16", "fp16", "off"):
            raise TrainError(f"--amp {amp!r}: expected auto, bf16, fp16 or off")
        if self.device.type != "cuda" or amp == "off":
            return None  # CPU trains in fp32: bf16 autocast on a CPU without AMX is slower, not faster
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _optimizer(self):
        decay = [p for p in self.params if p.ndim >= 2]      # matrices: weights, embeddings, LoRA A/B
        no_decay = [p for p in self.params if p.ndim < 2]    # biases and LayerNorm
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        kind = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=self.cfg.lr, **kind)

    def _scheduler(self, opt, total_steps: int):
        warmup = int(self.cfg.warmup_ratio * total_steps)

        def factor(step):  # linear warmup to lr, then linear decay to 0
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- evaluation --
    @torch.no_grad()
    def predict(self, model, enc: EncodedDataset) -> np.ndarray:
        """Logits (N, num_labels) in the dataset's order."""
        was_training = model.training
        model.eval()
        out = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
        for idx in enc.batches(self.cfg.eval_batch_size, shuffle=False, bucket=True):
            b = self._to_device(enc.collate(idx))
            with self._autocast():
                logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                               features=b.get("features")).logits
            out[idx] = logits.float().cpu().numpy()
        model.train(was_training)
        return out

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
                "model": self.model.config.to_dict(),
                "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
                "rows": {s: [int(r) for r in enc.data.rows[:: max(1, len(enc) // 50)]] + [len(enc)]
                         for s, enc in self.encoded.items()}}

    def _save_state(self, opt, sched, scaler, progress: dict) -> None:
        state = {"model": self.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict() if scaler else None, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 "progress": progress, "fingerprint": self._fingerprint()}
        tmp = self._state_path().with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        tmp.replace(self._state_path())  # a crash mid-write leaves the previous state intact

    def _load_state(self, opt, sched, scaler) -> dict:
        path = self._state_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, now = state["fingerprint"], self._fingerprint()
        diff = [k for k in now["config"] if saved["config"].get(k) != now["config"][k]]
        diff += [k for k in ("model", "trainable", "rows") if saved[k] != now[k]]
        if diff:
            raise TrainError(f"--resume: {path} was made with different settings ({', '.join(diff)}); "
                             f"resume with the same options, or start a new --out")
        self.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state["progress"]

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM ask the loop to save and stop at the next step; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop is not None:
                raise KeyboardInterrupt
            self._stop = signum
            log.warning(f"{signal.Signals(signum).name}: saving the state after this step (again to abort)")
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- training --
    def fit(self, resume: bool = False) -> dict:
        cfg, model = self.cfg, self.model
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and not self._state_path().exists():  # `make train` always passes --resume
            log.info(f"--resume: nothing to resume in {self.out_dir} (no {STATE_FILE}); starting a new run")
            resume = False
        if not resume and self._state_path().exists():
            raise TrainError(f"{self.out_dir} holds an unfinished run ({STATE_FILE}): pass --resume to continue "
                             f"it, or choose another --out")
        counts = parameter_counts(model)
        train = self.encoded["train"]
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        if counts["trainable_parameters"] == 0:  # e.g. --freeze none: evaluate the model as it is
            return self._finish(best=None, history=[], counts=counts)

        torch.manual_seed(cfg.seed)
        opt = self._optimizer()
        sched = self._scheduler(opt, cfg.epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        progress = {"epoch": 0, "step": 0, "samples": 0, "loss_sum": 0.0, "seconds": 0.0, "history": [],
                    "best": None, "best_state": None}
        if resume:
            progress = self._load_state(opt, sched, scaler)
            log.info(f"resuming {self.out_dir} at epoch {progress['epoch'] + 1}, step {progress['step']}")
        if hasattr(self.loss_fn, "setup"):
            self.loss_fn.setup(self)
        reporter = Reporter(cfg.report_to, self.out_dir, {**dataclasses.asdict(cfg), **self.run_info, **counts})
        try:
            with self._signals():
                while progress["epoch"] < cfg.epochs:
                    self._train_epoch(opt, sched, scaler, progress, reporter)
                    if self._stop is not None:
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
        self._state_path().unlink(missing_ok=True)  # finished: nothing left to resume
        return metrics

    def _train_epoch(self, opt, sched, scaler, progress: dict, reporter: Reporter) -> None:
        from tqdm.auto import tqdm

        cfg, model, train = self.cfg, self.model, self.encoded["train"]
        epoch = progress["epoch"]
        batches = train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, bucket=cfg.bucket)
        model.train()
        bar = tqdm(total=len(batches), initial=progress["step"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        for step in range(progress["step"], len(batches)):
            b = self._to_device(train.collate(batches[step]))
            with self._autocast():
                logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                               features=b.get("features")).logits.float()
            loss = self.loss_fn(logits, b, model) if self.loss_fn else model.loss(logits, b["labels"])
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)

            progress["samples"] += len(batches[step])
            progress["loss_sum"] += loss.item() * len(batches[step])
            progress["step"] = step + 1
            running = progress["loss_sum"] / progress["samples"]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
            global_step = epoch * len(batches) + step + 1
            if global_step % 10 == 0:
                reporter.log({"train/loss": running, "train/lr": sched.get_last_lr()[0]}, global_step)
            if self._stop is not None and step + 1 < len(batches):
                progress["seconds"] += time.perf_counter() - t0
                bar.close()
                self._save_state(opt, sched, scaler, progress)
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
        self._save_state(opt, sched, scaler, progress)

    def _finish(self, best, history, counts, reporter: Reporter | None = None) -> dict:
        """Score the (best) weights on test, write checkpoint/, adapter.safetensors and metrics.json."""
        val = history[best["epoch"]]["val"] if best else self.evaluate("val")
        test = self.evaluate("test")
        if reporter:
            reporter.log({"test": test}, len(history) * math.ceil(len(self.encoded["train"]) / self.cfg.batch_size))
        self.save_checkpoint(self.out_dir / "checkpoint")
        if hasattr(self.model, "lora_config"):
            lora_lib.save_adapter(self.model, self.out_dir / "adapter.safetensors")
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
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "torch_threads": torch.get_num_threads(),
        }
        tmp = self.out_dir / f".metrics.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(metrics, indent=1) + "\n")
        tmp.replace(self.out_dir / "metrics.json")
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
