"""LoRA (low-rank adaptation) from scratch.

`LoRALinear` *is* an nn.Linear: it keeps the base `weight` and `bias` names, so a base checkpoint loads
into a LoRA model untouched, and adds `lora_A` (r, in) and `lora_B` (out, r). The update B @ A starts
at zero (B = 0), so a fresh adapter leaves the model's outputs unchanged.

    y = x W^T + b + (dropout(x) A^T B^T) * alpha / r

Merging adds B @ A * alpha/r into `weight` for inference at the base model's speed; the base weight
is kept aside so that unmerging restores it bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from contract.files import atomic_write
from training.dropout import Dropout


@dataclasses.dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "value")  # last component of a Linear's name
    layers: tuple[int, ...] | None = None                # encoder layer indices; None = every layer
    trainable_modules: tuple[str, ...] = ("classifier",)  # trained in full beside the adapters

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        self.target_modules = tuple(self.target_modules)
        self.trainable_modules = tuple(self.trainable_modules)
        self.layers = None if self.layers is None else tuple(int(i) for i in self.layers)


def parse_layers(spec: str | None, num_layers: int) -> tuple[int, ...] | None:
    """'all' | 'last4' | 'first2' | '0,3,5' -> layer indices (None = all)."""
    if spec in (None, "", "all"):
        return None
    if m := re.fullmatch(r"(last|first)(\d+)", spec):
        n = int(m.group(2))
        if not 1 <= n <= num_layers:
            raise ValueError(f"--lora-layers {spec}: the model has {num_layers} layers")
        return tuple(range(num_layers - n, num_layers)) if m.group(1) == "last" else tuple(range(n))
    try:
        idx = tuple(int(i) for i in spec.split(","))
    except ValueError:
        raise ValueError(f"--lora-layers {spec!r}: expected all, lastN, firstN or a list like 0,3,5") from None
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--lora-layers {spec}: layers {bad} do not exist (the model has {num_layers})")
    return idx


class LoRALinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float, bias=True):
        super().__init__(in_features, out_features, bias=bias)
        self.r, self.scaling = r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._base_weight: torch.Tensor | None = None

    @classmethod
    def wrap(cls, linear: nn.Linear, cfg: LoRAConfig) -> "LoRALinear":
        new = cls(linear.in_features, linear.out_features, cfg.r, cfg.alpha, cfg.dropout,
                  bias=linear.bias is not None)
        new.to(linear.weight.device, linear.weight.dtype)
        new.train(linear.training)  # an adapter added to an eval() model must not start dropping out
        new.weight = linear.weight  # share, not copy: base names and values are untouched
        new.bias = linear.bias
        return new

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # in place, the scaling folded into the add: one pass over y instead of three (linear's
        # backward does not need its output, so autograd allows it)
        return y.add_(F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B), alpha=self.scaling)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self._base_weight = self.weight.detach().clone()
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.copy_(self._base_weight)
            self._base_weight, self.merged = None, False


def _encoder_layer_index(name: str) -> int | None:
    m = re.search(r"encoder\.layer\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap the targeted Linears in place, freeze everything else but `cfg.trainable_modules`.

    Returns the wrapped module names. The config is remembered on the model for save_adapter().
    """
    targets = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name.rsplit(".", 1)[-1] in cfg.target_modules:
            layer = _encoder_layer_index(name)
            if cfg.layers is None or layer in cfg.layers:
                targets.append(name)
    if not targets:
        raise ValueError(f"LoRA found no Linear named {cfg.target_modules} in layers {cfg.layers}")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear.wrap(getattr(parent, child), cfg))
    mark_trainable(model, cfg.trainable_modules)
    model.lora_config = cfg
    return targets


def mark_trainable(model: nn.Module, trainable_modules=("classifier",)) -> None:
    """Only LoRA matrices and the named modules (matched on a name component) get gradients."""
    for name, p in model.named_parameters():
        parts = name.split(".")
        p.requires_grad = "lora_A" in parts or "lora_B" in parts or any(m in parts for m in trainable_modules)


def lora_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain nn.Linear back (for export/save)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=module.weight.device, dtype=module.weight.dtype)
            plain.weight, plain.bias = module.weight, module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, plain)
    if hasattr(model, "lora_config"):
        del model.lora_config
    for p in model.parameters():
        p.requires_grad = True
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter: LoRA matrices plus the fully trained modules (e.g. the classifier)."""
    cfg: LoRAConfig = model.lora_config
    out = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "lora_A" in parts or "lora_B" in parts or any(m in parts for m in cfg.trainable_modules):
            out[name] = p.detach().contiguous().cpu()
    return out


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """One small safetensors file; the LoRA settings ride in its metadata header."""
    from safetensors.torch import save_file

    if any(m.merged for m in lora_modules(model)):
        raise RuntimeError("unmerge the adapters before saving them (merged weights are not an adapter)")
    meta = {"lora_config": json.dumps(dataclasses.asdict(model.lora_config))}
    return atomic_write(path, lambda tmp: save_file(adapter_state_dict(model), tmp, metadata=meta))


def load_adapter(model: nn.Module, path: str | Path) -> LoRAConfig:
    """Apply the saved LoRA settings to a base model (if not applied yet) and load the adapter weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if "lora_config" not in meta:
        raise ValueError(f"{path}: not a LoRA adapter file (no lora_config in its metadata)")
    cfg = LoRAConfig(**json.loads(meta["lora_config"]))
    if not hasattr(model, "lora_config"):
        apply_lora(model, cfg)
    state = load_file(path)
    own = dict(model.named_parameters())
    bad = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{path}: adapter keys that do not fit this model: {bad[:10]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return cfg


def freeze_for_strategy(model: nn.Module, strategy: str) -> None:
    """The reference study's freezing grid: 'none' (no training), 'classifier', 'classifier+K'
    (classifier and the first K encoder layers), 'full'."""
    if strategy == "full":
        for p in model.parameters():
            p.requires_grad = True
        return
    m = re.fullmatch(r"classifier(?:\+(\d+))?|none", strategy)
    if not m:
        raise ValueError(f"unknown freezing strategy {strategy!r}: none, classifier, classifier+K or full")
    first_k = int(m.group(1) or 0)
    for name, p in model.named_parameters():
        layer = _encoder_layer_index(name)
        p.requires_grad = strategy != "none" and (
            name.startswith("classifier.") or (layer is not None and layer < first_k))
