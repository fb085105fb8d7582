"""Per-backend benchmark of the served ensembles: the reference study's comparison table, measured here.

    python -m clients benchmark [--run artifacts/demo] [--url 127.0.0.1:8001 --protocol grpc]
                                [--models bert_onnx_fp32,...] [--batch-size 32] [--rounds 5] [--limit N]
                                [--sweep | --no-sweep] [--out reports]

For every `bert_*` ensemble on the server (from the repository index), on real held-out texts (the
test split the training run saved):
  - samples/s at batch 32: one request carrying 32 texts, requests sent back to back;
  - latency p50/p95/p99 of those requests;
  - accuracy on the texts, recovery vs bert_pytorch_fp32's accuracy, speedup vs its samples/s;
  - FLOP utilisation: samples/s x FLOPs/sample / this CPU's GEMM rate, with FLOPs counted on real
    (unpadded) tokens only: 2 x (non-embedding encoder dense parameters) x tokens, from the
    checkpoint's config.json (contract.bert_config); fp32 backends against ONNX Runtime's fp32
    MatMul rate, INT8 backends against its INT8 MatMulInteger rate (2048^3 each, clients/machine.py),
    both measured before each round, and each round's samples/s read against its own rates;
  - INT8 by instruction set: the CPU's instruction sets (contract/cpu.py), both INT8 graphs (QDQ
    from QAT, dynamically quantized) side by side against the INT8 rate;
  - an in-process baseline: the served tokenizer, ONNX file, session settings, chunks and
    post-process, run without Triton (clients/baseline.py): what serving costs;
  - the cost of one request: single texts at concurrency 1 through each ensemble, interleaved with
    the same texts in-process, their p50/p99 and difference, and where the server spends it
    (Triton's per-model statistics; clients/request_cost.py);
  - a concurrency sweep: single-text requests at concurrency 1..16 against one ensemble, showing
    what the dynamic batcher does (its samples/s against the batch-32 figure).
The texts are split into rounds; each round runs every backend on the same texts, one after the
other, so machine noise hits all of them alike (clients/rounds.py); every text is classified once
per backend (accuracy covers all of them).
Writes reports/benchmark.md, reports/benchmark.json and reports/benchmark.png (clients/benchmark_report.py).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clients.baseline import BASELINE_ENSEMBLE, InProcessOnnx, find_in_repository
from clients.benchmark_report import render_markdown, write_reports
from clients.client import PROTOCOLS, Classifier, ClientError, discover_ensembles
from clients.machine import GemmRate, cpu_info, gpu_names, has_vnni
from clients.request_cost import Target, backend_cost
from clients.rounds import accuracy, concurrency_sweep, percentiles_ms, round_ratio, run_rounds
from clients.texts import add_text_arguments, texts_from_args
from contract.bert_config import BertConfig
from contract.encoder import TextEncoder
from contract.names import TOKENIZER_MODEL

REFERENCE = "bert_pytorch_fp32"
FRAMEWORKS = {"pytorch": "PyTorch", "onnx": "ONNX Runtime", "trt": "TensorRT"}
IN_PROCESS = "in-process onnx fp32"
# each target: the value that meets it, and whether higher or lower is better
TARGETS = {"flop_utilisation": 0.60, "int8_flop_utilisation": 0.60, "ensemble_vs_in_process": 0.90,
           "concurrency_vs_batch": 0.90, "int8_recovery": 0.995, "request_cost_ms": 2.0}
LOWER_IS_BETTER = ("request_cost_ms",)
# the ensemble name's precision part -> (precision, graph): both INT8 graphs are INT8
GRAPHS = {"int8": ("INT8", "QDQ from QAT"), "int8dyn": ("INT8", "dynamic (MatMulInteger)")}


def describe(name: str) -> tuple[str, str]:
    """bert_onnx_int8 -> ("ONNX Runtime", "INT8"); bert_onnx_int8dyn -> ("ONNX Runtime", "INT8")."""
    m = re.fullmatch(r"bert_([a-z0-9]+)_([a-z0-9]+)", name)
    if not m:
        return name, "?"
    return FRAMEWORKS.get(m.group(1), m.group(1)), GRAPHS.get(m.group(2), (m.group(2).upper(),))[0]


def graph_of(name: str) -> str:
    """bert_onnx_int8dyn -> "dynamic (MatMulInteger)"; "" where there is one graph per precision."""
    return GRAPHS.get(name.rpartition("_")[2], ("", ""))[1]


def runs_on(clf: Classifier, ensemble: str) -> str:
    """KIND_GPU / KIND_CPU of the ensemble's composing model(s) other than the tokenizer."""
    cfg = clf.model_config(ensemble)
    kinds = set()
    for step in cfg.get("ensemble_scheduling", {}).get("step", []):
        if step["model_name"] == TOKENIZER_MODEL:
            continue
        for group in clf.model_config(step["model_name"]).get("instance_group", []):
            kinds.add(group.get("kind", "KIND_CPU"))
    return "GPU" if "KIND_GPU" in kinds else "CPU"


