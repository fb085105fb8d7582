"""The benchmark's measuring loops: rounds that interleave the backends, and the concurrency sweep.

Samples/s are medians over rounds and ratios between backends medians of the per-round ratios:
the rounds interleave the backends, and a shared machine's speed drifts between rounds, so a
ratio within a round is the fair comparison.
"""
from __future__ import annotations

import statistics
import threading
import time

import numpy as np

from clients.client import ClientError


def percentiles_ms(latencies) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99))}


def accuracy(pred_labels, truth, label_names, multi_label) -> float | None:
    """Share of texts whose label is right; multi-label: of per-label decisions that are right (the
    usual multi-label accuracy), read from the label names the post-process joined with "," - the
    served thresholds decided them."""
    if truth is None:
        return None
    if multi_label:
        def hot(names):
            return [n in names for n in label_names]
        pred = np.array([hot(set(p.split(","))) for p in pred_labels], dtype=bool)
        return float((pred == np.array([hot(set(t)) for t in truth], dtype=bool)).mean())
    return float(np.mean([p == t for p, t in zip(pred_labels, truth)]))


def run_rounds(backends: dict, batches_per_round: list[list[list[int]]], texts, log,
               rate=None) -> tuple[dict, list]:
    """Every round runs every backend on that round's batches, back to back; returns per backend
    the per-round samples/s, every request's latency and every text's predicted label, and the
    `rate()` measured before each round (this CPU's GEMM rate: the machine's speed drifts over
    minutes, so each round is read against its own)."""
    out = {name: {"sps": [], "latency": [], "labels": [None] * len(texts)} for name in backends}
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
                _, _, labels = infer([texts[i] for i in batch])
                rec["latency"].append(time.perf_counter() - t)
                for i, lb in zip(batch, labels):
                    rec["labels"][i] = lb
            rec["sps"].append(n / (time.perf_counter() - start))
            log(f"  round {r + 1}/{len(batches_per_round)}  {name:<22} {rec['sps'][-1]:8.1f} samples/s")
    return out, rates


def median_ratio(per_round: list, ref_per_round: list) -> float:
    """Median over rounds of a figure over its reference in the same round (see the module's docstring)."""
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
