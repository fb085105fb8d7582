"""INT8 quantization-aware training with NVIDIA Model Optimizer (modelopt), on CPU or GPU: the stage.

    checkpoint (LoRA merged) -> insert Q/DQ (weights per-channel, activations per-tensor)
      -> calibrate activation ranges on training texts -> per-group sensitivity on validation texts
      -> disable quantization where it costs more than a threshold -> short QAT fine-tune
      -> save (modelopt state + weights) so that ONNX export runs as its own stage

Quantizer insertion, calibration and the sensitivity analysis are in build/quantizers.py; the QAT
fine-tune steps through the trainer's loop (training/loop.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from build.artifacts import (BuildError, Encoder, Examples, accuracy, batches, copy_checkpoint_metadata,
                             load_model, predictions)
from build.quantizers import (CALIB_METHODS, choose_float_groups, device_of, insert_and_calibrate, logits_of,
                              mtq_modules, quantizer_groups, quantizers, sensitivity, sensitivity_markdown,
                              torch_feeds)
from contract.files import atomic_dir
from contract.progress import progress

STATE_FILE = "modelopt_state.pth"   # mto.save(): the quantizer layout plus every weight and range
REPORT_FILE = "quantize.json"


@dataclasses.dataclass
class QuantizeSettings:
    calib_method: str = "max"
    percentile: float = 99.99       # for calib_method="percentile"
    calib_texts: int = 512          # training texts for calibration
    sensitivity_texts: int = 512    # validation texts for the sensitivity analysis
    threshold: float = 0.0025       # accuracy INT8 may lose against fp32 before groups go back to float
    disable: tuple[str, ...] = ()   # groups to keep in float regardless of the analysis
    qat_steps: int | None = None    # None: a tenth of the training run's steps (if recorded)
    qat_lr: float | None = None     # None: a hundredth of the training run's learning rate
    qat_batch: int | None = None    # None: the training run's batch size (16 if not recorded)
    max_length: int = 128
    batch_size: int = 32            # for calibration and evaluation
    seed: int = 0
    device: str = "auto"            # auto: CUDA when available (much faster), else CPU

    def __post_init__(self):
        if self.calib_method not in CALIB_METHODS:
            raise BuildError(f"calibration method {self.calib_method!r} is not one of {CALIB_METHODS}")
        if not 0 < self.percentile <= 100:
            raise BuildError(f"percentile must be in (0, 100], got {self.percentile}")


# ---- QAT -----------------------------------------------------------------------------------------
def training_record(checkpoint: Path) -> dict:
    """The training run's learning rate and optimizer steps, from the metrics.json that
    `python -m training fit` writes beside the checkpoint folder ({} when there is none)."""
    path = Path(checkpoint).parent / "metrics.json"
    try:
        m = json.loads(path.read_text())
        cfg = m["config"]
        batch = int(m.get("global_batch") or cfg["batch_size"])  # texts per step, all processes together
        steps = int(cfg["epochs"]) * math.ceil(int(m["num_train"]) / batch)
        return {"file": str(path), "learning_rate": float(cfg["lr"]), "steps": steps, "batch_size": batch}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {}


def qat_finetune(model: torch.nn.Module, train: Examples, encoder: Encoder, steps: int, lr: float,
                 batch_size: int = 16, seed: int = 0, log=print, show_progress: bool = True) -> list[float]:
    """A short fine-tune through the fake quantizers (straight-through gradients); ranges stay fixed.

    Each step is the trainer's (training/loop.py): its AdamW parameter groups, clipping at 1.0, and
    its schedule without warmup (a linear decay from `lr`). Batches are random draws of the training
    texts, encoded as the server encodes them. Returns each step's mean loss."""
    from training.loop import TrainStep, make_optimizer, make_scheduler

    if steps <= 0 or len(train) == 0:
        return []
    rng = np.random.default_rng(seed)
    dev = device_of(model)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], lr, weight_decay=0.01, device=dev)
    step = TrainStep(model, opt, make_scheduler(opt, steps, warmup_ratio=0.0), max_grad_norm=1.0)
    model.train()
    losses, order, pos, t0 = [], rng.permutation(len(train)), 0, time.time()
    bar = progress(total=steps, desc="QAT", unit="step", enabled=show_progress)
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(train)), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        feeds, labels = next(batches(train.subset(idx), encoder, batch_size))
        batch = {**torch_feeds(feeds, dev), "labels": torch.as_tensor(np.asarray(labels), device=dev)}
        losses.append(step([(batch, 1.0)]) / len(idx))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", refresh=False)
    bar.close()
    log(f"  QAT: {steps} steps, loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.4f} [{time.time() - t0:.0f}s]")
    model.eval()
    return losses


