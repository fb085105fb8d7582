"""A tiny trained BERT run folder for the build tests: checkpoint/, split.json, data.csv.

The tokenizer is a real WordPiece tokenizer made with `tokenizers`; the model (2 layers, hidden 32)
is trained for a few dozen steps on texts whose label is whether they praise or complain, so its
predictions are confident and precision variants can be judged on accuracy, not coin flips.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

GOOD = "love great happy good wonderful".split()
BAD = "hate awful sad bad worst".split()
FILLER = "the flight was my day is so not i this again airline morning sun out".split()


def make_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars + ".,!?'") + [f"##{c}" for c in chars]
    vocab += GOOD + BAD + FILLER
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def texts_and_labels(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = rng.choices(FILLER, k=rng.randint(2, 12)) + [rng.choice(GOOD if positive else BAD)]
        rng.shuffle(words)
        texts.append(" ".join(words) + rng.choice(["", "!", " ."]))
        labels.append("positive" if positive else "negative")
    return texts, labels


def make_run(run: Path, n_texts: int = 240, train_steps: int = 60, seed: int = 0) -> Path:
    """run/checkpoint (trained tiny BERT), run/data.csv, run/split.json (training.data's format)."""
    from training.config import BertConfig
    from training.data import load_csv, make_split, save_split
    from training.model import BertForSequenceClassification

    run = Path(run)
    tok_dir = make_tokenizer(run / ".tokenizer")
    texts, labels = texts_and_labels(n_texts, seed)
    with open(run / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    ds = load_csv(run / "data.csv")
    split = make_split(ds, seed=seed)
    save_split(run / "split.json", ds, split, seed=seed)

    vocab = (tok_dir / "vocab.txt").read_text().split()
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, id2label=dict(enumerate(ds.label_names)))
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.enable_padding()
    enc = tok.encode_batch([ds.texts[i] for i in split["train"]])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    y = torch.as_tensor(ds.labels[split["train"]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(train_steps):
        idx = torch.randint(0, len(ids), (32,))
        loss = model(ids[idx], mask[idx], torch.zeros_like(ids[idx]), labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(run / "checkpoint", tokenizer_from=tok_dir)
    return run