def flop_count(args, found, texts, notes) -> dict | None:
    """FLOPs per sample on real tokens: the checkpoint's FLOPs/token x the texts' mean token count,
    tokenized as the served tokenizer tokenizes them."""
    cfg_path = Path(args.checkpoint) / "config.json" if args.checkpoint else found.config
    if cfg_path is None and args.run and (Path(args.run) / "checkpoint" / "config.json").is_file():
        cfg_path = Path(args.run) / "checkpoint" / "config.json"
    if cfg_path is None or not Path(cfg_path).is_file() or found.tokenizer_json is None:
        notes.append("FLOP utilisation not computed: no model config.json (--checkpoint) or tokenizer.json found")
        return None
    config = BertConfig.from_json_file(cfg_path)
    tokens = TextEncoder.from_params(found.tokenizer_json, found.tokenizer).lengths(texts)
    per_token = config.flops_per_token()
    return {"per_token": per_token, "mean_tokens": float(np.mean(tokens)),
            "per_sample": per_token * float(np.mean(tokens)), "layers": config.num_hidden_layers,
            "hidden": config.hidden_size, "intermediate": config.intermediate_size,
            "max_length": found.tokenizer.max_length, "config": str(cfg_path)}


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
    found = find_in_repository(args.repository)
    baseline = None
    if args.in_process:
        if found.onnx is not None and found.tokenizer_json is not None:
            baseline = InProcessOnnx(found, clients[models[0]].labels, args.in_process_chunk)
            backends[IN_PROCESS] = baseline.infer
        else:
            notes.append(f"in-process baseline skipped: no {BASELINE_ENSEMBLE}_model ONNX file and tokenizer.json "
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
    gemms = {dtype: GemmRate(reps=args.matmul_reps, threads=found.classifier.threads, dtype=dtype)
             for dtype in ("fp32", "int8")}
    results, round_rates = run_rounds(backends, per_round, texts, log,
                                      rate=lambda: {d: g.measure() for d, g in gemms.items()})
    matmul = {d: gemm_summary([r[d] for r in round_rates]) for d in gemms}

    flops = flop_count(args, found, texts, notes)

    rows = []
    for name in backends:
        res = results[name]
        in_proc = name == IN_PROCESS
        framework, precision = (("ONNX Runtime in-process (no Triton)" + (
            f", length-sorted chunks of {baseline.chunk_rows}" if baseline.chunk_rows else ""), "FP32")
            if in_proc else describe(name))
        where = "CPU" if in_proc else runs_on(clf, name)
        rate = matmul["int8" if precision == "INT8" else "fp32"]
        rows.append({
            "model": "-" if in_proc else name, "framework": framework, "precision": precision,
            "graph": "" if in_proc else graph_of(name),
            "samples_per_s": statistics.median(res["sps"]), "rounds_samples_per_s": res["sps"],
            "requests": len(res["latency"]), **percentiles_ms(res["latency"]),
            "accuracy": accuracy(res["labels"], truth, held.label_names or [], held.multi_label),
            # each round against the GEMM rate of its precision measured just before it, then the median
            "flop_utilisation": None if flops is None or where != "CPU" else statistics.median(
                x * flops["per_sample"] / (g * 1e9) for x, g in zip(res["sps"], rate["rounds_gflops"])),
            "gemm_rate": rate["dtype"],
            "hardware": cpu_short if where == "CPU" else ", ".join(hw["gpus"]) or "GPU", "runs_on": where})
    ref = next((r for r in rows if r["model"] == REFERENCE), None)
    if ref is None:
        notes.append(f"{REFERENCE} is not on the server: no speedup/recovery column")
    for r in rows:
        r["speedup"] = round_ratio(r, ref) if ref else None
        r["recovery"] = (r["accuracy"] / ref["accuracy"] if ref and ref["accuracy"] and r["accuracy"] is not None
                         else None)

    # the cost of one request, backend by backend, each against its in-process twin
    request_cost = None
    if args.request_cost_texts > 0:
        n = min(args.request_cost_texts, len(texts))
        log(f"the cost of one request: {n} single texts per backend, interleaved with the same in-process")
        request_cost = {"texts": n, "rows": [
            backend_cost(Target(m, clients[m].infer, clients[m], m), in_process_twin(args, m, clients[m]),
                         texts[:n], log) for m in models]}

    # the concurrency sweep against one ensemble
    sweep = None
    if args.sweep:
        target = args.sweep_model or (BASELINE_ENSEMBLE if BASELINE_ENSEMBLE in models else
                                      max((r for r in rows if r["model"] != "-"), key=lambda r: r["samples_per_s"])["model"])
        n = min(args.sweep_texts, len(texts))
        levels = [int(x) for x in str(args.sweep_levels).split(",")]
        log(f"concurrency sweep on {target}: {n} single-text requests per level per round, levels {levels}")
        make = lambda: Classifier(args.url, args.protocol, model=target, retries=args.retries, timeout=args.timeout)
        lv, batch_rounds = concurrency_sweep(make, texts[:n], levels, rounds, log, batch_size=args.batch_size)
        sweep = {"model": target, "texts_per_level": n, "levels": lv,
                 "batch_samples_per_s": statistics.median(batch_rounds), "batch_rounds": batch_rounds}
    load_after = os.getloadavg()[0]

    targets = judge_targets(rows, sweep, request_cost, args.batch_size)
    if not has_vnni(hw["isa"]):
        if any(r["precision"] == "INT8" for r in rows):
            notes.append("this CPU has no VNNI (int8 dot-product) instructions: INT8 gains little or no speed "
                         "here; on a GPU, TensorRT INT8 runs ahead of FP16 (NVIDIA's BERT-base INT8 engines ~1.9x "
                         "FP16 at batch 128 on an A100)")
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": args.command_line,
            "url": clf.url, "protocol": args.protocol, "texts": len(texts), "text_source": held.source,
            "batch_size": args.batch_size, "rounds": rounds, "hardware": hw, "matmul": matmul["fp32"],
            "matmul_int8": matmul["int8"], "flops": flops,
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "in_process": None if baseline is None else {
                "onnx": str(baseline.onnx_path), "max_length": baseline.max_length,
                "padding": ("the served tokenizer's: each batch to its longest text, rounded up to a multiple of "
                            f"{baseline.encoder.pad_multiple}")
                + ("" if not baseline.chunk_rows else f", run as length-sorted chunks of {baseline.chunk_rows} "
                   "rows, each trimmed to its longest")},
            "notes": notes}
    return {"meta": meta, "rows": rows, "sweep": sweep, "targets": targets, "request_cost": request_cost}


