"""The benchmark's reports: benchmark.md (tables), benchmark.png (plots), benchmark.json (every figure).

render_markdown() joins SECTIONS, one function per section of benchmark.md, each taking the
benchmark document and returning its lines (none when it has nothing to say): a new section is a
function and one entry in SECTIONS. Reports are written atomically (contract/files.py).
"""
from __future__ import annotations

from pathlib import Path

from contract.files import atomic_write, atomic_write_json, atomic_write_text
from contract.tables import markdown_table


def _fmt(x, spec, suffix=""):
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def _pct(x, spec=".1f"):
    return _fmt(None if x is None else 100 * x, spec, "%")


def _rate(rate: dict | None) -> str:
    if not rate:
        return "n/a"
    per_round = f" (per round: {', '.join(f'{g:.0f}' for g in rate['rounds_gflops'])})" if rate.get("rounds_gflops") else ""
    return f"{_fmt(rate.get('gflops'), '.0f')} {rate.get('unit', 'GFLOP/s')}{per_round}"


def hardware_line(doc: dict) -> str:
    """CPU, cores and instruction sets, GPUs, the GEMM rates and the machine's load."""
    m = doc["meta"]
    hw = m["hardware"]
    busy = max(m["load_average"]) > hw["logical_cores"] + 2
    sets = " ".join(hw.get("instruction_sets") or []) or ", ".join(hw["isa"]) or "no AVX2"
    return (f"Hardware: {hw['cpu']}, {hw['logical_cores']} cores ({sets}"
            + (f"; INT8 GEMM on {hw['int8_kernel']}" if hw.get("int8_kernel") else "") + ")"
            + (f"; GPU: {', '.join(hw['gpus'])}" if hw["gpus"] else "")
            + f". GEMM rates: fp32 {_rate(m['matmul'])}"
            + (f", INT8 {_rate(m['matmul_int8'])}" if m.get("matmul_int8") else "")
            + f". Load average (1 min) before/after: {m['load_average'][0]:.2f}/{m['load_average'][1]:.2f}"
            + (" - the machine was busy with other work: expect low, noisy figures." if busy else "."))


def section_header(doc: dict) -> list[str]:
    m = doc["meta"]
    return ["# Benchmark: BERT ensembles served by Triton", "",
            f"Measured {m['date']} with `{m['command']}`.",
            f"Server {m['url']} ({m['protocol']}); {m['texts']} real held-out texts from {m['text_source']}; "
            f"batch {m['batch_size']} (one request carrying {m['batch_size']} texts, requests back to back); "
            f"{m['rounds']} rounds with the backends interleaved, samples/s = median over rounds; speedup = "
            f"median over rounds of the ratio within a round.",
            hardware_line(doc), ""]


def section_table(doc: dict) -> list[str]:
    header = ["Framework", "Precision", "Model", "Samples/s", "Speedup", "p50 ms", "p95 ms", "p99 ms", "Accuracy",
              "Recovery", "FLOP util.", "Hardware"]
    rows = [[r["framework"], r["precision"], r["model"], f"{r['samples_per_s']:.1f}", _fmt(r["speedup"], ".2f", "x"),
             _fmt(r["p50_ms"], ".1f"), _fmt(r["p95_ms"], ".1f"), _fmt(r["p99_ms"], ".1f"), _pct(r["accuracy"], ".2f"),
             _pct(r["recovery"], ".2f"), _pct(r["flop_utilisation"]), r["hardware"]] for r in doc["rows"]]
    return [markdown_table(header, rows, align="lllrrrrrrrrl")]


def section_targets(doc: dict) -> list[str]:
    lines = ["## Against the targets", ""]
    for t in doc["targets"].values():
        value, lower = t["value"], t.get("better") == "lower"
        verdict = "" if value is None else (" (met)" if t.get("met", value >= t["target"]) else " (NOT met)")
        shown = (_fmt(value, ".2f", " ms"), f"<= {t['target']:g} ms") if t.get("unit") == "ms" else \
            (_pct(value), f"{'<=' if lower else '>='} {100 * t['target']:.1f}%")
        lines.append(f"- {t['what']}: **{shown[0]}** (target {shown[1]}){verdict}")
    return lines + [""]


