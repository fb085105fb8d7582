"""Training-speed benchmark (a command, not a test): `python -m training bench`.

One run, on CPU, same config (the bundled MiniLM-L6 by default), same weights, same batch (16 x 128
token ids, every position a real token), same optimizer (AdamW, foreach):

1. our scratch BERT vs transformers' BertForSequenceClassification (attn_implementation="sdpa"):
   training samples/s;
2. our model: full fine-tuning vs LoRA r8 on query,value (every layer) vs LoRA r8 on the last 4 layers:
   time per step and the ratio to full fine-tuning.

Where `peft` is installed (not in our venv), transformers + peft LoRA runs in the same rounds, for the
ratio the reference study measured. `--random-weights` needs only a config.json (speed does not
depend on the values).

Models run in alternating rounds (the order rotates each round) so a slow spell on a shared machine
hits all of them alike; each figure is the median over every timed step. The load average is printed
because another process on the machine changes the figures.

`--processes 1,2` measures something else: how training scales over processes (training/scaling.py).
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from training import lora as lora_lib
from training.config import BertConfig
from training.model import BertForSequenceClassification, read_state_dict, normalize_keys


def synthetic_batch(config: BertConfig, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Word-piece ids from the ordinary-vocabulary range, [CLS] ... [SEP], no padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2000, config.vocab_size - 1000, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, config.num_labels, (batch_size,), generator=g)}


def _optimizer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5, foreach=True)


class Runner:
    def __init__(self, name: str, model, batch: dict):
        self.name, self.model, self.batch = name, model.train(), batch
        self.opt = _optimizer(model)
        self.times: list[float] = []
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = self.model(**self.batch).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _ours(config: BertConfig, state: dict, lora: lora_lib.LoRAConfig | None = None):
    torch.manual_seed(0)
    m = BertForSequenceClassification(config)
    m.load_hf_state_dict(state, source="bench")
    if lora is not None:
        lora_lib.apply_lora(m, lora)
    return m


def _transformers(config: BertConfig, state: dict):
    import transformers

    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items()
                                           if k not in ("architectures", "label2id")}, attn_implementation="sdpa")
    m = transformers.BertForSequenceClassification(hf_config)
    assert m.config._attn_implementation == "sdpa", m.config._attn_implementation
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return m


def _peft(model, dropout: float, layers=None):
    """transformers + peft LoRA r8 on query,value (peft only where installed: not in our venv)."""
    import peft

    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=["query", "value"],
                          layers_to_transform=list(layers) if layers else None, modules_to_save=["classifier"])
    return peft.get_peft_model(model, cfg)


def main(args) -> None:
    import importlib.util
    import warnings

    from training.fetch import default_base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    base = args.model or default_base_model()
    config = BertConfig.from_json_file(os.path.join(base, "config.json")).with_labels(["negative", "positive"])
    with warnings.catch_warnings():  # the fresh classifier is expected; fix it with a seed instead
        warnings.simplefilter("ignore")
        weights = {} if args.random_weights else normalize_keys(read_state_dict(base))
        if args.random_weights:  # speed does not depend on the values: a config alone is enough
            torch.manual_seed(0)
            weights = {k: v for k, v in BertForSequenceClassification(config).state_dict().items()
                       if not k.startswith("classifier.")}
        ref = _ours(config, weights)
    state = ref.state_dict()  # pretrained (or random) encoder + one seeded head, shared by every model below
    batch = synthetic_batch(config, args.batch_size, args.seq_len)
    n_layers = config.num_hidden_layers
    last4 = tuple(range(max(0, n_layers - 4), n_layers))
    with_hf = not args.skip_transformers
    with_peft = with_hf and importlib.util.find_spec("peft") is not None

    runners = [Runner("scratch full", ref, batch)]
    if with_hf:
        runners.append(Runner("transformers (sdpa) full", _transformers(config, state), batch))
    drop = args.lora_dropout
    runners.append(Runner("scratch LoRA r8 query,value", _ours(config, state, lora_lib.LoRAConfig(r=8, dropout=drop)),
                          batch))
    runners.append(Runner("scratch LoRA r8 last 4 layers",
                          _ours(config, state, lora_lib.LoRAConfig(r=8, dropout=drop, layers=last4)), batch))
    if with_peft:
        runners.append(Runner("transformers+peft LoRA r8 query,value", _peft(_transformers(config, state), drop), batch))
        runners.append(Runner("transformers+peft LoRA r8 last 4", _peft(_transformers(config, state), drop, last4),
                              batch))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), batch {args.batch_size} x {args.seq_len} tokens, "
          f"config {base}{' (random weights)' if args.random_weights else ''}, LoRA dropout {args.lora_dropout:g}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if with_hf:  # the comparison only means something if both compute the same thing
        with torch.no_grad():
            runners[0].model.eval(), runners[1].model.eval()
            a = runners[0].model(**batch).logits
            b = runners[1].model(**batch).logits
            runners[0].model.train(), runners[1].model.train()
        print(f"same weights, same logits: max |difference| {float((a - b).abs().max()):.2e}")
    for r in runners:  # warm-up: first-call allocations, optimizer state creation
        r.step()
    for rnd in range(args.repeats):
        k = rnd % len(runners)
        for r in runners[k:] + runners[:k]:
            r.times += [r.step() for _ in range(args.steps)]
        print(f"round {rnd + 1}/{args.repeats}, median ms/step so far: "
              + ", ".join(f"{r.name} {1e3 * r.median:.0f}" for r in runners), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")

    full = runners[0]
    width = max(len(r.name) for r in runners)
    print(f"{'model':<{width}}  {'trainable':>11}  {'ms/step':>8}  {'samples/s':>9}  {'vs scratch full':>15}")
    for r in runners:
        print(f"{r.name:<{width}}  {r.trainable:>11,}  {1e3 * r.median:>8.0f}  {args.batch_size / r.median:>9.2f}"
              f"  {r.median / full.median:>14.2f}x")
    if with_hf:
        hf = runners[1]
        print(f"\nscratch vs transformers: {full.median / hf.median:.2f}x the time per step "
              f"({hf.median / full.median:.2f}x the samples/s); target: not slower (time ratio <= 1.00)")
    lora_all, lora_last = runners[2 if with_hf else 1], runners[3 if with_hf else 2]
    print(f"LoRA r8 query,value: {lora_all.median / full.median:.2f}x full (target <= 0.72; transformers+peft 0.79)")
    print(f"LoRA r8 last 4 layers: {lora_last.median / full.median:.2f}x full (target <= 0.58; transformers+peft 0.58)")
    if with_peft:
        hf = runners[1]
        print(f"transformers+peft in this run: {runners[-2].median / hf.median:.2f}x and "
              f"{runners[-1].median / hf.median:.2f}x transformers full")