def gemm_summary(per_round: list[dict]) -> dict:
    """One GEMM rate's record: the first round's settings, the median over rounds, every round's."""
    return dict(per_round[0], gflops=statistics.median(r["gflops"] for r in per_round),
                best_gflops=max(r["best_gflops"] for r in per_round), rounds_gflops=[r["gflops"] for r in per_round])


def in_process_twin(args, ensemble: str, client: Classifier) -> Target | None:
    """The in-process twin of a served ONNX ensemble (its own ONNX file, session settings and
    post-process, from the repository on disk), None for the others or with --no-in-process."""
    if not args.in_process:
        return None
    found = find_in_repository(args.repository, ensemble)
    if found.onnx is None or found.tokenizer_json is None:
        return None
    return Target(f"{ensemble} in-process", InProcessOnnx(found, client.labels).infer)


def judge_targets(rows: list[dict], sweep: dict | None, request_cost: dict | None, batch_size: int) -> dict:
    """Each of TARGETS: what was measured against it, its value, and whether it is met."""
    by_model = {r["model"]: r for r in rows}
    triton_rows = [r for r in rows if r["model"] != "-" and r["flop_utilisation"] is not None]
    best = max(triton_rows, key=lambda r: r["flop_utilisation"]) if triton_rows else None
    int8_rows = [r for r in triton_rows if r["precision"] == "INT8"]
    best_int8 = max(int8_rows, key=lambda r: r["flop_utilisation"]) if int8_rows else None
    onnx, base = by_model.get(BASELINE_ENSEMBLE), by_model.get("-")
    top = max(sweep["levels"], key=lambda x: x["concurrency"]) if sweep else None
    int8 = [r for r in rows if r["precision"] == "INT8" and r["recovery"] is not None]
    costs = [c for c in (request_cost or {}).get("rows", []) if c["server_cost_p50_ms"] is not None]
    cost = next((c for c in costs if c["model"] == BASELINE_ENSEMBLE), costs[0] if costs else None)
    targets = {
        "flop_utilisation": {"what": "FLOP utilisation (real tokens) of the best backend through Triton, against "
                             "the GEMM rate of its precision" + (f" ({best['model']})" if best else ""),
                             "value": best["flop_utilisation"] if best else None},
        "int8_flop_utilisation": {"what": "FLOP utilisation (real tokens) of the best INT8 backend through Triton, "
                                  "against the INT8 GEMM rate" + (f" ({best_int8['model']})" if best_int8 else ""),
                                  "value": best_int8["flop_utilisation"] if best_int8 else None},
        "ensemble_vs_in_process": {"what": "bert_onnx_fp32 through Triton vs the same tokenizer + ONNX Runtime "
                                           "in-process (samples/s)",
                                   "value": round_ratio(onnx, base) if onnx and base else None},
        "concurrency_vs_batch": {"what": f"single-text requests at concurrency {top['concurrency'] if top else 16} vs "
                                         f"batch {batch_size} ({sweep['model'] if sweep else '-'}, samples/s)",
                                 "value": top["vs_batch"] if top else None},
        "int8_recovery": {"what": "INT8 accuracy recovery vs PyTorch FP32"
                          + (f" ({min(int8, key=lambda r: r['recovery'])['model']})" if int8 else ""),
                          "value": min(r["recovery"] for r in int8) if int8 else None},
        "request_cost_ms": {"what": "the server's cost of one text at p50: through the ensemble minus in-process, "
                            "concurrency 1" + (f" ({cost['model']})" if cost else ""),
                            "value": cost["server_cost_p50_ms"] if cost else None, "unit": "ms"},
    }
    for k, t in targets.items():
        t["target"] = TARGETS[k]
        t["better"] = "lower" if k in LOWER_IS_BETTER else "higher"
        t["met"] = None if t["value"] is None else (
            t["value"] <= t["target"] if k in LOWER_IS_BETTER else t["value"] >= t["target"])
    return targets


