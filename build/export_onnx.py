"""PyTorch classifier -> ONNX, with dynamic batch and sequence axes.

The graph takes `input_ids`, `attention_mask`, `token_type_ids` (int64, (B, T)) and, for tabular
models, `features` (float32, (B, k)); it returns `logits` (B, num_labels). These names are the
contract with the Triton model configs and the tokenizer model.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


class LogitsOnly(nn.Module):
    """Positional inputs in the contract's order, a plain tensor out (export needs no dataclass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, features=None):
        return self.model(input_ids, attention_mask, token_type_ids, features=features).logits


def input_names(model: nn.Module) -> list[str]:
    return list(TEXT_INPUTS) + (["features"] if model.config.num_tabular_features else [])


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 16) -> tuple[torch.Tensor, ...]:
    device = next(model.parameters()).device
    ids = torch.randint(1000, 2000, (batch, seq), device=device)
    ids[:, 0] = 101  # [CLS]
    inputs = [ids, torch.ones_like(ids), torch.zeros_like(ids)]
    if model.config.num_tabular_features:
        inputs.append(torch.zeros(batch, model.config.num_tabular_features, device=device))
    return tuple(inputs)


def export_onnx(model: nn.Module, out_path: str | Path, opset: int = OPSET) -> Path:
    """Export `model` as it is (fp32, fp16 after .half(), or with modelopt Q/DQ quantizers inserted).

    Uses the TorchScript exporter (dynamo=False): the dynamo exporter fails on fake-quant ops.
    Written to a temp file and renamed, so a failed export never leaves a half-written model.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in TEXT_INPUTS}
    if "features" in names:
        dynamic["features"] = {0: "batch"}
    dynamic["logits"] = {0: "batch"}
    wrapper = LogitsOnly(model).eval()
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_path = Path(tmp) / out_path.name
        with torch.no_grad():
            torch.onnx.export(wrapper, example_inputs(model), str(tmp_path), input_names=names,
                              output_names=["logits"], dynamic_axes=dynamic, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
        tmp_path.replace(out_path)
    return out_path