def section_flops(doc: dict) -> list[str]:
    f, rate, rate8 = doc["meta"].get("flops"), doc["meta"]["matmul"], doc["meta"].get("matmul_int8")
    if not f:
        return []
    return ["## How the FLOPs were counted", "",
            f"FLOPs/sample = 2 x L(4C^2 + 2CI) x real tokens = {f['per_token'] / 1e6:.2f} MFLOP/token x "
            f"{f['mean_tokens']:.1f} tokens = {f['per_sample'] / 1e9:.3f} GFLOP (L={f['layers']}, "
            f"C={f['hidden']}, I={f['intermediate']}; the encoder's dense layers only, attention scores "
            f"and embeddings excluded; tokens counted after truncation at {f['max_length']}, [CLS]/[SEP] "
            f"included, padding excluded). The GEMM rates are {rate.get('source', 'a')} on "
            f"{rate['n']}x{rate['n']} {rate.get('dtype', 'fp32')} matrices"
            + (f" and {rate8['source']} on {rate8['n']}x{rate8['n']} uint8 x int8 matrices" if rate8 else "")
            + f", median of {rate['reps']} runs on {rate['threads']} threads, measured just before each round. "
            "FLOP utilisation = samples/s x FLOPs/sample / the GEMM rate of the backend's precision (INT8 "
            "backends against the INT8 rate, every other CPU backend against the fp32 rate), per round "
            "(each against its own rates: a shared machine's speed drifts over minutes), median over rounds.", ""]


def section_int8(doc: dict) -> list[str]:
    """Both INT8 graphs side by side on this CPU, against the INT8 GEMM rate."""
    m = doc["meta"]
    int8 = [r for r in doc["rows"] if r["precision"] == "INT8" and r["runs_on"] == "CPU"]
    rate8 = m.get("matmul_int8")
    if not int8 or not rate8:
        return []
    hw = m["hardware"]
    fp32 = next((r for r in doc["rows"] if r["model"] == "bert_onnx_fp32"), None)
    ratio = rate8["gflops"] / m["matmul"]["gflops"] if m["matmul"].get("gflops") else None
    rows = [[r["model"], r["graph"] or "-", f"{r['samples_per_s']:.1f}",
             _fmt(r["samples_per_s"] / fp32["samples_per_s"] if fp32 else None, ".2f", "x"),
             _pct(r["accuracy"], ".2f"), _pct(r["recovery"], ".2f"), _pct(r["flop_utilisation"])] for r in int8]
    return ["## INT8 by instruction set", "",
            f"{hw['cpu']}: {' '.join(hw.get('instruction_sets') or []) or 'no AVX2'}; ONNX Runtime's INT8 GEMM runs "
            f"on {hw.get('int8_kernel', 'unknown')} here. INT8 GEMM rate {_rate(rate8)}, "
            + (f"{ratio:.1f}x" if ratio else "n/a") + " the fp32 rate. Which INT8 graph is faster depends on "
            "these instructions (VNNI, AMX): both are served so the figures below decide on this machine.", "",
            markdown_table(["Model", "INT8 graph", "Samples/s", "vs bert_onnx_fp32", "Accuracy", "Recovery",
                            "FLOP util. (INT8 rate)"], rows, align="llrrrrr")]


def _breakdown_rows(label: str, r: dict) -> list[list]:
    out = [[label, "outside the server (gRPC, client library)", _fmt(r.get("outside_server_ms"), ".2f"), "", "", "",
            ""]]
    for s in r.get("steps") or []:
        out.append([label, s["model"], _fmt(s["request_ms"], ".2f"), _fmt(s["queue_ms"], ".2f"),
                    _fmt(s["compute_input_ms"], ".2f"), _fmt(s["compute_infer_ms"], ".2f"),
                    _fmt(s["compute_output_ms"], ".2f")])
    out.append([label, "between the steps (ensemble scheduler)", _fmt(r.get("between_steps_ms"), ".2f"), "", "", "",
                ""])
    return out


BREAKDOWN_HEADER = ["Backend", "Where", "ms per request", "queue", "compute input", "compute infer", "compute output"]
BREAKDOWN_NOTE = ("Per-request means from Triton's statistics (/v2/models/stats) over these texts: each step's "
                  "time in its dynamic batcher's queue, handing its inputs to the Python stub (compute input), "
                  "running (compute infer, which includes the stub's round trip and the metrics it records) and "
                  "taking its outputs back (compute output).")


