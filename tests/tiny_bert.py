"""A tiny random-weight BERT classifier checkpoint (HF layout) for tests that need a real one fast.

    ckpt = make_checkpoint(tmp / "checkpoint")          # config.json, model.safetensors, tokenizer files
    onnx = export_fp32(ckpt, tmp / "onnx")               # model_fp32.onnx beside it (optional)
    ckpt, build = make_tiny_build(tmp)                   # checkpoint (2048 vocab) + fp32 and int8 ONNX

The tokenizer is a real WordPiece tokenizer built with the `tokenizers` library (lower-casing,
[CLS] ... [SEP], ## continuations); the model is 2 layers of hidden size 32, so a Triton
repository built from it loads in seconds and answers in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import torch

SERVED_LABELS = ("negative", "positive")           # make_tiny_checkpoint's default labels
SERVED_ENSEMBLES = ("bert_pytorch_fp32", "bert_onnx_fp32", "bert_onnx_int8",       # its cpu repository
                    "bert_onnx_int8dyn")                                          # (int8dyn=True)
WORDS = ("i love this great happy day the flight was bad worst ever awful good morning sun is out my "
         "got cancelled again airline what a wonderful not so").split()


def make_tokenizer(folder: Path, size: int = 512, shuffle_seed: int | None = None) -> Path:
    """shuffle_seed: the whole words sit at other ids (another vocabulary for the same texts)."""
    import random

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = list(WORDS)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(words)
        words = [f"[unused-{i}]" for i in range(size // 4)] + words
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars + ".,!?'") + \
        [f"##{c}" for c in chars] + words
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def make_checkpoint(folder: Path, labels=("negative", "positive"), seed: int = 0, layers: int = 2,
                    max_positions: int = 64, vocab_size: int = 512, vocab_seed: int | None = None) -> Path:
    """vocab_size / vocab_seed: another vocabulary (make_tokenizer's size and shuffle_seed)."""
    from training.config import BertConfig
    from training.model import BertForSequenceClassification

    folder = Path(folder)
    tok_dir = make_tokenizer(folder.parent / f".{folder.name}-tokenizer", vocab_size, vocab_seed)
    vocab_size = len((tok_dir / "vocab.txt").read_text().split())
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_positions, initializer_range=0.2,
                        id2label=dict(enumerate(labels)), problem_type="single_label_classification")
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(folder, tokenizer_from=tok_dir)
    return folder


def export_fp32(checkpoint: Path, out_dir: Path) -> Path:
    from build.export_onnx import export_onnx
    from training.model import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
    export_onnx(model, Path(out_dir) / "model_fp32.onnx")
    return Path(out_dir)


def make_tiny_checkpoint(folder: Path, labels=("negative", "positive"), multi_label=False,
                         max_positions=64, seed=0, num_features=0, thresholds=None) -> Path:
    from training.config import BertConfig
    from training.model import BertForSequenceClassification

    # 2048 entries: build/export_onnx.py traces with token ids 1000..1999
    tok_dir = make_tokenizer(folder.parent / f"{folder.name}-tokenizer", size=2048)
    vocab_size = len((tok_dir / "vocab.txt").read_text().split())
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=max_positions,
                        initializer_range=0.2, id2label=dict(enumerate(labels)),
                        problem_type="multi_label_classification" if multi_label else
                        "single_label_classification", num_tabular_features=num_features,
                        tabular_mean=[10.0] * num_features if num_features else None,
                        tabular_std=[5.0] * num_features if num_features else None)
    if thresholds is not None:
        config.extra["label_thresholds"] = list(thresholds)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    # centre the classifier on a few sentences, so that predictions differ from text to text
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.enable_padding()
    enc = tok.encode_batch([" ".join(WORDS[i:i + 6]) for i in range(0, len(WORDS), 3)])
    ids, mask = torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])
    features = torch.full((len(ids), num_features), 10.0) if num_features else None
    with torch.no_grad():
        logits = model(ids, mask, torch.zeros_like(ids), features=features).logits
        model.classifier.bias -= logits.median(dim=0).values
    model.save_pretrained(folder, tokenizer_from=tok_dir)
    return folder


def make_tiny_build(tmp: Path, int8=True, int8dyn=False, **checkpoint_options) -> tuple[Path, Path]:
    """A tiny checkpoint and an ONNX folder with model_fp32.onnx (+ a real int8 model standing in for
    the QAT graph; + int8dyn: model_int8dyn.onnx, quantized by the build's own
    build/quantize_dynamic.py, here from the packed fp32 export to save a second export)."""
    ckpt = make_tiny_checkpoint(tmp / "checkpoint", **checkpoint_options)
    onnx_dir = export_fp32(ckpt, tmp / "build" / "onnx")
    if int8:  # dynamic int8 quantization: a real int8 graph, small and quick to make
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(str(onnx_dir / "model_fp32.onnx"), str(onnx_dir / "model_int8.onnx"),
                         weight_type=QuantType.QInt8)
    if int8dyn:
        from build.quantize_dynamic import quantize_dynamic_graph
        quantize_dynamic_graph(onnx_dir / "model_fp32.onnx", onnx_dir / "model_int8dyn.onnx")
    return ckpt, tmp / "build"