def add_arguments(p):
    p.add_argument("--url", help="server address (default 127.0.0.1:8001 for grpc, :8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    p.add_argument("--models", help="comma-separated ensembles (default: every READY bert_* ensemble)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per request (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="rounds the texts are dealt into (default 5)")
    p.add_argument("--limit", type=int, help="use at most N texts (a fixed random sample)")
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="concurrency sweep of single-text requests (default on)")
    p.add_argument("--sweep-model", help="ensemble for the sweep (default bert_onnx_fp32)")
    p.add_argument("--sweep-levels", default="1,2,4,8,16", help="concurrency levels (default 1,2,4,8,16)")
    p.add_argument("--sweep-texts", type=int, default=256, help="single-text requests per level per round")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the same tokenizer + ONNX Runtime + post-process without Triton (default on)")
    p.add_argument("--in-process-chunk", type=int, metavar="ROWS",
                   help="in-process baseline: run each batch as length-sorted chunks of ROWS texts, each padded to "
                        "its own longest; 0: the whole batch padded to its longest text (default: as the served "
                        f"{BASELINE_ENSEMBLE}_model does, its `sort_chunk_rows` parameter)")
    p.add_argument("--repository", default="model_repository", help="the served repository on disk (for the "
                   "in-process baseline's ONNX file and tokenizer)")
    p.add_argument("--checkpoint", help="checkpoint folder whose config.json gives the FLOP count "
                   "(default: the repository's copy, else <run>/checkpoint)")
    p.add_argument("--matmul-reps", type=int, default=10, help="timed 2048x2048 GEMMs per round and precision "
                   "(fp32 and INT8; median)")
    p.add_argument("--request-cost-texts", type=int, default=200, metavar="N",
                   help="the cost of one request: N single texts per backend at concurrency 1, each also in-process "
                        "(0: skip; default 200)")
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
