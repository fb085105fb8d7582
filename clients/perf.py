"""NVIDIA perf_analyzer against each served ensemble, over a concurrency range, on real texts.

    python -m clients perf [--run artifacts/demo] [--url 127.0.0.1:8001] [--models a,b]
                           [--concurrency 1,2,4,8,16] [--measurement-ms 2000] [--out reports/perf]

perf_analyzer is the binary from the tritonclient==2.51.0 wheel that `python -m server install`
puts in .tools/bin (with the libraries it needs on LD_LIBRARY_PATH: server.install.perf_analyzer_env).
Each request carries one real held-out text: the texts go to perf_analyzer as `--input-data` JSON
({"data": [{"text": ["..."]}, ...]}), written to reports/perf/input_data.json. Levels are run one
perf_analyzer call each, the models interleaved per level so machine noise hits them alike; the
rows are merged into reports/perf/<model>.csv (perf_analyzer's own CSV columns) and a summary goes
to reports/perf/summary.md and .json. Any failed request fails the command.
"""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from clients.client import PROTOCOLS, Classifier, ClientError, discover_ensembles, normalize_url
from contract.files import atomic_write, atomic_write_json, atomic_write_text
from contract.tables import markdown_table
from clients.texts import add_text_arguments, texts_from_args

UNSTABLE = "Failed to obtain stable measurement"


def perf_analyzer():
    """(path, env) of the installed perf_analyzer, or a ClientError saying how to install it."""
    try:
        from server.install import InstallError, perf_analyzer_env, perf_analyzer_path
    except ImportError as e:
        raise ClientError(f"server.install is not importable ({e}); run from the repository root") from None
    try:
        return perf_analyzer_path(), perf_analyzer_env()
    except InstallError as e:
        raise ClientError(str(e)) from None


def write_input_data(texts, path: Path) -> Path:
    doc = {"data": [{"text": [t]} for t in texts]}
    atomic_write_text(path, json.dumps(doc, ensure_ascii=False) + "\n")
    return path


def run_level(exe, env, model, url, protocol, data, concurrency, measurement_ms, max_trials, stability,
              timeout, extra=()):
    """One perf_analyzer call at one concurrency -> (csv row dict or None, status, output text)."""
    with tempfile.TemporaryDirectory(prefix="perf-") as tmp:
        out_csv = Path(tmp) / "level.csv"
        cmd = [str(exe), "-m", model, "-u", url, "-i", protocol, "--input-data", str(data),
               "--concurrency-range", f"{concurrency}:{concurrency}", "-p", str(measurement_ms),
               "--max-trials", str(max_trials), "-s", str(stability), "-f", str(out_csv), *extra]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, f"timed out after {timeout:.0f} s", out
        text = proc.stdout + proc.stderr
        errors = [line for line in text.splitlines() if re.search(r"\berror\b", line, re.I)]
        if UNSTABLE in text and not errors:
            return None, "unstable", text
        if proc.returncode != 0 or errors:
            return None, f"failed (exit {proc.returncode}): {(errors or text.strip().splitlines()[-1:] or ['?'])[0]}", text
        if not out_csv.is_file():
            return None, ("unstable" if UNSTABLE in text else "no CSV written"), text
        rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
        if not rows:
            return None, "empty CSV", text
        return rows[0], "ok", text


def _request_counts(text):
    """(client requests, server successful requests) from perf_analyzer's report."""
    client = re.search(r"Client:\s*\n\s*Request count:\s*(\d+)", text)
    server = re.search(r"Server:\s*\n(?:.*\n)*?\s*Successful request count:\s*(\d+)", text)
    return (int(client.group(1)) if client else None, int(server.group(1)) if server else None)


