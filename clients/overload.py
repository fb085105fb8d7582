"""`python -m clients overload`: drive one ensemble well past its capacity and check that it sheds.

    python -m clients overload [--url 127.0.0.1:8001] [--protocol grpc] [--model bert_onnx_fp32]
                               [--factor 3] [--seconds 10] [--run artifacts/demo] [--out reports/overload]

1. reads the queue bounds of the ensemble's composing models from the server (max_queue_size, the
   queue timeout) and each held-out text's answer on the quiet server;
2. measures capacity: a closed loop of single-text requests (`--concurrency` clients, default the
   queue size up to 64) for --capacity-seconds; answers per second;
3. overloads it: Poisson arrivals at --factor x capacity (or --rate) for --seconds, open loop: the
   arrivals do not wait for the server, so without a bound its queue would grow by
   (factor - 1) x capacity requests every second. In --rounds back to back: the first overload
   raises the server's memory once (a full queue), the later ones must not raise it further;
4. checks right after that it serves normally (a short closed loop, every answer correct).

Every request must be answered correctly or refused as busy (HTTP 503 / gRPC UNAVAILABLE), none
may pass its --deadline, the p99 latency of the answered ones must stay under the bound the queue
implies (`latency_bound`), the server's memory (RSS of tritonserver and its Python stubs, when it
runs on this machine) must stay flat and no stub may die. The generator shares the CPU with a
local server, so the report gives its CPU time and the rate it really offered beside the asked one.
Files: <out>/summary.json, summary.md, overload.png. Exits 1 when a check fails.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from clients.client import PROTOCOLS, Classifier, ClientError, normalize_url
from clients.load import server_memory, server_processes
from clients.machine import cpu_info
from clients.openloop import (BUSY, DEADLINE, ERROR, OK, WRONG, LoopResult, Sender, closed_loop, open_loop,
                             quiet_answers)
from clients.overload_report import plot, render
from clients.texts import add_text_arguments, texts_from_args
from contract.files import atomic_write_json, atomic_write_text

# The first overload raises the server's RSS once: a full queue's requests and their buffers, which
# the allocator keeps for the next time. Flat means the rounds after it add no more than this.
MEMORY_SLACK_MIB = 24


def queue_bounds(clf: Classifier, ensemble: str) -> dict:
    """Per composing model of `ensemble`: max_batch_size, max_queue_size, timeout_s (0 = none)."""
    steps = clf.model_config(ensemble).get("ensemble_scheduling", {}).get("step", [])
    if not steps:
        raise ClientError(f"{ensemble!r} on {clf.url} is not an ensemble (no ensemble_scheduling steps)")
    bounds = {}
    for step in steps:
        cfg = clf.model_config(step["model_name"])
        policy = cfg.get("dynamic_batching", {}).get("default_queue_policy", {})
        bounds[step["model_name"]] = {
            "max_batch_size": int(cfg.get("max_batch_size", 0)),
            "max_queue_size": int(policy.get("max_queue_size", 0)),
            "timeout_s": int(policy.get("default_timeout_microseconds", 0)) / 1e6}
    return bounds


def model_stats(clf: Classifier, names) -> dict:
    """Triton's cumulative statistics per model: requests answered and failed (a refusal is a
    failure), executions, and the time they spent queued and computing."""
    stats = {}
    for name in names:
        s = clf.statistics(name)
        inf = s.get("inference_stats", {})
        get = lambda key, field: int(inf.get(key, {}).get(field, 0))
        stats[name] = {"success": get("success", "count"), "fail": get("fail", "count"),
                       "executions": int(s.get("execution_count", 0)),
                       "queue_s": get("queue", "ns") / 1e9, "compute_s": get("compute_infer", "ns") / 1e9}
    return stats


def stats_delta(before: dict, after: dict) -> dict:
    return {name: {k: round(after[name][k] - v, 3) for k, v in counts.items()} for name, counts in before.items()}


def latency_bound(bounds: dict, capacity: float) -> float:
    """Longest an answered single-text request can take, in seconds, from the queue settings and the
    capacity (answers/s). It passes every composing model's queue: in each it waits behind at most
    max_queue_size requests drained at `capacity`, or is refused once it has waited the queue timeout
    (Triton checks the timeout only while a request is queued), then for the batch already running
    and its own (max_batch_size texts each). Under sustained overload the slowest step's queue stays
    full to its timeout, so the answered requests' p50 sits near that timeout."""
    total = 0.0
    for b in bounds.values():
        wait = b["max_queue_size"] / capacity if b["max_queue_size"] else float("inf")
        total += (min(wait, b["timeout_s"]) if b["timeout_s"] else wait) + 2 * b["max_batch_size"] / capacity
    return total


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def summarize(result, seconds: float, asked_rate: float) -> dict:
    outcomes = result.outcomes
    kinds = {k: result.count(k) for k in (OK, BUSY, ERROR, WRONG, DEADLINE)}
    answered = [o.latency for o in outcomes if o.kind == OK]
    refused = [o.latency for o in outcomes if o.kind == BUSY]
    return {"requests": len(outcomes), **kinds, "asked_rate": asked_rate,
            "offered_rate": len(outcomes) / max(result.sending_seconds or seconds, 1e-9),
            "answered_rate": kinds[OK] / max(result.seconds, 1e-9),
            "refused_share": kinds[BUSY] / max(1, len(outcomes)),
            "latency_ms": {**{f"p{q}": _ms(percentile(answered, q)) for q in (50, 90, 99)},
                           "max": _ms(max(answered, default=None))},
            "refusal_ms": {f"p{q}": _ms(percentile(refused, q)) for q in (50, 99)},
            "lag_ms": {f"p{q}": _ms(percentile([o.lag for o in outcomes], q)) for q in (50, 99)},
            "generator_cpu_cores": result.cpu_seconds / max(result.seconds, 1e-9),
            "errors": sorted({o.detail for o in outcomes if o.kind in (ERROR, WRONG, DEADLINE)})[:5],
            "busy_messages": sorted({o.detail.split(": ", 1)[-1] for o in outcomes if o.kind == BUSY})[:3]}