# ---- the stage -----------------------------------------------------------------------------------
def quantize(checkpoint: str | Path, train: Examples, val: Examples, out_dir: str | Path,
             settings: QuantizeSettings | None = None, adapter: str | Path | None = None, log=print) -> dict:
    """Run the whole stage and write `out_dir` atomically; returns the report dict."""
    s = settings or QuantizeSettings()
    mto, _ = mtq_modules()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    torch.manual_seed(s.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
    model = load_model(checkpoint, adapter).to(device)
    encoder = Encoder(checkpoint, s.max_length)
    calib, sens_val = train.sample(s.calib_texts, s.seed), val.sample(s.sensitivity_texts, s.seed)
    if len(sens_val) == 0:
        raise BuildError("the sensitivity analysis needs validation texts (the split's 'val' part is empty)")

    fp32_logits = logits_of(model, sens_val, encoder, s.batch_size)
    t0 = time.time()
    model = insert_and_calibrate(model, calib, encoder, s.calib_method, s.percentile, s.batch_size)
    n_q = len(quantizers(model))
    log(f"inserted {n_q} quantizers, calibrated ({s.calib_method}) on {len(calib)} texts [{time.time() - t0:.0f}s]")

    base, rows = sensitivity(model, sens_val, encoder, fp32_logits, s.batch_size, log)
    groups = quantizer_groups(model)
    unknown = [g for g in s.disable if g not in groups]
    if unknown:
        raise BuildError(f"--disable {unknown}: no such group (groups: {list(groups)})")
    disabled, after_disable, steps_taken = choose_float_groups(model, rows, groups, sens_val, encoder, base, s, log)
    keep_float = {n for g in disabled for n in groups[g][1]}
    log(f"kept in float: {disabled or 'nothing'} ({len(keep_float)}/{n_q} quantizers); "
        f"val accuracy {base['accuracy']:.4f} -> {after_disable:.4f} (fp32 {base['fp32_accuracy']:.4f})")

    record = training_record(checkpoint)
    steps = s.qat_steps if s.qat_steps is not None else (
        max(1, round(record["steps"] / 10)) if record.get("steps") else 100)
    lr = s.qat_lr if s.qat_lr is not None else (record["learning_rate"] / 100 if record.get("learning_rate") else 5e-7)
    qat_batch = s.qat_batch or record.get("batch_size") or 16
    log(f"QAT: {steps} steps at lr {lr:.2e}, batch {qat_batch}"
        + (f" (a tenth of the steps / a hundredth of the lr recorded in {record['file']})" if record else
           " (no training record in the checkpoint: defaults)"))
    losses = qat_finetune(model, train, encoder, steps, lr, qat_batch, s.seed, log)
    after_qat = accuracy(predictions(logits_of(model, sens_val, encoder, s.batch_size), model.config.multi_label),
                         sens_val.labels)
    log(f"val accuracy after QAT {after_qat:.4f}")

    report = {
        "checkpoint": str(checkpoint), "adapter": str(adapter) if adapter else None,
        "settings": dataclasses.asdict(s),
        "calibration": {"method": s.calib_method, "texts": len(calib),
                        "percentile": s.percentile if s.calib_method == "percentile" else None},
        "quantizers": n_q, "kept_float_quantizers": len(keep_float),
        "validation_texts": len(sens_val), "baseline": base, "sensitivity": rows,
        "threshold": s.threshold, "disabled_groups": disabled, "disable_steps": steps_taken,
        "val_accuracy": {"fp32": base["fp32_accuracy"], "int8_all": base["accuracy"],
                         "int8_after_disable": after_disable, "int8_after_qat": after_qat},
        "qat": {"steps": steps, "learning_rate": lr, "batch_size": qat_batch, "record": record,
                "first_loss": losses[0] if losses else None, "last_loss": float(np.mean(losses[-10:])) if losses else None},
    }
    model.cpu()
    with atomic_dir(out_dir) as tmp:
        mto.save(model, tmp / STATE_FILE)
        copy_checkpoint_metadata(checkpoint, tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "sensitivity.md").write_text("# INT8 sensitivity\n\n" + sensitivity_markdown(base, rows, s.threshold, disabled))
    return report


def load_quantized(quant_dir: str | Path) -> torch.nn.Module:
    """The quantized model saved by `quantize` (eval mode), ready for ONNX export."""
    from contract.bert_config import BertConfig
    from training.model import BertForSequenceClassification

    mto, _ = mtq_modules()
    quant_dir = Path(quant_dir)
    if not (quant_dir / STATE_FILE).exists():
        raise BuildError(f"{quant_dir}: no {STATE_FILE} (run `python -m build quantize` first)")
    model = BertForSequenceClassification(BertConfig.from_json_file(quant_dir / "config.json"))
    return mto.restore(model, quant_dir / STATE_FILE).eval()


# ---- command line: python -m build quantize ------------------------------------------------------
def add_arguments(p) -> None:
    from build.artifacts import add_data_arguments

    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint folder (Hugging Face layout)")
    p.add_argument("--adapter", type=Path, default=None, help="LoRA adapter file to merge into the checkpoint first")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    add_data_arguments(p)
    d = QuantizeSettings()
    p.add_argument("--calib", choices=CALIB_METHODS, default=d.calib_method,
                   help="activation ranges: max (modelopt's max algorithm), or percentile/entropy over "
                        "modelopt's histogram calibrator; weights always per-channel max")
    p.add_argument("--percentile", type=float, default=d.percentile, help="for --calib percentile")
    p.add_argument("--calib-texts", type=int, default=d.calib_texts, help="training texts for calibration")
    p.add_argument("--sensitivity-texts", type=int, default=d.sensitivity_texts, help="validation texts for the analysis")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="validation accuracy INT8 may lose vs fp32 before the most sensitive groups go back to float "
                        "(0.0025 = 0.25 points)")
    p.add_argument("--disable", default="", help="comma-separated groups to keep in float anyway (e.g. classifier)")
    p.add_argument("--qat-steps", type=int, default=None, help="default: a tenth of the recorded training steps")
    p.add_argument("--qat-lr", type=float, default=None, help="default: a hundredth of the recorded learning rate")
    p.add_argument("--qat-batch", type=int, default=None, help="default: the training run's batch size")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--train-texts", type=int, default=None, help="use a random sample of N training texts")
    p.add_argument("--seed", type=int, default=d.seed)


def run(args) -> int:
    from build.artifacts import examples_from_args

    s = QuantizeSettings(calib_method=args.calib, percentile=args.percentile, calib_texts=args.calib_texts,
                         sensitivity_texts=args.sensitivity_texts, threshold=args.threshold,
                         disable=tuple(g for g in args.disable.split(",") if g), qat_steps=args.qat_steps,
                         qat_lr=args.qat_lr, qat_batch=args.qat_batch, max_length=args.max_length, seed=args.seed,
                         device=args.device)
    train = examples_from_args(args, ["train"], args.train_texts)["train"]
    val = examples_from_args(args, ["val"])["val"]
    report = quantize(args.checkpoint, train, val, args.out, s, args.adapter)
    print(f"wrote {args.out} (kept in float: {', '.join(report['disabled_groups']) or 'nothing'})")
    return 0
