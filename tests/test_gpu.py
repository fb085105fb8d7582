"""The CUDA paths: training with autocast, and fp16 / packed inference against fp32 on the CPU.

Marked `gpu`: skipped (with the reason) where torch sees no CUDA device, which includes CI. The
checkpoints are the self-contained tiny BERT of tests/tiny_bert.py, so nothing needs downloading.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_trainer import toy_rows, write_csv
from tests.tiny_bert import make_checkpoint
from training.__main__ import main as cli
from training.model import BertForSequenceClassification

pytestmark = pytest.mark.gpu

# words of tests/tiny_bert.py's vocabulary, so the tiny tokenizer keeps them whole
CUES = {"negative": "bad awful worst cancelled".split(), "positive": "love great happy wonderful".split()}
FILLER = "the flight was my day is out what a so".split()

def batch(n=16, seed=0):
    """Rows of different lengths, right-padded, so packing and attention masks are exercised."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (n,), generator=g)
    ids = torch.randint(5, 500, (n, int(lengths.max())), generator=g)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("amp,dtype", [("auto", None), ("fp16", "float16")])
def test_cuda_fit_learns_under_autocast(tmp_path, amp, dtype):
    ckpt = make_checkpoint(tmp_path / "tiny")
    out = tmp_path / "run"
    toy = write_csv(tmp_path / "toy.csv", ["text", "label"], toy_rows(160, cues=CUES, filler=FILLER))
    rc = cli(["fit", "--data", str(toy), "--model", str(ckpt), "--device", "cuda",
              "--amp", amp, "--epochs", "4", "--lr", "5e-3", "--batch-size", "8", "--max-length", "32",
              "--no-progress", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["device"].startswith("cuda")
    expected = dtype or ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert m["amp"] == expected
    losses = [e["train_loss"] for e in m["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    assert m["test"]["accuracy"] >= 0.9
    # the saved checkpoint is fp32 and loads on the CPU
    model = BertForSequenceClassification.from_pretrained(out / "checkpoint")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("packed", [False, True])
def test_cuda_inference_matches_cpu_fp32_and_fp16_keeps_the_labels(tmp_path, packed):
    ckpt = make_checkpoint(tmp_path / "tiny", layers=2)
    ids, mask = batch()
    cpu = BertForSequenceClassification.from_pretrained(ckpt).eval()
    gpu = BertForSequenceClassification.from_pretrained(ckpt).eval().cuda()
    half = BertForSequenceClassification.from_pretrained(ckpt).eval().cuda().half()
    for m in (cpu, gpu, half):
        m.bert.packed = packed
    with torch.inference_mode():
        ref = cpu(ids, mask).logits
        on_gpu = gpu(ids.cuda(), mask.cuda()).logits.float().cpu()
        fp16 = half(ids.cuda(), mask.cuda()).logits.float().cpu()
    assert (on_gpu - ref).abs().max() < 1e-4
    assert (fp16 - ref).abs().max() < 2e-2
    assert torch.equal(fp16.argmax(-1), ref.argmax(-1))


def test_cuda_packed_equals_padded(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny", layers=2)
    ids, mask = batch(seed=1)
    model = BertForSequenceClassification.from_pretrained(ckpt).eval().cuda()
    with torch.inference_mode():
        padded = model(ids.cuda(), mask.cuda()).logits
        model.bert.packed = True
        packed = model(ids.cuda(), mask.cuda()).logits
    assert (packed - padded).abs().max() < 1e-4
