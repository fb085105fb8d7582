"""Per-backend benchmark of the served ensembles: the reference study's comparison table, measured here.

    python -m clients benchmark [--run artifacts/demo] [--url 127.0.0.1:8001 --protocol grpc]
                                [--models bert_onnx_fp32,...] [--batch-size 32] [--rounds 5] [--limit N]
                                [--sweep | --no-sweep] [--out reports]

For every `bert_*` ensemble on the server (from the repository index), on real held-out texts (the
test split the training run saved):
  - samples/s at batch 32: one request carrying 32 texts, requests sent back to back;
  - latency p50/p95/p99 of those requests;
  - accuracy on the texts, recovery vs bert_pytorch_fp32's accuracy, speedup vs its samples/s;
  - FLOP utilisation: samples/s x FLOPs/sample / this CPU's matmul rate, with FLOPs counted on real
    (unpadded) tokens only: 2 x (non-embedding encoder dense parameters) x tokens, from
    training.model.flops_per_token; the matmul rate is a torch 2048x2048 fp32 matmul (median of
    several) measured before each round, and each round's samples/s is read against its own rate;
  - an in-process baseline: the same tokenizer (padding each batch to its longest text) and ONNX
    Runtime on the same ONNX file, run in the same length-sorted chunks as the served model
    (batching.run_sorted_chunks, the config's sort_chunk_rows), without Triton: what serving costs;
  - a concurrency sweep: single-text requests at concurrency 1..16 against one ensemble, showing
    what the dynamic batcher does (its samples/s against the batch-32 figure).
The texts are split into rounds; each round runs every backend on the same texts, one after the
other, so machine noise hits all of them alike; samples/s are medians over rounds, ratios between
backends (speedup, ensemble vs in-process) medians of the per-round ratios, and every text is
classified once per backend (accuracy covers all of them).
Writes reports/benchmark.md, reports/benchmark.json and reports/benchmark.png (atomically).
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from build.triton_models.batching import plan_threads, run_sorted_chunks   # what a served model runs, reused here
from clients.classify import PROTOCOLS, Classifier, ClientError
from clients.texts import add_text_arguments, texts_from_args
from contract.machine import cpu_info

REFERENCE = "bert_pytorch_fp32"
FRAMEWORKS = {"pytorch": "PyTorch", "onnx": "ONNX Runtime", "trt": "TensorRT"}
ORDER = ["bert_pytorch_fp32", "bert_pytorch_fp16", "bert_onnx_fp32", "bert_onnx_fp16", "bert_onnx_int8",
         "bert_trt_fp16", "bert_trt_int8"]
IN_PROCESS = "in-process onnx fp32"
CHUNK_PARAMETER = "sort_chunk_rows"   # config parameter of a served model that runs length-sorted chunks
TARGETS = {"flop_utilisation": 0.60, "ensemble_vs_in_process": 0.90, "concurrency_vs_batch": 0.90,
           "int8_recovery": 0.995}


# ------------------------------------------------------------------------------------------------
# what runs where

def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return [n.strip() for n in out.stdout.splitlines() if n.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        return []


def matmul_gflops(n: int = 2048, reps: int = 10) -> dict:
    """This CPU's fp32 matmul rate: torch n x n @ n x n, median of `reps` timed runs after warm-up."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b                                  # warm-up: thread pool, caches
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return {"gflops": 2 * n ** 3 / statistics.median(times) / 1e9, "n": n, "reps": reps,
            "threads": torch.get_num_threads(), "best_gflops": 2 * n ** 3 / min(times) / 1e9}


def describe(name: str) -> tuple[str, str]:
    """bert_onnx_int8 -> ("ONNX Runtime", "INT8")."""
    m = re.fullmatch(r"bert_([a-z0-9]+)_([a-z0-9]+)", name)
    if not m:
        return name, "?"
    return FRAMEWORKS.get(m.group(1), m.group(1)), m.group(2).upper()


