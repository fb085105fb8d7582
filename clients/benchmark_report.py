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


def hardware_line(doc: dict) -> str:
    """CPU, cores and instruction sets, GPUs, the GEMM rate and the machine's load."""
    m = doc["meta"]
    hw, rate = m["hardware"], m["matmul"]
    busy = max(m["load_average"]) > hw["logical_cores"] + 2
    return (f"Hardware: {hw['cpu']}, {hw['logical_cores']} cores ({', '.join(hw['isa']) or 'no AVX2'})"
            + (f"; GPU: {', '.join(hw['gpus'])}" if hw["gpus"] else "")
            + f". GEMM rate: {_fmt(rate.get('gflops'), '.1f')} GFLOP/s"
            + (f" (per round: {', '.join(f'{g:.1f}' for g in rate['rounds_gflops'])})" if rate.get("rounds_gflops")
               else "")
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
        value = t["value"]
        verdict = "" if value is None else (" (met)" if value >= t["target"] else " (NOT met)")
        lines.append(f"- {t['what']}: **{_pct(value)}** (target >= {100 * t['target']:.1f}%){verdict}")
    return lines + [""]


def section_flops(doc: dict) -> list[str]:
    f, rate = doc["meta"].get("flops"), doc["meta"]["matmul"]
    if not f:
        return []
    return ["## How the FLOPs were counted", "",
            f"FLOPs/sample = 2 x L(4C^2 + 2CI) x real tokens = {f['per_token'] / 1e6:.2f} MFLOP/token x "
            f"{f['mean_tokens']:.1f} tokens = {f['per_sample'] / 1e9:.3f} GFLOP (L={f['layers']}, "
            f"C={f['hidden']}, I={f['intermediate']}; the encoder's dense layers only, attention scores "
            f"and embeddings excluded; tokens counted after truncation at {f['max_length']}, [CLS]/[SEP] "
            f"included, padding excluded). The GEMM rate is {rate.get('source', 'a')} on "
            f"{rate['n']}x{rate['n']} {rate.get('dtype', 'fp32')} matrices, median of {rate['reps']} runs on "
            f"{rate['threads']} threads, measured just before each round. FLOP utilisation = samples/s x "
            "FLOPs/sample / GEMM rate, per round (each against its own rate: a shared machine's speed "
            "drifts over minutes), median over rounds.", ""]


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


SECTIONS = [section_header, section_table, section_targets, section_flops, section_sweep, section_notes]


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