def _ms(seconds):
    return None if seconds is None else round(1000 * seconds, 1)


def _stub_pids(port):
    _, children = server_processes(port)
    return sorted(p.pid for p in children if p.is_running() and p.status() != "zombie")


def _server_cpu(port):
    server, children = server_processes(port)
    if server is None:
        return None
    total = 0.0
    for p in [server, *children]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            pass
    return total


async def _run(args, clf, bounds, log) -> dict:
    held = texts_from_args(args).take(args.limit, seed=args.seed)
    host_port, _ = normalize_url(args.url, args.protocol)
    port = int(host_port.rsplit(":", 1)[1])
    doc = {"memory": {"start": server_memory(port)}}
    async with Sender(host_port, args.protocol, args.model, held.texts, args.deadline) as sender:
        sender.expected = await quiet_answers(sender)
        log(f"answers of {len(held.texts)} texts on the quiet server; capacity: {args.concurrency} clients "
            f"for {args.capacity_seconds} s")
        if args.capacity:
            capacity = {"rate": args.capacity, "given": True}
        else:
            warm = await closed_loop(sender, args.concurrency, args.capacity_seconds, args.seed)
            failed = summarize(warm, args.capacity_seconds, 0)
            if failed["error"] + failed["wrong"] + failed["deadline"] or failed["refused_share"] > 0.05:
                raise ClientError(f"capacity run at concurrency {args.concurrency}: {failed['busy']} refused, "
                                  f"failures {failed['errors']}: lower --concurrency, or give --capacity")
            capacity = {"rate": warm.rate, "concurrency": args.concurrency, "refused": warm.count(BUSY),
                        "latency_ms": failed["latency_ms"], "generator_cpu_cores": warm.cpu_seconds / warm.seconds}
        rate = args.rate or args.factor * capacity["rate"]
        doc["memory"]["warm"] = server_memory(port)
        stubs, server_cpu, stats = _stub_pids(port), _server_cpu(port), model_stats(clf, bounds)
        log(f"capacity {capacity['rate']:.0f} answers/s; open loop at {rate:.0f} requests/s for {args.seconds} s")
        runs = []
        for i in range(args.rounds):      # the same overload again: memory must not keep growing
            runs.append(await open_loop(sender, rate, args.seconds / args.rounds, args.seed + i))
            doc["memory"].setdefault("rounds", []).append(server_memory(port))
        run = LoopResult([o for r in runs for o in r.outcomes], sum(r.seconds for r in runs),
                         sum(r.cpu_seconds for r in runs), sum(r.sending_seconds for r in runs))
        overload = summarize(run, args.seconds, rate)
        overload["models"] = stats_delta(stats, model_stats(clf, bounds))
        if server_cpu is not None:
            overload["server_cpu_cores"] = (_server_cpu(port) - server_cpu) / run.seconds
        overload["timeline"] = timeline(run.outcomes, args.bin_seconds)
        doc["memory"]["after"] = doc["memory"]["rounds"][-1]
        after = await closed_loop(sender, 4, args.after_seconds, args.seed + 1)
        doc["memory"]["recovered"] = server_memory(port)
        late = summarize(after, args.after_seconds, 0)
        doc["after"] = {"requests": len(after.outcomes), "answered": after.count(OK),
                        "errors": late["errors"] + late["busy_messages"], "latency_ms": late["latency_ms"]}
        doc["stubs"] = {"before": stubs, "after": _stub_pids(port)}
    doc.update(capacity=capacity, overload=overload, source=held.source, texts=len(held.texts))
    return doc