def discover_ensembles(clf: Classifier) -> list[str]:
    """READY `bert_*` ensembles in the repository index, reference first."""
    names = [n for n in clf.list_models() if n.startswith("bert_") and not n.endswith("_model")]
    ensembles = [n for n in names if clf.model_config(n).get("platform") == "ensemble"]
    if not ensembles:
        raise ClientError(f"no READY bert_* ensemble on {clf.url} (models: {', '.join(clf.list_models()) or 'none'})")
    return sorted(ensembles, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def runs_on(clf: Classifier, ensemble: str) -> str:
    """KIND_GPU / KIND_CPU of the ensemble's composing model(s) other than the tokenizer."""
    cfg = clf.model_config(ensemble)
    kinds = set()
    for step in cfg.get("ensemble_scheduling", {}).get("step", []):
        if step["model_name"] == "tokenizer":
            continue
        for group in clf.model_config(step["model_name"]).get("instance_group", []):
            kinds.add(group.get("kind", "KIND_CPU"))
    return "GPU" if "KIND_GPU" in kinds else "CPU"


# ------------------------------------------------------------------------------------------------
# the in-process baseline: same tokenizer, same ONNX file, no Triton

class InProcessOnnx:
    def __init__(self, onnx_path: Path, tokenizer_json: Path, max_length: int, label_names: list[str],
                 multi_label: bool = False, threads: int = 0, chunk_rows: int = 0):
        from build.triton_models.onnx_session import open_session
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.enable_truncation(max_length)
        pad_id = self.tok.token_to_id("[PAD]") or 0
        self.tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")     # pad to the batch's longest text
        # the served Python model's session and threads (build/triton_models/onnxruntime_model.py)
        self.chunk_rows = chunk_rows      # > 0: run length-sorted chunks, each padded to its own longest
        self.workers, intra_op = plan_threads(threads or os.cpu_count() or 1, chunk_rows)
        self.session = open_session(onnx_path, intra_op)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.names, self.multi_label = label_names, multi_label
        self.onnx_path, self.max_length = onnx_path, max_length

    def infer(self, texts):
        enc = self.tok.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        feed = {k: v for k, v in feed.items() if k in self.inputs}
        logits = run_sorted_chunks(lambda b: self.session.run(["logits"], b)[0], feed, self.chunk_rows,
                                   self.workers)
        if self.multi_label:
            probs = 1 / (1 + np.exp(-logits))
            labels = [",".join(n for n, p in zip(self.names, row) if p >= 0.5) for row in probs]
        else:
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
            labels = [self.names[i] for i in probs.argmax(1)]
        return logits, probs, labels

    def real_tokens(self, texts) -> list[int]:
        """Tokens per text after truncation, [CLS]/[SEP] included, no padding."""
        return [sum(e.attention_mask) for e in self.tok.encode_batch(texts)]


def _latest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _parameters(model_dir: Path) -> dict:
    """A model's config.pbtxt parameters (string values), parsed as the ModelConfig it is."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return {}
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def find_in_repository(repo: Path, ensemble: str = "bert_onnx_fp32") -> dict:
    """What the served ensemble runs, read from the repository on disk: its ONNX file, the
    tokenizer's tokenizer.json and max_length, and a checkpoint config.json (for the FLOP count)."""
    repo, found = Path(repo), {"max_length": 128}
    version = _latest_version(repo / f"{ensemble}_model")
    if version is not None:
        params = _parameters(repo / f"{ensemble}_model")
        onnx = version / params.get("model_file", "model.onnx")
        if onnx.is_file():
            found["onnx"], found["threads"] = onnx, int(params.get("threads", "0") or 0)
            # a served model that runs length-sorted chunks says so; the baseline then does the same
            found["chunk_rows"] = int(params.get(CHUNK_PARAMETER, "0") or 0)
    version = _latest_version(repo / "tokenizer")
    if version is not None and (version / "tokenizer.json").is_file():
        found["tokenizer"] = version / "tokenizer.json"
        params = _parameters(repo / "tokenizer")
        found["max_length"] = int(params.get("max_length", "128"))
        found["pad_to_multiple_of"] = int(params.get("pad_to_multiple_of", "1"))
    # the PyTorch model's checkpoint copy, else the checkpoint build.json names
    for model_dir in sorted(repo.glob("*_model")):
        version = _latest_version(model_dir)
        if version is not None and (version / "checkpoint" / "config.json").is_file():
            found["config"] = version / "checkpoint" / "config.json"
            break
    if "config" not in found and (repo / "build.json").is_file():
        ckpt = Path(json.loads((repo / "build.json").read_text()).get("checkpoint", ""))
        if (ckpt / "config.json").is_file():
            found["config"] = ckpt / "config.json"
    return found


# ------------------------------------------------------------------------------------------------
# measuring

def percentiles_ms(latencies) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99))}


