"""The overload run's report: summary.md (figures, the checks, the command) and overload.png
(offered, answered and refused rates per time bin; the answered requests' p50/p99 latency)."""
from __future__ import annotations

from pathlib import Path

from clients.load_report import plot_rates_and_latency
from contract.tables import markdown_table


def _mem(m) -> str:
    if not m:
        return "n/a (server not a local process)"
    return f"{m['total_mib']:.0f} MiB ({m['stubs']} stubs)"


def _cpu(doc) -> str:
    m = doc["machine"]
    return f"{m['cpu']}, {m['logical_cores']} cores ({', '.join(m['isa']) or 'no AVX'})"


def _stage_rows(o: dict) -> list:
    """One row per step of the ensemble, in order: a step is reached by what the step before answered."""
    rows, reached = [], o["requests"]
    for name, m in o["models"].items():
        per = lambda seconds: f"{1000 * seconds / m['success']:.0f}" if m["success"] else "-"
        rows.append([name, reached, m["success"], reached - m["success"], m["executions"],
                     f"{m['success'] / m['executions']:.1f}" if m["executions"] else "-",
                     per(m["queue_s"]), per(m["compute_s"])])
        reached = m["success"]
    return rows


def render(doc: dict) -> str:
    o, cap, mem = doc["overload"], doc["capacity"], doc["memory"]
    lat, ref = o["latency_ms"], o["refusal_ms"]
    composing = ", ".join(f"{name} {b['max_queue_size'] or 'unbounded'}"
                          + (f" / {b['timeout_s']:g} s" if b["timeout_s"] else "") for name, b in doc["queue"].items())
    measured = ("given" if cap.get("given") else
                f"closed loop of {cap['concurrency']} clients, p99 {cap['latency_ms']['p99']} ms")
    server_cpu = o.get("server_cpu_cores")
    lines = [
        f"# Overload: {doc['model']} at {o['asked_rate']:.0f} requests/s", "",
        f"Measured {doc['started']} on {_cpu(doc)}, {doc['protocol']} {doc['url']}, one real text per request "
        f"({doc['texts']} texts from {doc['source']}). Queues (max_queue_size / timeout): {composing}.", "",
        markdown_table(["", "value"], [
            ["capacity (answers/s)", f"{cap['rate']:.1f} ({measured})"],
            ["offered: asked / really sent (requests/s)", f"{o['asked_rate']:.1f} / {o['offered_rate']:.1f} "
                                                          f"for {doc['seconds']:g} s"],
            ["answered (requests/s)", f"{o['answered_rate']:.1f}"],
            ["requests: answered / refused busy / failed", f"{o['ok']} / {o['busy']} / {o['error'] + o['wrong'] + o['deadline']} "
                                                          f"of {o['requests']}"],
            ["answered latency p50 / p90 / p99 / max (ms)", f"{lat['p50']} / {lat['p90']} / **{lat['p99']}** / {lat['max']}"],
            ["p99 bound from the queue and capacity (ms)", f"{doc['bound_ms']:.0f}"],
            ["refusal latency p50 / p99 (ms)", f"{ref['p50']} / {ref['p99']}"],
            ["generator: CPU cores used / send lag p99 (ms)", f"{o['generator_cpu_cores']:.2f} / {o['lag_ms']['p99']}"],
            ["server CPU cores used", "n/a" if server_cpu is None else f"{server_cpu:.2f}"],
            ["server memory (RSS): start / warm / after each round / recovered",
             " / ".join(_mem(m) for m in [mem.get("start"), mem.get("warm"), *mem.get("rounds", []), mem.get("recovered")])],
            ["right after: answered", f"{doc['after']['answered']} of {doc['after']['requests']}"],
        ]), "",
        "Checks:", ""]
    lines += [f"- {'held' if c['held'] else '**FAILED**'}: {c['check']}" for c in doc["checks"]]
    if o.get("models"):
        lines += ["", "Where the requests went during the open loop, from Triton's statistics (times are per "
                  "answered request; a refusal in a queue never reaches the model):", "",
                  markdown_table(["model", "reached it", "answered", "refused or failed", "executions",
                                  "texts per execution", "queue ms", "compute ms"], _stage_rows(o),
                                 align=["l"] + ["r"] * 7)]
    if o["busy_messages"]:
        lines += ["", f"Refusals read: `{o['busy_messages'][0]}`"]
    if o["errors"]:
        lines += ["", "Failures:", *[f"- `{e}`" for e in o["errors"]]]
    lines += ["", "![offered, answered, refused rates and latency](overload.png)", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path):
    rows = doc["overload"]["timeline"]
    plot_rates_and_latency(path, [r["t"] for r in rows], rows,
                           f"{doc['model']}: {doc['overload']['asked_rate']:.0f}/s offered", "seconds (by send time)",
                           capacity=doc["capacity"]["rate"], bound_ms=doc["bound_ms"])
