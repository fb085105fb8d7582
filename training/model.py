"""BERT for sequence classification, written from scratch.

Module and parameter names mirror Hugging Face's `modeling_bert.py` exactly
(`bert.encoder.layer.0.attention.self.query.weight`, `...LayerNorm.weight`, `classifier.weight`), so a
state dict moves between this model and `transformers.BertForSequenceClassification` with no renaming.

Shapes in comments: B batch, T tokens, C hidden size, nh heads, hs head size (C = nh * hs).
Longer than 400 lines on purpose: one readable file for the whole model and its checkpoint I/O, as
nanoGPT's model.py is; it is also what the served PyTorch model snapshots (build/repository_files.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from contract.errors import UserError
from contract.files import atomic_dir
from contract.names import TOKENIZER_FILES
from training.config import BertConfig, ConfigError
from training.dropout import Dropout, dropout

# Heads of pre-training checkpoints (masked LM, next sentence) that a classifier has no use for.
PRETRAINING_HEAD_PREFIXES = ("cls.predictions.", "cls.seq_relationship.")


class CheckpointError(UserError, ValueError):
    """A checkpoint whose weights do not fit the config; the message names the keys at fault."""


@dataclasses.dataclass
class ClassifierOutput:
    logits: torch.Tensor            # (B, num_labels)
    loss: torch.Tensor | None = None


def _activation(name: str):
    if name == "gelu":
        return F.gelu  # exact (erf) GELU, as in the original BERT
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class Packing:
    """Where the real tokens of a padded (B, T) batch sit, so that dense layers run on them alone.

    A batch padded to its longest text spends most of its matmul work on padding when texts differ
    in length (tweets: 32 real tokens on average, batches padded to 60-128). Packed, the dense
    layers (every matmul except attention scores) see a (1, N, C) tensor of the N real tokens; only
    attention goes back to the padded (B, T) layout, which costs a gather per tensor. This is what
    NVIDIA's BERT engines call variable-length (packed) sequences. Every op here (NonZero, CumSum,
    Gather, Pad) exports to ONNX with dynamic shapes. The packed tensor keeps a batch axis of 1,
    (1, N, C): a Linear on a 2-D input exports as Gemm, which ONNX Runtime does not fuse with the
    int8 graph's Q/DQ nodes (it ran float Gemms on dequantized weights), while on 3-D it exports as
    MatMul + Add, which becomes an integer MatMul. Position 0 of every row is always kept: it is
    the pooler's input, so a row padded on the left gives what the padded model gives.
    """

    def __init__(self, attention_mask: torch.Tensor):
        B, T = attention_mask.shape
        keep = attention_mask != 0
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1)
        flat = keep.reshape(-1)
        self.index = flat.nonzero().squeeze(1)                   # (N,): kept positions in B*T
        # (B*T,): 1 + row of each kept position in the packed tensor, 0 for padding (a zero row)
        self.inverse = flat.long().cumsum(0) * flat.long()
        self.first = self.inverse.view(B, T)[:, 0] - 1           # (B,): each row's position 0
        self.shape = (B, T)

    def pack(self, x: torch.Tensor) -> torch.Tensor:           # (B, T, C) -> (1, N, C)
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index).unsqueeze(0)

    def unpack(self, h: torch.Tensor) -> torch.Tensor:         # (1, N, C) -> (B, T, C), zeros at padding
        B, T = self.shape
        return F.pad(h[0], (0, 0, 1, 0)).index_select(0, self.inverse).view(B, T, h.shape[-1])

    def first_tokens(self, h: torch.Tensor) -> torch.Tensor:   # (1, N, C) -> (B, 1, C): each row's [CLS]
        return h[0].index_select(0, self.first).unsqueeze(1)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        # a buffer, not torch.arange(T, device=...) in forward: a traced graph (TorchScript, ONNX)
        # would bake the tracing device into arange, and a CPU-traced model would fail on a GPU
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings), persistent=False)

    def forward(self, input_ids, token_type_ids, packing: Packing | None = None):
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(self.position_ids[:T])  # (T, C) broadcasts over B
        if packing is not None:
            x = packing.pack(x)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, attn_mask, packing: Packing | None = None):
        # packed: x is (1, N, C) real tokens; the projections run on them, attention on (B, T)
        to_bt = packing.unpack if packing is not None else (lambda t: t)
        B, T, C = attn_mask.shape[0], attn_mask.shape[-1], x.shape[-1]
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (to_bt(proj(x)).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        # attn_mask (B, 1, 1, T): added to the scores, 0 for real keys and MASK_BIAS for padding
        if self.training and self.dropout_p > 0 and x.device.type == "cpu":
            # SDPA has no fused kernel with dropout on CPU and falls back to these same steps, with
            # torch's slow mask (training/dropout.py); spelled out, the mask is the cheap one
            att = (q @ k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))
            att = att.add_(attn_mask).softmax(dim=-1)
            y = dropout(att, self.dropout_p) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return packing.pack(y) if packing is not None else y


class BertSelfOutput(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm, from `in_features` (default: the hidden size)."""

    def __init__(self, config: BertConfig, in_features: int | None = None):
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h, residual):
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x, attn_mask, packing=None):
        return self.output(self.self(x, attn_mask, packing), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x):
        return self.act(self.dense(x))