def accuracy(pred_labels, pred_probs, truth, label_names, multi_label) -> float | None:
    if truth is None:
        return None
    if multi_label:
        # per-label decisions at 0.5, averaged (the usual multi-label accuracy)
        hot = np.array([[n in t for n in label_names] for t in truth], dtype=bool)
        return float(((np.asarray(pred_probs) >= 0.5) == hot).mean())
    return float(np.mean([p == t for p, t in zip(pred_labels, truth)]))


def run_rounds(backends: dict, batches_per_round: list[list[list[int]]], texts, log,
               rate=None) -> tuple[dict, list]:
    """Every round runs every backend on that round's batches, back to back; returns per backend
    the per-round samples/s, every request's latency, and every text's predicted label/probabilities,
    and the `rate()` measured before each round (this CPU's matmul rate: the machine's speed drifts
    over minutes, so each round is read against its own)."""
    out = {name: {"sps": [], "latency": [], "labels": [None] * len(texts), "probs": [None] * len(texts)}
           for name in backends}
    rates = []
    for r, batches in enumerate(batches_per_round):
        n = sum(len(b) for b in batches)
        if rate is not None:
            rates.append(rate())
        for name, infer in backends.items():
            rec = out[name]
            start = time.perf_counter()
            for batch in batches:
                t = time.perf_counter()
                _, probs, labels = infer([texts[i] for i in batch])
                rec["latency"].append(time.perf_counter() - t)
                for i, lb, pr in zip(batch, labels, probs):
                    rec["labels"][i], rec["probs"][i] = lb, pr
            rec["sps"].append(n / (time.perf_counter() - start))
            log(f"  round {r + 1}/{len(batches_per_round)}  {name:<22} {rec['sps'][-1]:8.1f} samples/s")
    return out, rates


def median_ratio(per_round: list, ref_per_round: list) -> float:
    """Median over rounds of a figure over its reference in the same round. The rounds interleave the
    backends, and this machine's speed drifts between rounds (one run's rounds read 76 to 116
    samples/s for one backend), so a ratio within a round is the fair comparison."""
    return statistics.median(a / b for a, b in zip(per_round, ref_per_round))


def round_ratio(row: dict, ref: dict) -> float:
    """median_ratio of two table rows' per-round samples/s."""
    return median_ratio(row["rounds_samples_per_s"], ref["rounds_samples_per_s"])