def timeline(outcomes, width: float) -> list[dict]:
    """Per `width`-second bin of send times: sent, answered, refused per second; answered p50/p99 ms."""
    if not outcomes:
        return []
    start = min(o.sent for o in outcomes)
    bins = {}
    for o in outcomes:
        bins.setdefault(int((o.sent - start) // width), []).append(o)
    rows = []
    for b in sorted(bins):
        group = bins[b]
        lat = [o.latency for o in group if o.kind == OK]
        rows.append({"t": round(b * width, 3), "sent_per_s": len(group) / width,
                     "answered_per_s": sum(o.kind == OK for o in group) / width,
                     "refused_per_s": sum(o.kind == BUSY for o in group) / width,
                     "p50_ms": _ms(percentile(lat, 50)), "p99_ms": _ms(percentile(lat, 99))})
    return rows


def checks(doc: dict) -> list[tuple[str, bool]]:
    """(what, held) for every promise the overload run makes."""
    o, mem = doc["overload"], doc["memory"]
    p99 = o["latency_ms"]["p99"]
    rounds = [m["total_mib"] for m in mem.get("rounds", []) if m]
    out = [("every request answered correctly or refused as busy", o[ERROR] + o[WRONG] + o[DEADLINE] == 0),
           ("the server refused some requests (it was overloaded)", o[BUSY] > 0),
           (f"p99 of the answered {p99} ms <= bound {doc['bound_ms']:.0f} ms", p99 is not None and p99 <= doc["bound_ms"]),
           (f"no request past its deadline ({doc['deadline_s']} s)", o[DEADLINE] == 0),
           ("no Python stub died", doc["stubs"]["before"] == doc["stubs"]["after"] or not doc["stubs"]["before"]),
           ("serves normally right after", doc["after"]["answered"] == doc["after"]["requests"] > 0)]
    if len(rounds) > 1:
        grew = max(rounds[1:]) - rounds[0]
        out.append((f"server memory flat after the first round ({grew:+.0f} MiB over {len(rounds) - 1} more, at "
                    f"most +{MEMORY_SLACK_MIB})", grew <= MEMORY_SLACK_MIB))
    return out


def overload(args, log=print) -> dict:
    host_port, _ = normalize_url(args.url, args.protocol)
    started = time.time()
    with Classifier(host_port, args.protocol, model=args.model, retries=2) as clf:
        clf.classify(["warm-up text"])            # fails early and clearly: server down, unknown model
        bounds = queue_bounds(clf, args.model)
        if not args.concurrency:
            queued = [b["max_queue_size"] for b in bounds.values() if b["max_queue_size"]]
            args.concurrency = min([64, *queued])
        doc = asyncio.run(_run(args, clf, bounds, log))
    doc.update(url=host_port, protocol=args.protocol, model=args.model, queue=bounds, deadline_s=args.deadline,
               seconds=args.seconds, factor=None if args.rate else args.factor, machine=cpu_info(),
               started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
               bound_ms=1000 * latency_bound(bounds, doc["capacity"]["rate"]))
    doc["checks"] = [{"check": what, "held": held} for what, held in checks(doc)]
    out = Path(args.out)
    plot(doc, out / "overload.png")
    atomic_write_json(out / "summary.json", doc, indent=1)
    atomic_write_text(out / "summary.md", render(doc))
    return doc


def add_arguments(p):
    p.add_argument("--url", help="server address (default 127.0.0.1:8001 for grpc, :8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    p.add_argument("--model", default="bert_onnx_fp32", help="ensemble to overload (default bert_onnx_fp32)")
    p.add_argument("--factor", type=float, default=3.0, help="offered rate = this x measured capacity (default 3)")
    p.add_argument("--rate", type=float, help="offered requests/s (instead of --factor)")
    p.add_argument("--capacity", type=float, help="answers/s to assume instead of measuring it")
    p.add_argument("--seconds", type=float, default=10.0, help="open-loop duration, all rounds (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="open loops in a row; the server's memory is read after "
                   "each and must not grow after the first (default 2)")
    p.add_argument("--concurrency", type=int, default=0, help="closed-loop clients measuring capacity "
                   "(default: the composing models' queue size, at most 64)")
    p.add_argument("--capacity-seconds", type=float, default=5.0, help="capacity measurement (default 5)")
    p.add_argument("--after-seconds", type=float, default=2.0, help="the closed loop right after (default 2)")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds a request may take at most (default 10)")
    p.add_argument("--bin-seconds", type=float, default=0.5, help="timeline bins (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    add_text_arguments(p, limit=256, limit_help="distinct texts to send", out="reports/overload")


def main(args) -> int:
    doc = overload(args)             # writes its report under --out
    print(render(doc))
    print(f"wrote {args.out}/summary.md, summary.json, overload.png")
    failed = [c["check"] for c in doc["checks"] if not c["held"]]
    if failed:
        print("error: " + "; ".join(failed), flush=True)
        return 1
    return 0
