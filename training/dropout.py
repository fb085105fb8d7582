"""Dropout whose mask is cheap to draw on CPU.

torch draws a dropout mask on CPU with `bernoulli_`, one serial random number per element. In a
MiniLM-L6 training step at 16 x 128 tokens the 20 masks (6 of them over the attention
probabilities, B x nh x T x T each) took a third of the step (profiled: 31 ms a mask), the same in
our model and in transformers'. Here a mask costs one pass of the generator over a quarter as many
int64 words: 16 random bits per element, kept where the bits land at or above p * 65536 (so p is
rounded to 1/65536). The bits come from torch's default generator: `torch.manual_seed` and the
trainer's saved RNG state still make runs repeat exactly. Off the CPU, `F.dropout` (and SDPA's own
dropout) are fast already and run as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_LEVELS = 1 << 16


def keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """Bool tensor of `shape`, each element True with probability 1 - p (p to 1/65536)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)  # every bit random
    bits = words.view(torch.int16)[:n].view(shape)           # uniform over -32768 .. 32767
    return bits >= round(p * _LEVELS) - _LEVELS // 2


class _ScaleKept(torch.autograd.Function):
    """x * keep / (1 - p), saving only the bool mask for backward."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    return _ScaleKept.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout (same name, no parameters, so checkpoints do not see it) with the cheap CPU mask."""

    def forward(self, x):
        return dropout(x, self.p, self.training)