def concurrency_sweep(make_client, texts, levels, rounds, log, batch_size: int = 0) -> tuple[list[dict], list]:
    """Single-text requests from `level` threads (one client each), levels interleaved over rounds.

    With batch_size, each round also sends the same texts as batch_size-text requests from one
    client, before and after its levels, and every level is compared with the mean of those two
    (median of the per-round ratios): the sweep takes minutes, over which this machine's speed drifts.
    """
    per_level = {c: {"sps": [], "latency": []} for c in levels}
    batch_sps = []

    def batch_pass():
        clf = make_client()
        clf.infer(texts[:batch_size])
        start = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            clf.infer(texts[i:i + batch_size])
        clf.close()
        return len(texts) / (time.perf_counter() - start)

    for r in range(rounds):
        before = batch_pass() if batch_size else None
        for c in levels:
            clients = [make_client() for _ in range(c)]
            for clf in clients:               # connect and warm each client before the clock starts
                clf.infer([texts[0]])
            lock, next_i, lat, errors = threading.Lock(), [0], [], []
            barrier = threading.Barrier(c + 1)

            def worker(clf):
                barrier.wait()
                while True:
                    with lock:
                        i = next_i[0]
                        next_i[0] += 1
                    if i >= len(texts):
                        return
                    t = time.perf_counter()
                    try:
                        clf.infer([texts[i]])
                    except Exception as e:    # reported below, never dropped
                        errors.append(e)
                        return
                    with lock:
                        lat.append(time.perf_counter() - t)

            threads = [threading.Thread(target=worker, args=(clf,), daemon=True) for clf in clients]
            for t in threads:
                t.start()
            barrier.wait()
            start = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            for clf in clients:
                clf.close()
            if errors:
                raise ClientError(f"concurrency sweep at {c}: {len(errors)} request(s) failed: {errors[0]}")
            per_level[c]["sps"].append(len(texts) / elapsed)
            per_level[c]["latency"] += lat
            log(f"  round {r + 1}/{rounds}  concurrency {c:>2}  {per_level[c]['sps'][-1]:8.1f} samples/s")
        if batch_size:
            batch_sps.append((before + batch_pass()) / 2)
            log(f"  round {r + 1}/{rounds}  batch {batch_size:>2}     {batch_sps[-1]:8.1f} samples/s "
                f"(mean of the passes before and after this round's levels)")
    return [{"concurrency": c, "samples_per_s": statistics.median(v["sps"]), "rounds": v["sps"],
             "vs_batch": median_ratio(v["sps"], batch_sps) if batch_sps else None,
             "requests": len(v["latency"]), **percentiles_ms(v["latency"])} for c, v in per_level.items()], batch_sps


# ------------------------------------------------------------------------------------------------
# writing

