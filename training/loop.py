"""One optimizer step, shared by every loop that trains the PyTorch model.

The trainer's epochs (`training/trainer.py`) and the quantization-aware fine-tune of the build
(`build/quantize.py`) both step through `TrainStep`: the same AdamW parameter groups, the same
warmup + linear decay, gradient clipping, mixed precision with a GradScaler for fp16, gradient
accumulation over micro-batches, and, under DistributedDataParallel, one gradient all-reduce per
step (the micro-batches before the last run under `no_sync`).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from training.errors import TrainError

LossFn = Callable[[torch.Tensor, dict, torch.nn.Module], torch.Tensor]


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim >= 2]      # matrices: weights, embeddings, LoRA A/B
    no_decay = [p for p in params if p.ndim < 2]    # biases and LayerNorm
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, **kind)


def make_scheduler(opt, total_steps: int, warmup_ratio: float):
    """Linear warmup to the peak learning rate over `warmup_ratio` of the steps, then linear decay to 0."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def amp_dtype(device: torch.device, amp: str):
    """The autocast dtype for `--amp` on this device; None trains in fp32."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise TrainError(f"--amp {amp!r}: expected auto, bf16, fp16 or off")
    if device.type != "cuda" or amp == "off":
        return None  # CPU trains in fp32: bf16 autocast on a CPU without AMX is slower, not faster
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def forward_logits(model, batch: dict) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                 features=batch.get("features")).logits


class TrainStep:
    """`step([(batch, weight), ...])` runs one optimizer step over the micro-batches of one batch and
    returns the sum of their per-text losses (weight 0 marks a stand-in that only keeps DDP in step).

    `model` is the module itself; `net` what runs forward (the DDP wrapper, or the module)."""

    def __init__(self, model: torch.nn.Module, opt, sched, *, net: torch.nn.Module | None = None,
                 max_grad_norm: float = 1.0, loss_fn: LossFn | None = None, scaler=None, autocast=None):
        self.model, self.opt, self.sched = model, opt, sched
        self.net = net if net is not None else model
        # in the model's order: the clipping norm sums the gradients in this order
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_grad_norm, self.loss_fn, self.scaler = max_grad_norm, loss_fn, scaler
        self.autocast = autocast or contextlib.nullcontext

    def loss(self, batch: dict) -> torch.Tensor:
        with self.autocast():
            logits = forward_logits(self.net, batch).float()
        if self.loss_fn is not None:
            return self.loss_fn(logits, batch, self.model)
        return self.model.loss(logits, batch["labels"])

    def __call__(self, micro_batches: list[tuple[dict, float]]) -> float:
        total = 0.0
        for i, (batch, weight) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync()
            with sync:
                loss = self.loss(batch)
                scaled = loss if weight == 1.0 else loss * weight
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if weight:
                total += loss.item() * len(batch["labels"])
        if self.scaler:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return total

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]