def perf(args, log=print) -> dict:
    exe, env = perf_analyzer()
    url, _ = normalize_url(args.url, args.protocol)
    clf = Classifier(url, args.protocol, retries=args.retries, admin_key=args.admin_key)
    models = args.models.split(",") if args.models else discover_ensembles(clf)
    for m in models:
        cfg = clf.model_config(m)
        if any(i["name"] == "features" for i in cfg.get("input", [])):
            raise ClientError(f"{m} is a tabular ensemble (input `features`): perf runs take text-only ensembles; "
                              "pass --models without it")
    held = texts_from_args(args).take(args.limit)
    out = Path(args.out)
    data = write_input_data(held.texts, out / "input_data.json")
    levels = [int(x) for x in str(args.concurrency).split(",")]
    log(f"perf_analyzer {exe}: {', '.join(models)} at concurrency {levels}, {len(held.texts)} texts from "
        f"{held.source}, {args.protocol} {url}")

    results = {m: [] for m in models}
    logs = {m: [] for m in models}
    failures = []
    for c in levels:
        for m in models:
            t = time.monotonic()
            # a busy machine may never give 3 windows within the stability bound: retry with longer
            # windows and looser bounds, and say so in the status (requests that failed are never retried)
            for attempt, stability in enumerate((args.stability, 50, 100)):
                row, status, text = run_level(exe, env, m, url, args.protocol, data, c,
                                              args.measurement_ms * (1 + attempt), args.max_trials, stability,
                                              args.level_timeout)
                if status != "unstable":
                    break
            if attempt and status == "ok":
                status = f"ok (stable within {stability}% only)"
            logs[m].append(f"===== concurrency {c}: {status}\n{text}")
            sent, served = _request_counts(text)
            entry = {"concurrency": c, "status": status, "seconds": round(time.monotonic() - t, 1),
                     "client_requests": sent, "server_successful": served, "row": row}
            results[m].append(entry)
            if row is None:
                failures.append(f"{m} at concurrency {c}: {status}")
                log(f"  {m:<20} c={c:<3} {status}")
            else:
                log(f"  {m:<20} c={c:<3} {float(row['Inferences/Second']):8.1f} infer/s  "
                    f"p50 {int(row['p50 latency']) / 1000:7.1f} ms  p99 {int(row['p99 latency']) / 1000:7.1f} ms")

    # per model: perf_analyzer's CSV, one row per level, plus the raw logs
    for m in models:
        rows = [e["row"] for e in results[m] if e["row"]]
        if rows:
            fields = list(rows[0].keys())

            def write(tmp, rows=rows, fields=fields):
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=fields)
                    w.writeheader()
                    w.writerows(rows)
            atomic_write(out / f"{m}.csv", write)
        atomic_write_text(out / f"{m}.log", "\n".join(logs[m]))
    doc = {"url": url, "protocol": args.protocol, "texts": len(held.texts), "text_source": held.source,
           "measurement_ms": args.measurement_ms, "levels": levels, "perf_analyzer": str(exe),
           "results": {m: [{k: v for k, v in e.items() if k != "row"} | _summary(e["row"]) for e in results[m]]
                       for m in models},
           "failures": failures}
    atomic_write_json(out / "summary.json", doc, indent=1)
    atomic_write_text(out / "summary.md", render(doc))
    return doc


def _summary(row):
    if not row:
        return {}
    return {"infer_per_s": float(row["Inferences/Second"]), "p50_ms": int(row["p50 latency"]) / 1000,
            "p95_ms": int(row["p95 latency"]) / 1000, "p99_ms": int(row["p99 latency"]) / 1000,
            "server_queue_us": int(row["Server Queue"]), "server_compute_us": int(row["Server Compute Infer"])}


def render(doc) -> str:
    lines = ["# perf_analyzer: single-text requests over a concurrency range", "",
             f"{doc['protocol']} {doc['url']}; {doc['texts']} real texts from {doc['text_source']} "
             f"(`--input-data`); measurement windows of {doc['measurement_ms']} ms. CSVs: `<model>.csv` "
             "(perf_analyzer's columns), raw output: `<model>.log`.", ""]
    rows = []
    for m, entries in doc["results"].items():
        for e in entries:
            figures = ([f"{e['infer_per_s']:.1f}", f"{e['p50_ms']:.1f}", f"{e['p95_ms']:.1f}", f"{e['p99_ms']:.1f}",
                        e["server_queue_us"], e["server_compute_us"]] if "infer_per_s" in e else ["-"] * 6)
            rows.append([m, e["concurrency"], *figures, e["status"]])
    lines.append(markdown_table(["Model", "Concurrency", "Infer/s", "p50 ms", "p95 ms", "p99 ms", "Server queue us",
                                 "Server compute us", "Status"], rows, align="lrrrrrrrl"))
    lines += [f"Failures: {len(doc['failures'])}" + "".join(f"\n- {f}" for f in doc["failures"]), ""]
    return "\n".join(lines)


def add_arguments(p):
    p.add_argument("--url", help="server address (default 127.0.0.1:8001 for grpc, :8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="perf_analyzer's -i (default grpc)")
    p.add_argument("--models", help="comma-separated ensembles (default: every READY bert_* ensemble)")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="levels (default 1,2,4,8,16)")
    p.add_argument("--measurement-ms", type=int, default=2000, help="perf_analyzer -p window (default 2000)")
    p.add_argument("--max-trials", type=int, default=6, help="windows before giving up on stability (default 6)")
    p.add_argument("--stability", type=int, default=25, help="stability percentage -s (default 25)")
    p.add_argument("--level-timeout", type=float, default=120.0, help="seconds per perf_analyzer call")
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--admin-key", help="key for the repository index (default $TRITON_ADMIN_KEY or .triton/admin_key)")
    add_text_arguments(p, limit=512, limit_help="texts in the input data", out="reports/perf")


def main(args) -> int:
    doc = perf(args)
    print()
    print(render(doc))
    print(f"wrote {args.out}/")
    if doc["failures"]:
        print(f"error: {len(doc['failures'])} perf_analyzer run(s) failed", flush=True)
        return 1
    return 0
