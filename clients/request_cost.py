"""The cost of one request: one text at a time, through each ensemble and in-process, and where the
server spends the difference.

For each backend, single texts are sent one after the other (concurrency 1), each followed by the
same text through the in-process twin of that backend (clients/baseline.py: the served tokenizer,
ONNX file, session settings and post-process, without Triton), the order flipping from text to
text so that a slow spell hits both. The difference of the two p50s (and p99s) is what serving
costs one request: gRPC, the ensemble scheduler, the hops between Triton and each Python model's
stub process, the dynamic batchers' queues.

Where it goes comes from Triton's own per-model statistics (/v2/models/stats), read before and
after each backend's texts: for every step of the ensemble, per request, the time queued, the time
to hand the inputs over (compute input), to run (compute infer) and to take the outputs back
(compute output); the ensemble's own request time; and what is left outside the server (the
client's measured latency minus the ensemble's request time: gRPC and the client library).
A backend without an in-process twin (PyTorch: the clients never import torch) still gets its
served latency and the breakdown.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from clients.client import Classifier, ClientError
from clients.rounds import percentiles_ms
from contract.names import TOKENIZER_MODEL

STAT_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


def _int(x) -> int:
    return int(x or 0)          # gRPC's JSON gives int64 as strings


def model_statistics(clf: Classifier) -> dict[str, dict]:
    """name -> {"requests", "executions", "request_ns", "<field>_ns" for STAT_FIELDS}, summed over versions."""
    if clf.protocol == "grpc":
        import tritonclient.grpc as tc
        raw = tc.InferenceServerClient(clf.host_port).get_inference_statistics(as_json=True)
    else:
        import tritonclient.http as tc
        raw = tc.InferenceServerClient(clf.host_port).get_inference_statistics()
    out: dict[str, dict] = {}
    for m in raw.get("model_stats", []):
        rec = out.setdefault(m["name"], {"requests": 0, "executions": 0, "request_ns": 0,
                                         **{f"{f}_ns": 0 for f in STAT_FIELDS}})
        stats = m.get("inference_stats", {})
        rec["requests"] += _int(stats.get("success", {}).get("count"))
        rec["request_ns"] += _int(stats.get("success", {}).get("ns"))
        rec["executions"] += _int(m.get("execution_count"))
        for f in STAT_FIELDS:
            rec[f"{f}_ns"] += _int(stats.get(f, {}).get("ns"))
    return out


def statistics_delta(before: dict, after: dict) -> dict[str, dict]:
    """What each model did between two model_statistics() calls (models that did nothing left out)."""
    delta = {}
    for name, rec in after.items():
        old = before.get(name, {})
        d = {k: v - old.get(k, 0) for k, v in rec.items()}
        if d["requests"] > 0:
            delta[name] = d
    return delta


def ensemble_steps(clf: Classifier, ensemble: str) -> list[str]:
    """The composing models of `ensemble`, in the order its steps run."""
    cfg = clf.model_config(ensemble)
    return [s["model_name"] for s in cfg.get("ensemble_scheduling", {}).get("step", [])]


def breakdown(delta: dict, ensemble: str, steps: list[str], client_latency_mean_s: float) -> dict:
    """Per-request means in ms: each step's queue / compute input / infer / output, the ensemble's
    request time, the time between the steps (the ensemble's time not spent in any step) and the
    time outside the server (the client's mean latency minus the ensemble's request time)."""
    ens = delta.get(ensemble)
    if not ens:
        return {"steps": [], "ensemble_ms": None, "between_steps_ms": None, "outside_server_ms": None}
    per = lambda rec, key: rec[key] / max(1, rec["requests"]) / 1e6   # noqa: E731
    rows = []
    inside_steps = 0.0
    for name in steps:
        rec = delta.get(name)
        if rec is None:
            continue
        # the tokenizer and the post-process are shared by every ensemble: only this backend's
        # texts reach them here, because backends are measured one after the other
        row = {"model": name, "requests": rec["requests"], "executions": rec["executions"],
               **{f"{f}_ms": per(rec, f"{f}_ns") for f in STAT_FIELDS}, "request_ms": per(rec, "request_ns")}
        rows.append(row)
        inside_steps += row["request_ms"] * rec["requests"] / max(1, ens["requests"])
    ensemble_ms = per(ens, "request_ns")
    return {"steps": rows, "ensemble_ms": ensemble_ms, "between_steps_ms": ensemble_ms - inside_steps,
            "outside_server_ms": 1000 * client_latency_mean_s - ensemble_ms}


@dataclasses.dataclass
class Target:
    """Something one text can be sent to: a served ensemble (with the client whose server's
    statistics tell where its time went) or an in-process twin (stats None)."""
    label: str
    infer: Callable
    stats: Classifier | None = None
    ensemble: str | None = None


def interleaved(targets: list[Target], texts: list[str]) -> list[dict]:
    """Every text to every target, one at a time, the order rotating from text to text so a slow
    spell hits them all alike. -> per target {"label", "model", "latency": p50/p95/p99 ms, "mean_ms",
    and for served targets the breakdown()}. Served targets of one call must not share a server
    (their shared tokenizer's statistics would mix): the benchmark measures one backend at a time."""
    for t in targets:                    # warm every target and its connection before the clock
        t.infer([texts[0]])
    steps = {t.label: [s for s in ensemble_steps(t.stats, t.ensemble) if s != t.ensemble]
             for t in targets if t.stats is not None}
    before = {t.label: model_statistics(t.stats) for t in targets if t.stats is not None}
    latencies = {t.label: [] for t in targets}
    for i, text in enumerate(texts):
        k = i % len(targets)
        for t in targets[k:] + targets[:k]:
            start = time.perf_counter()
            t.infer([text])
            latencies[t.label].append(time.perf_counter() - start)
    rows = []
    for t in targets:
        lat = latencies[t.label]
        mean = sum(lat) / max(1, len(lat))
        row = {"label": t.label, "model": t.ensemble, "texts": len(lat), "latency": percentiles_ms(lat),
               "mean_ms": 1000 * mean}
        if t.stats is not None:
            delta = statistics_delta(before[t.label], model_statistics(t.stats))
            row.update(breakdown(delta, t.ensemble, steps[t.label], mean))
        rows.append(row)
    return rows


def backend_cost(served: Target, twin: Target | None, texts: list[str], log=print) -> dict:
    """One backend through its ensemble, interleaved with its in-process twin when it has one:
    both latencies, their difference (the server's cost of one request) and the breakdown."""
    rows = interleaved([served] + ([twin] if twin else []), texts)
    s, local = rows[0], (rows[1] if twin else None)
    out = {"model": served.ensemble, "texts": len(texts), "served": s["latency"], "served_mean_ms": s["mean_ms"],
           "in_process": local["latency"] if local else None,
           "server_cost_p50_ms": s["latency"]["p50_ms"] - local["latency"]["p50_ms"] if local else None,
           "server_cost_p99_ms": s["latency"]["p99_ms"] - local["latency"]["p99_ms"] if local else None,
           **{k: s[k] for k in ("steps", "ensemble_ms", "between_steps_ms", "outside_server_ms")}}
    log(f"  one text at a time  {served.ensemble:<22} served p50 {s['latency']['p50_ms']:.2f} ms"
        + (f", in-process {local['latency']['p50_ms']:.2f} ms, server cost {out['server_cost_p50_ms']:.2f} ms"
           if local else ", no in-process twin"))
    return out


# ---- python -m clients request-cost: two shapes of one ensemble side by side ---------------------
def add_arguments(p):
    p.add_argument("--url", action="append", required=True, metavar="[LABEL=]HOST:PORT",
                   help="a server's gRPC address, optionally named (e.g. before=127.0.0.1:8101); repeat to "
                        "compare servers: each text goes to every one in turn")
    p.add_argument("--model", default="bert_onnx_fp32", help="the ensemble to send the texts to (default bert_onnx_fp32)")
    p.add_argument("--repository", help="a served repository on disk: adds its in-process twin of --model")
    p.add_argument("--limit", type=int, default=300, help="texts, one request each (default 300)")
    p.add_argument("--out", help="also write the rows as JSON here")
    from clients.texts import add_text_arguments
    add_text_arguments(p)


def main(args) -> int:
    import shlex
    import sys

    from clients.baseline import InProcessOnnx, find_in_repository
    from clients.benchmark_report import request_cost_lines
    from clients.texts import texts_from_args
    from contract.files import atomic_write_json

    texts = texts_from_args(args).take(args.limit).texts
    targets = []
    for i, spec in enumerate(args.url):
        label, _, url = spec.rpartition("=")
        clf = Classifier(url, "grpc", model=args.model)
        targets.append(Target(label or f"server {i + 1} ({url})", clf.infer, clf, args.model))
    if args.repository:
        found = find_in_repository(args.repository, args.model)
        if found.onnx is None:
            raise ClientError(f"{args.repository}: no ONNX file for {args.model} (its in-process twin)")
        targets.append(Target("in-process", InProcessOnnx(found, targets[0].stats.labels).infer))
    rows = interleaved(targets, texts)
    doc = {"command": "python -m clients " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
           "model": args.model, "texts": len(texts), "rows": rows}
    print("\n".join(request_cost_lines(doc)))
    if args.out:
        atomic_write_json(args.out, doc, indent=1)
    return 0