class BertOutput(BertSelfOutput):
    """The feed-forward block's output: the same as BertSelfOutput, from the intermediate size."""

    def __init__(self, config: BertConfig):
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x, attn_mask, packing=None):
        x = self.attention(x, attn_mask, packing)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, attn_mask, packing=None):
        for layer in self.layer:
            x = layer(x, attn_mask, packing)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))  # the [CLS] token's state


# Added to the attention scores of padding keys. Finite, so that a row with no real key cannot turn
# into NaN, and small enough for fp16; exp(-10000) is exactly 0 in every float type. An additive
# mask (rather than a boolean one) also exports to ONNX as one Add: torch's boolean-mask export adds
# an IsNaN/Where guard per layer, which cost ONNX Runtime ~4% of the int8 model's time on tweets.
MASK_BIAS = -10000.0


def mask_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 attention mask -> (B, 1, 1, T) additive bias: 0 for real tokens, MASK_BIAS for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_BIAS


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        # run the dense layers on real tokens only (see Packing); same outputs, less work on padded
        # batches. A run-time choice, not a weight: inference exports (ONNX for ONNX Runtime) set it.
        self.packed = False

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if not self.packed:
            x = self.embeddings(input_ids, token_type_ids)
            x = self.encoder(x, mask_bias(attention_mask, x.dtype))
            return x, self.pooler(x)  # (B, T, C), (B, C)
        packing = Packing(attention_mask)
        h = self.embeddings(input_ids, token_type_ids, packing)
        h = self.encoder(h, mask_bias(attention_mask, h.dtype), packing)
        pooled = self.pooler(packing.first_tokens(h))
        return packing.unpack(h), pooled  # (B, T, C) with zeros at padding, (B, C)


class BertForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        k = config.num_tabular_features
        self.classifier = nn.Linear(config.hidden_size + k, config.num_labels)
        if k:  # standardisation statistics: config, not weights, so they travel in config.json
            mean = torch.tensor(config.tabular_mean or [0.0] * k)
            std = torch.tensor(config.tabular_std or [1.0] * k).clamp_min(1e-6)
            self.register_buffer("tabular_mean", mean, persistent=False)
            self.register_buffer("tabular_std", std, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, features=None, labels=None):
        _, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        pooled = self.dropout(pooled)
        if self.config.num_tabular_features:
            if features is None:
                raise ValueError(f"this model needs `features` ({self.config.num_tabular_features} numbers per text)")
            z = (features.to(pooled.dtype) - self.tabular_mean.to(pooled.dtype)) / self.tabular_std.to(pooled.dtype)
            pooled = torch.cat([pooled, z], dim=-1)  # (B, C + k)
        logits = self.classifier(pooled)
        loss = None if labels is None else self.loss(logits, labels)
        return ClassifierOutput(logits=logits, loss=loss)

    def loss(self, logits, labels):
        if self.config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- checkpoints --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, labels: list[str] | None = None,
                        problem_type: str | None = None, num_labels: int | None = None,
                        **config_overrides) -> "BertForSequenceClassification":
        """Load a Hugging Face BERT checkpoint folder (or, when online, a Hub model name).

        `labels`/`num_labels` set a (new) classification head; heads the checkpoint lacks are freshly
        initialised and listed in one warning. Unexpected or mis-shaped keys are an error.
        """
        folder = resolve_checkpoint(path)
        config = BertConfig.from_json_file(folder / "config.json")
        if num_labels is not None and labels is None:
            labels = [f"LABEL_{i}" for i in range(num_labels)]
        if labels is not None or problem_type is not None:
            config = config.with_labels(labels or config.labels, problem_type)
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        model = cls(config)
        model.load_hf_state_dict(read_state_dict(folder), source=str(folder))
        model.source_folder = folder  # where save_pretrained finds the tokenizer files
        return model

    def load_hf_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> list[str]:
        """Load weights named as in any Hugging Face BERT checkpoint; returns the freshly initialised keys."""
        own = self.state_dict()
        state = normalize_keys(state)
        unexpected = sorted(k for k in state if k not in own)
        if unexpected:
            raise CheckpointError(f"{source}: unexpected keys (not part of this BERT): {unexpected[:10]}"
                                  + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""))
        misshaped = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                     for k, v in state.items() if v.shape != own[k].shape]
        if misshaped:
            raise CheckpointError(f"{source}: weights do not match the config: " + "; ".join(misshaped[:10]))
        missing = sorted(k for k in own if k not in state)
        not_heads = [k for k in missing if not k.startswith(("classifier.", "bert.pooler."))]
        if not_heads:
            raise CheckpointError(f"{source}: missing weights {not_heads[:10]} (is this a BERT checkpoint?)")
        self.load_state_dict(state, strict=False)
        if missing:
            warnings.warn(f"{source}: freshly initialised (not in the checkpoint): {', '.join(missing)}",
                          stacklevel=3)
        return missing

    def save_pretrained(self, out_dir: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None) -> Path:
        """Write config.json, model.safetensors, labels.txt and the tokenizer files, atomically.

        The tokenizer files come from `tokenizer_from`, else from the folder the model was loaded
        from. A model loaded from a folder without them is saved without them, with a warning (as
        transformers saves a model alone); an explicit `tokenizer_from` without them is an error.
        """
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        tok_src = Path(tokenizer_from) if tokenizer_from else getattr(self, "source_folder", None)
        if tok_src is not None and not tokenizer_from and not has_tokenizer(tok_src):
            warnings.warn(f"{out_dir}: saved without tokenizer files ({tok_src} has no tokenizer.json or "
                          "vocab.txt); pass tokenizer_from= or copy them in before training or serving it",
                          stacklevel=2)
            tok_src = None
        with atomic_dir(out_dir) as tmp:
            self.config.to_json_file(tmp / "config.json")
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            if tok_src is not None:
                copy_tokenizer_files(tok_src, tmp, max_length=self.config.max_position_embeddings)
            (tmp / "labels.txt").write_text("\n".join(self.config.labels) + "\n")
        return out_dir


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ConfigError(f"{folder}: expected a checkpoint folder (config.json + model.safetensors), got a file")
    name = str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or name.count("/") > 1 or name.startswith((".", "/")):
        raise ConfigError(f"{name}: no such checkpoint folder")
    try:  # a Hub model name such as "bert-base-uncased", when this machine is online
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
    except Exception as e:  # offline, unknown name, ...
        raise ConfigError(f"{name}: not a local folder, and the Hugging Face Hub could not provide it ({e})") from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file
        return load_file(st)
    pt = folder / "pytorch_model.bin"
    if pt.exists():  # weights_only: a pickle may not run code on load
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the key spellings of Hugging Face BERT checkpoints onto ours.

    BertModel checkpoints have no `bert.` prefix; old ones say LayerNorm.gamma/beta; pre-training
    checkpoints carry MLM/NSP heads; some store the position_ids buffer.
    """
    out = {}
    for k, v in state.items():
        if k.startswith(PRETRAINING_HEAD_PREFIXES) or k.endswith(("position_ids", "token_type_ids")):
            continue
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if not k.startswith(("bert.", "classifier.")):
            k = "bert." + k
        out[k] = v
    return out


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / n).exists() for n in ("tokenizer.json", "vocab.txt"))


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike, max_length: int = 512) -> None:
    src, dst = Path(src), Path(dst)
    found = [n for n in TOKENIZER_FILES if (src / n).exists()]
    if not has_tokenizer(src):
        raise CheckpointError(f"{src}: no tokenizer.json or vocab.txt to copy")
    for name in found:
        shutil.copy2(src / name, dst / name)
    # a sane model_max_length so tokenizers never produce more positions than the model has
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if not isinstance(cfg.get("model_max_length"), int) or cfg["model_max_length"] > max_length:
        cfg["model_max_length"] = max_length
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