def _atomic_write(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fmt(x, spec, suffix=""):
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def render_markdown(doc: dict) -> str:
    m, rows = doc["meta"], doc["rows"]
    hw = m["hardware"]
    cpu = f"{hw['cpu']}, {hw['logical_cores']} cores"
    lines = [
        "# Benchmark: BERT ensembles served by Triton",
        "",
        f"Measured {m['date']} with `{m['command']}`.",
        f"Server {m['url']} ({m['protocol']}); {m['texts']} real held-out texts from {m['text_source']}; "
        f"batch {m['batch_size']} (one request carrying {m['batch_size']} texts, requests back to back); "
        f"{m['rounds']} rounds with the backends interleaved, samples/s = median over rounds; speedup = "
        f"median over rounds of the ratio within a round.",
        f"Hardware: {cpu} ({', '.join(hw['isa']) or 'no AVX2'})" + (f"; GPU: {', '.join(hw['gpus'])}" if hw["gpus"] else "")
        + f". Matmul rate: {_fmt(m['matmul'].get('gflops'), '.1f')} GFLOP/s"
        + (f" (per round: {', '.join(f'{g:.1f}' for g in m['matmul']['rounds_gflops'])})"
           if m["matmul"].get("rounds_gflops") else "") + ". Load average (1 min) before/after: "
        f"{m['load_average'][0]:.2f}/{m['load_average'][1]:.2f}"
        + (" - the machine was busy with other work: expect low, noisy figures." if max(m["load_average"]) >
           hw["logical_cores"] + 2 else "."),
        "",
        "| Framework | Precision | Model | Samples/s | Speedup | p50 ms | p95 ms | p99 ms | Accuracy | Recovery "
        "| FLOP util. | Hardware |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['framework']} | {r['precision']} | {r['model']} | {r['samples_per_s']:.1f} | "
            f"{_fmt(r['speedup'], '.2f', 'x')} | {_fmt(r['p50_ms'], '.1f')} | {_fmt(r['p95_ms'], '.1f')} | "
            f"{_fmt(r['p99_ms'], '.1f')} | {_fmt(None if r['accuracy'] is None else 100 * r['accuracy'], '.2f', '%')} | "
            f"{_fmt(None if r['recovery'] is None else 100 * r['recovery'], '.2f', '%')} | "
            f"{_fmt(None if r['flop_utilisation'] is None else 100 * r['flop_utilisation'], '.1f', '%')} | "
            f"{r['hardware']} |")
    lines += ["", "## Against the targets", ""]
    for key, t in doc["targets"].items():
        value = t["value"]
        shown = "n/a" if value is None else f"{100 * value:.1f}%"
        verdict = "" if value is None else (" (met)" if value >= t["target"] else " (NOT met)")
        lines.append(f"- {t['what']}: **{shown}** (target >= {100 * t['target']:.1f}%){verdict}")
    f = m.get("flops")
    if f:
        lines += ["", "## How the FLOPs were counted", "",
                  f"FLOPs/sample = 2 x L(4C^2 + 2CI) x real tokens = {f['per_token'] / 1e6:.2f} MFLOP/token x "
                  f"{f['mean_tokens']:.1f} tokens = {f['per_sample'] / 1e9:.3f} GFLOP (L={f['layers']}, "
                  f"C={f['hidden']}, I={f['intermediate']}; the encoder's dense layers only, attention scores "
                  f"and embeddings excluded; tokens counted after truncation at {f['max_length']}, [CLS]/[SEP] "
                  "included, padding excluded). The matmul rate is a torch "
                  f"{m['matmul']['n']}x{m['matmul']['n']} fp32 matmul, median of {m['matmul']['reps']} runs on "
                  f"{m['matmul']['threads']} threads, measured just before each round. FLOP utilisation = "
                  "samples/s x FLOPs/sample / matmul rate, per round (each against its own rate: this "
                  "machine's speed drifts over minutes), median over rounds."]
    sweep = doc.get("sweep")
    if sweep:
        lines += ["", f"## Concurrency sweep: single-text requests against {sweep['model']}", "",
                  f"{sweep['texts_per_level']} texts per level per round, {m['rounds']} rounds, one client "
                  "per concurrent thread; the dynamic batcher merges concurrent requests. Each round also "
                  f"sends the same texts in requests of {m['batch_size']}, before and after its levels "
                  f"({_fmt(sweep.get('batch_samples_per_s'), '.1f')} samples/s, median); 'vs batch' is the "
                  "median over rounds of each level against its own round's batch figure (the mean of its "
                  "two passes).", "",
                  f"| Concurrency | Samples/s | p50 ms | p99 ms | vs batch {m['batch_size']} |", "|---:|---:|---:|---:|---:|"]
        for lv in sweep["levels"]:
            lines.append(f"| {lv['concurrency']} | {lv['samples_per_s']:.1f} | {_fmt(lv['p50_ms'], '.1f')} | "
                         f"{_fmt(lv['p99_ms'], '.1f')} | {_fmt(lv.get('vs_batch'), '.2f', 'x')} |")
    if m.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in m["notes"]]
    lines += ["", "![samples/s and accuracy per backend](benchmark.png)", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = doc["rows"]
    names = [r["model"] if r["model"] != "-" else "in-process" for r in rows]
    panels = 3 if doc.get("sweep") else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    colors = ["#4c72b0" if r["model"] != "-" else "#999999" for r in rows]
    ax = axes[0]
    ax.bar(names, [r["samples_per_s"] for r in rows], color=colors)
    ax.set_ylabel("samples/s")
    ax.set_title(f"Throughput, batch {doc['meta']['batch_size']}")
    ax.tick_params(axis="x", rotation=30)
    ax = axes[1]
    acc = [(n, 100 * r["accuracy"]) for n, r in zip(names, rows) if r["accuracy"] is not None]
    if acc:
        ax.bar([a[0] for a in acc], [a[1] for a in acc], color="#55a868")
        low = min(a[1] for a in acc)
        ax.set_ylim(max(0, low - 5), min(100, max(a[1] for a in acc) + 2))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy on held-out texts")
    ax.tick_params(axis="x", rotation=30)
    if panels == 3:
        sw = doc["sweep"]
        ax = axes[2]
        xs = [lv["concurrency"] for lv in sw["levels"]]
        ax.plot(xs, [lv["samples_per_s"] for lv in sw["levels"]], "o-", label="single-text requests")
        if sw.get("batch_samples_per_s"):
            ax.axhline(sw["batch_samples_per_s"], color="gray", ls="--", label=f"batch {doc['meta']['batch_size']}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("samples/s")
        ax.set_title(f"Dynamic batching: {sw['model']}")
        ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------

def benchmark(args, log=print) -> dict:
    load_before = os.getloadavg()[0]       # other work on the machine skews every figure: say so
    held = texts_from_args(args).take(args.limit)
    texts, truth = held.texts, held.labels
    if len(texts) < args.batch_size:
        log(f"note: only {len(texts)} texts, fewer than one batch of {args.batch_size}")
    clf = Classifier(args.url, args.protocol, retries=args.retries, timeout=args.timeout, admin_key=args.admin_key)
    models = args.models.split(",") if args.models else discover_ensembles(clf)
    notes = []
    hw = {**cpu_info(), "gpus": gpu_names()}
    cpu_name = re.sub(r"\(R\)|\(TM\)|CPU ", "", hw["cpu"]).strip()
    cpu_short = f"{cpu_name}, {hw['logical_cores']} cores"

    # one client per ensemble; each reads its own max batch size and label names from the server
    clients = {}
    for m in models:
        c = Classifier(args.url, args.protocol, model=m, retries=args.retries, timeout=args.timeout,
                       admin_key=args.admin_key)
        if c.max_batch_size < args.batch_size:
            raise ClientError(f"{m}: max_batch_size is {c.max_batch_size}, below --batch-size {args.batch_size}")
        clients[m] = c
    backends = {m: clients[m].infer for m in models}

    # the in-process baseline, when the repository on disk has the ONNX file the server uses
    found = find_in_repository(args.repository) if args.in_process else {}
    baseline = None
    if args.in_process:
        if "onnx" in found and "tokenizer" in found:
            names = clients[models[0]].labels
            chunk = found.get("chunk_rows", 0) if args.in_process_chunk is None else args.in_process_chunk
            baseline = InProcessOnnx(found["onnx"], found["tokenizer"], found["max_length"], names, held.multi_label,
                                     found.get("threads", 0), chunk)
            backends[IN_PROCESS] = baseline.infer
        else:
            notes.append(f"in-process baseline skipped: no bert_onnx_fp32_model ONNX file and tokenizer.json "
                         f"under {args.repository}")

    # warm-up (not timed): every backend sees a few full batches first
    for name, infer in backends.items():
        for i in range(0, min(len(texts), 2 * args.batch_size), args.batch_size):
            infer(texts[i:i + args.batch_size])

    # batches of consecutive texts, dealt to the rounds in turn: each text once per backend
    batches = [list(range(i, min(i + args.batch_size, len(texts)))) for i in range(0, len(texts), args.batch_size)]
    rounds = max(1, min(args.rounds, len(batches)))
    per_round = [batches[r::rounds] for r in range(rounds)]
    log(f"benchmark: {len(texts)} texts from {held.source}, batch {args.batch_size}, {rounds} rounds, "
        f"backends: {', '.join(backends)}")
    results, round_rates = run_rounds(backends, per_round, texts, log,
                                      rate=lambda: matmul_gflops(reps=args.matmul_reps))
    load_after = os.getloadavg()[0]
    matmul = dict(round_rates[0], gflops=statistics.median(r["gflops"] for r in round_rates),
                  best_gflops=max(r["best_gflops"] for r in round_rates),
                  rounds_gflops=[r["gflops"] for r in round_rates])

    # FLOPs per sample on real tokens
    flops = None
    cfg_path = Path(args.checkpoint) / "config.json" if args.checkpoint else found.get("config")
    if cfg_path is None and args.run and (Path(args.run) / "checkpoint" / "config.json").is_file():
        cfg_path = Path(args.run) / "checkpoint" / "config.json"
    tokenizer = baseline
    if tokenizer is None and "tokenizer" in found:
        tokenizer = InProcessOnnx.__new__(InProcessOnnx)
        from tokenizers import Tokenizer
        tokenizer.tok = Tokenizer.from_file(str(found["tokenizer"]))
        tokenizer.tok.enable_truncation(found["max_length"])
    if cfg_path is not None and Path(cfg_path).is_file() and tokenizer is not None:
        from training.config import BertConfig
        from training.model import flops_per_token
        config = BertConfig.from_json_file(cfg_path)
        tokens = tokenizer.real_tokens(texts)
        per_token = flops_per_token(config)
        flops = {"per_token": per_token, "mean_tokens": float(np.mean(tokens)),
                 "per_sample": per_token * float(np.mean(tokens)), "layers": config.num_hidden_layers,
                 "hidden": config.hidden_size, "intermediate": config.intermediate_size,
                 "max_length": found.get("max_length", 128), "config": str(cfg_path)}
    else:
        notes.append("FLOP utilisation not computed: no model config.json (--checkpoint) or tokenizer.json found")

    rows = []
    for name in backends:
        res = results[name]
        in_proc = name == IN_PROCESS
        framework, precision = (("ONNX Runtime in-process (no Triton)" + (
            f", length-sorted chunks of {baseline.chunk_rows}" if baseline.chunk_rows else ""), "FP32")
            if in_proc else describe(name))
        where = "CPU" if in_proc else runs_on(clf, name)
        sps = statistics.median(res["sps"])
        rows.append({
            "model": "-" if in_proc else name, "framework": framework, "precision": precision,
            "samples_per_s": sps, "rounds_samples_per_s": res["sps"], "requests": len(res["latency"]),
            **percentiles_ms(res["latency"]),
            "accuracy": accuracy(res["labels"], res["probs"], truth, held.label_names or [], held.multi_label),
            # each round against the matmul rate measured just before it, then the median
            "flop_utilisation": None if flops is None or where != "CPU" else statistics.median(
                x * flops["per_sample"] / (g * 1e9) for x, g in zip(res["sps"], matmul["rounds_gflops"])),
            "hardware": cpu_short if where == "CPU" else ", ".join(hw["gpus"]) or "GPU", "runs_on": where})
    ref = next((r for r in rows if r["model"] == REFERENCE), None)
    if ref is None:
        notes.append(f"{REFERENCE} is not on the server: no speedup/recovery column")
    for r in rows:
        r["speedup"] = round_ratio(r, ref) if ref else None
        r["recovery"] = (r["accuracy"] / ref["accuracy"] if ref and ref["accuracy"] and r["accuracy"] is not None
                         else None)

    # the concurrency sweep against one ensemble
    sweep = None
    if args.sweep:
        target = args.sweep_model or ("bert_onnx_fp32" if "bert_onnx_fp32" in models else
                                      max((r for r in rows if r["model"] != "-"), key=lambda r: r["samples_per_s"])["model"])
        n = min(args.sweep_texts, len(texts))
        levels = [int(x) for x in str(args.sweep_levels).split(",")]
        log(f"concurrency sweep on {target}: {n} single-text requests per level per round, levels {levels}")
        make = lambda: Classifier(args.url, args.protocol, model=target, retries=args.retries, timeout=args.timeout)
        lv, batch_rounds = concurrency_sweep(make, texts[:n], levels, rounds, log, batch_size=args.batch_size)
        sweep = {"model": target, "texts_per_level": n, "levels": lv,
                 "batch_samples_per_s": statistics.median(batch_rounds), "batch_rounds": batch_rounds}

    by_model = {r["model"]: r for r in rows}
    triton_rows = [r for r in rows if r["model"] != "-" and r["flop_utilisation"] is not None]
    best = max(triton_rows, key=lambda r: r["flop_utilisation"]) if triton_rows else None
    onnx = by_model.get("bert_onnx_fp32")
    base = by_model.get("-")
    top = max(sweep["levels"], key=lambda x: x["concurrency"]) if sweep else None
    int8 = [r for r in rows if r["precision"] == "INT8" and r["recovery"] is not None]
    targets = {
        "flop_utilisation": {"what": "FLOP utilisation (real tokens) of the best backend through Triton"
                             + (f" ({best['model']})" if best else ""),
                             "value": best["flop_utilisation"] if best else None},
        "ensemble_vs_in_process": {"what": "bert_onnx_fp32 through Triton vs the same tokenizer + ONNX Runtime "
                                           "in-process (samples/s)",
                                   "value": round_ratio(onnx, base) if onnx and base else None},
        "concurrency_vs_batch": {"what": f"single-text requests at concurrency {top['concurrency'] if top else 16} vs "
                                         f"batch {args.batch_size} ({sweep['model'] if sweep else '-'}, samples/s)",
                                 "value": top["vs_batch"] if top else None},
        "int8_recovery": {"what": "INT8 accuracy recovery vs PyTorch FP32"
                          + (f" ({int8[0]['model']})" if int8 else ""),
                          "value": min(r["recovery"] for r in int8) if int8 else None},
    }
    for k, t in targets.items():
        t["target"] = TARGETS[k]
        t["met"] = None if t["value"] is None else t["value"] >= t["target"]
    if not hw["isa"] or "avx512_vnni" not in hw["isa"] and "avx_vnni" not in hw["isa"]:
        if int8:
            notes.append("this CPU has no VNNI (int8 dot-product) instructions: INT8 gains little or no speed "
                         "here; on a GPU, TensorRT INT8 runs ahead of FP16 (NVIDIA's BERT-base INT8 engines ~1.9x "
                         "FP16 at batch 128 on an A100)")
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": args.command_line,
            "url": clf.url, "protocol": args.protocol, "texts": len(texts), "text_source": held.source,
            "batch_size": args.batch_size, "rounds": rounds, "hardware": hw, "matmul": matmul, "flops": flops,
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "in_process": None if baseline is None else {"onnx": str(baseline.onnx_path),
                                                          "max_length": baseline.max_length,
                                                          "padding": "longest text of each batch" if not
                                                          baseline.chunk_rows else f"length-sorted chunks of "
                                                          f"{baseline.chunk_rows} rows, each to its longest"},
            "notes": notes}
    return {"meta": meta, "rows": rows, "sweep": sweep, "targets": targets}


def write_reports(doc: dict, out: Path) -> list[Path]:
    out = Path(out)
    md, js, png = out / "benchmark.md", out / "benchmark.json", out / "benchmark.png"
    plot(doc, png)
    _atomic_write(js, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n"))
    _atomic_write(md, lambda tmp: tmp.write_text(render_markdown(doc)))
    return [md, js, png]


def add_arguments(p):
    p.add_argument("--url", help="server address (default 127.0.0.1:8001 for grpc, :8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    p.add_argument("--models", help="comma-separated ensembles (default: every READY bert_* ensemble)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per request (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="rounds the texts are dealt into (default 5)")
    p.add_argument("--limit", type=int, help="use at most N texts (a fixed random sample)")
    p.add_argument("--sweep", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="concurrency sweep of single-text requests (default on)")
    p.add_argument("--sweep-model", help="ensemble for the sweep (default bert_onnx_fp32)")
    p.add_argument("--sweep-levels", default="1,2,4,8,16", help="concurrency levels (default 1,2,4,8,16)")
    p.add_argument("--sweep-texts", type=int, default=256, help="single-text requests per level per round")
    p.add_argument("--in-process", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="also time the same tokenizer + ONNX Runtime without Triton (default on)")
    p.add_argument("--in-process-chunk", type=int, metavar="ROWS",
                   help="in-process baseline: run each batch as length-sorted chunks of ROWS texts, each padded to "
                        f"its own longest; 0: the whole batch padded to its longest text (default: as the served "
                        f"bert_onnx_fp32_model does, its `{CHUNK_PARAMETER}` parameter, else 0)")
    p.add_argument("--repository", default="model_repository", help="the served repository on disk (for the "
                   "in-process baseline's ONNX file and tokenizer)")
    p.add_argument("--checkpoint", help="checkpoint folder whose config.json gives the FLOP count "
                   "(default: the repository's copy, else <run>/checkpoint)")
    p.add_argument("--matmul-reps", type=int, default=10, help="timed 2048x2048 matmuls (median)")
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--admin-key", help="key for the repository index (default $TRITON_ADMIN_KEY or .triton/admin_key)")
    p.add_argument("--out", default="reports", help="output folder (default reports/)")
    add_text_arguments(p)


def main(args) -> int:
    import shlex
    import sys
    if args.batch_size < 1 or args.rounds < 1:
        raise ClientError("--batch-size and --rounds must be positive")
    args.command_line = "python -m clients " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc = benchmark(args)
    paths = write_reports(doc, Path(args.out))
    print()
    print(render_markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