def section_request_cost(doc: dict) -> list[str]:
    cost = doc.get("request_cost")
    if not cost:
        return []
    rows = [[c["model"], _fmt(c["served"]["p50_ms"], ".2f"), _fmt(c["served"]["p99_ms"], ".2f"),
             _fmt((c["in_process"] or {}).get("p50_ms"), ".2f"), _fmt((c["in_process"] or {}).get("p99_ms"), ".2f"),
             _fmt(c["server_cost_p50_ms"], ".2f"), _fmt(c["server_cost_p99_ms"], ".2f")] for c in cost["rows"]]
    return ["## The cost of one request", "",
            f"{cost['texts']} single texts per backend, one request each at concurrency 1 over "
            f"{doc['meta']['protocol']}, each interleaved with the same text through that backend's in-process "
            "twin (its tokenizer, ONNX file, session settings and post-process without Triton; none for PyTorch: "
            "the clients never import torch). Server cost = served minus in-process.", "",
            markdown_table(["Backend", "served p50 ms", "served p99 ms", "in-process p50 ms", "in-process p99 ms",
                            "server cost p50 ms", "server cost p99 ms"], rows, align="lrrrrrr"),
            BREAKDOWN_NOTE, "",
            markdown_table(BREAKDOWN_HEADER, [x for c in cost["rows"] for x in _breakdown_rows(c["model"], c)],
                           align="llrrrrr")]


def request_cost_lines(doc: dict) -> list[str]:
    """`python -m clients request-cost`: the targets side by side (clients/request_cost.py)."""
    rows = [[r["label"], _fmt(r["latency"]["p50_ms"], ".2f"), _fmt(r["latency"]["p95_ms"], ".2f"),
             _fmt(r["latency"]["p99_ms"], ".2f"), _fmt(r.get("ensemble_ms"), ".2f")] for r in doc["rows"]]
    return [f"# One text at a time: {doc['model']}", "", f"Measured with `{doc['command']}`: {doc['texts']} texts, "
            "each sent to every target in turn (the order rotating), one request at a time.", "",
            markdown_table(["Target", "p50 ms", "p95 ms", "p99 ms", "server-side ms (mean)"], rows, align="lrrrr"),
            BREAKDOWN_NOTE, "",
            markdown_table(BREAKDOWN_HEADER, [x for r in doc["rows"] if r.get("steps") is not None
                                              for x in _breakdown_rows(r["label"], r)], align="llrrrrr")]


def section_sweep(doc: dict) -> list[str]:
    sweep, m = doc.get("sweep"), doc["meta"]
    if not sweep:
        return []
    rows = [[lv["concurrency"], f"{lv['samples_per_s']:.1f}", _fmt(lv["p50_ms"], ".1f"), _fmt(lv["p99_ms"], ".1f"),
             _fmt(lv.get("vs_batch"), ".2f", "x")] for lv in sweep["levels"]]
    return [f"## Concurrency sweep: single-text requests against {sweep['model']}", "",
            f"{sweep['texts_per_level']} texts per level per round, {m['rounds']} rounds, one client "
            "per concurrent thread; the dynamic batcher merges concurrent requests. Each round also "
            f"sends the same texts in requests of {m['batch_size']}, before and after its levels "
            f"({_fmt(sweep.get('batch_samples_per_s'), '.1f')} samples/s, median); 'vs batch' is the "
            "median over rounds of each level against its own round's batch figure (the mean of its "
            "two passes).", "",
            markdown_table(["Concurrency", "Samples/s", "p50 ms", "p99 ms", f"vs batch {m['batch_size']}"], rows,
                           align="rrrrr")]


def section_notes(doc: dict) -> list[str]:
    notes = doc["meta"].get("notes")
    return ["## Notes", ""] + [f"- {n}" for n in notes] + [""] if notes else []


SECTIONS = [section_header, section_table, section_targets, section_flops, section_int8, section_request_cost,
            section_sweep, section_notes]


def render_markdown(doc: dict) -> str:
    lines = [line for section in SECTIONS for line in section(doc)]
    return "\n".join(lines + ["![samples/s and accuracy per backend](benchmark.png)", ""])


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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_reports(doc: dict, out: Path) -> list[Path]:
    out = Path(out)
    md, js, png = out / "benchmark.md", out / "benchmark.json", out / "benchmark.png"
    plot(doc, png)
    atomic_write_json(js, doc, indent=1)
    atomic_write_text(md, render_markdown(doc))
    return [md, js, png]
