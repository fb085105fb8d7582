"""In-process PyTorch inference benchmark: fp32 vs fp16 (CUDA), our BERT vs transformers'.

    python -m training.infer_bench --checkpoint artifacts/demo/checkpoint --device cuda
    python -m training.infer_bench --random-config bert-base --device cuda     # shapes only, no data

The reference study's first two rows (PyTorch FP32 / FP16 at batch 32) without Triton in between:
samples/s on real held-out texts (the run's saved test split, each batch padded as the served
tokenizer pads it), max |Δlogit| and label agreement of fp16 against fp32, and accuracy. Runs alternate between
variants in every round and the median round counts, so noise hits all variants alike.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from contract.files import atomic_write_json
from contract.names import DEFAULT_MAX_LENGTH
from training.config import BertConfig
from training.model import BertForSequenceClassification

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_batches(checkpoint: Path, batch_size: int, limit: int, max_length: int):
    """Test-split texts of the run that made `checkpoint`, tokenized into padded batches."""
    from training.data import load_split, load_tokenizer, tokenize

    _, parts = load_split(checkpoint.parent / "split.json")
    test = parts["test"].subset(range(min(limit, len(parts["test"]))))
    tok = load_tokenizer(checkpoint)
    batches = [tokenize(tok, test.texts[i:i + batch_size], max_length) for i in range(0, len(test), batch_size)]
    return batches, test.labels


def random_batches(batch_size: int, n_batches: int, seq: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1000, vocab, (batch_size, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)})
    return out, None


def build_variants(args, device):
    if args.checkpoint:
        ours = BertForSequenceClassification.from_pretrained(args.checkpoint)
    else:
        torch.manual_seed(0)
        ours = BertForSequenceClassification(BertConfig(**BERT_BASE))
    variants = {"ours fp32": ours.eval().to(device)}
    if device.type == "cuda":
        half = BertForSequenceClassification(ours.config)
        half.load_state_dict(ours.state_dict())
        variants["ours fp16"] = half.eval().half().to(device)
    if args.transformers:
        import transformers

        cfg = transformers.BertConfig(**{k: v for k, v in ours.config.to_dict().items()
                                         if k not in ("architectures",)}, attn_implementation="sdpa")
        hf = transformers.BertForSequenceClassification(cfg)
        hf.load_state_dict(ours.state_dict(), strict=False)
        variants["transformers fp32"] = hf.eval().to(device)
        if device.type == "cuda":
            hf16 = transformers.BertForSequenceClassification(cfg)
            hf16.load_state_dict(ours.state_dict(), strict=False)
            variants["transformers fp16"] = hf16.eval().half().to(device)
    return variants


def run(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.checkpoint:
        batches, labels = real_batches(Path(args.checkpoint), args.batch_size, args.limit, args.max_length)
    else:
        batches, labels = random_batches(args.batch_size, max(1, args.limit // args.batch_size), args.seq, 30522)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    n = sum(b["input_ids"].shape[0] for b in batches)
    variants = build_variants(args, device)

    def forward(model, b):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        return out.logits

    logits, times = {}, {name: [] for name in variants}
    with torch.inference_mode():
        for name, model in variants.items():  # warm-up, and the logits compared below
            logits[name] = torch.cat([forward(model, b).float().cpu() for b in batches])
        for _ in range(args.rounds):
            for name, model in variants.items():
                _sync(device)
                t0 = time.perf_counter()
                for b in batches:
                    forward(model, b)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    ref = logits["ours fp32"]
    rows = []
    for name in variants:
        row = {"variant": name, "samples_per_s": n / statistics.median(times[name]),
               "max_abs_dlogit_vs_ours_fp32": float((logits[name] - ref).abs().max()),
               "label_agreement": float((logits[name].argmax(-1) == ref.argmax(-1)).float().mean())}
        if labels is not None and labels.ndim == 1:
            row["accuracy"] = float((logits[name].argmax(-1).numpy() == labels).mean())
        rows.append(row)
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"device": name, "batch_size": args.batch_size, "texts": n, "rounds": args.rounds, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.infer_bench", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a fine-tuned run's checkpoint/ (its ../split.json gives the test texts)")
    src.add_argument("--random-config", choices=["bert-base"], help="random BERT-base weights on random tokens")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1024, help="texts per round")
    ap.add_argument("--seq", type=int, default=DEFAULT_MAX_LENGTH, help="--random-config: tokens per text")
    ap.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-transformers", dest="transformers", action="store_false")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    result = run(args)
    print(f"device {result['device']}, batch {result['batch_size']}, {result['texts']} texts, "
          f"median of {result['rounds']} rounds")
    print(f"{'variant':<20} {'samples/s':>10} {'speedup':>8} {'max|dlogit|':>12} {'agree':>7} {'accuracy':>9}")
    for r in result["rows"]:
        acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "-"
        print(f"{r['variant']:<20} {r['samples_per_s']:>10.1f} {r['speedup']:>7.2f}x "
              f"{r['max_abs_dlogit_vs_ours_fp32']:>12.2e} {100 * r['label_agreement']:>6.2f}% {acc:>9}")
    if args.json:
        atomic_write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
