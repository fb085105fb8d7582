"""A bounded headless locust run against one ensemble's HTTP endpoint, with the server's memory.

    python -m clients load [--run artifacts/demo] [--url http://127.0.0.1:8000] [--model bert_onnx_fp32]
                           [--users 8] [--spawn-rate 4] [--duration 30s] [--out reports/load]
    python -m clients load --steps 8,32,64,128 --step-seconds 10 --rate 5     # step load

Wraps `locust -f clients/locustfile.py --headless -u USERS -r RATE -t DURATION --host URL --csv ...`
with real held-out texts (written to <out>/texts.json for the users), then reads locust's CSV stats
and reports requests, failures, p50/p95/p99 and the resident memory (RSS) of the tritonserver
process and its Python-backend stubs before and after. Files: <out>/<model>_stats.csv (and locust's
other CSVs), <out>/summary.json, <out>/summary.md. Exits 1 if any request failed.

--steps runs locust's StepLoad shape instead (clients/locustfile.py): that many users per step, each
step --step-seconds long, each user sending at most --rate requests a second; the report and
<out>/steps.png give per step the offered (sent) and answered rates, the refusals of a busy server
and the answered requests' p50/p99. Refusals are what a server past its capacity should answer,
so there only other failures fail the run.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients.client import Classifier, ClientError, normalize_url
from contract.files import atomic_write_json, atomic_write_text
from clients.texts import add_text_arguments, texts_from_args

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_duration(text: str) -> float:
    """'30s', '2m', '1m30s', '45' -> seconds."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not m or not any(m.groups()):
        raise ClientError(f"--duration {text!r}: expected e.g. 30s, 2m, 1m30s")
    h, mi, s = (int(g or 0) for g in m.groups())
    return 3600 * h + 60 * mi + s


def server_processes(port: int):
    """The tritonserver listening on `port` and its children (the Python-backend stubs), via psutil."""
    import psutil
    pid = None
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                pid = c.pid
                break
    except psutil.AccessDenied:
        pass
    if pid is None:   # not allowed to see sockets: a tritonserver whose command line names the port
        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "tritonserver" in (p.info["name"] or "") and re.search(rf"--http-port[= ]{port}\b", cmd):
                pid = p.pid
                break
    if pid is None:
        return None, []
    server = psutil.Process(pid)
    return server, server.children(recursive=True)


def server_memory(port: int) -> dict | None:
    """RSS in MiB of tritonserver + its stubs, or None when the server is not a local process."""
    import psutil
    server, children = server_processes(port)
    if server is None:
        return None
    try:
        main = server.memory_info().rss
    except psutil.NoSuchProcess:
        return None
    stubs = {}
    for p in children:  # a stub that died (or a zombie not yet reaped) holds no memory: skip it, count the rest
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                stubs[p.pid] = p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    mib = 1024 * 1024
    return {"pid": server.pid, "tritonserver_mib": main / mib, "stubs": len(stubs),
            "stubs_mib": sum(stubs.values()) / mib, "total_mib": (main + sum(stubs.values())) / mib}


def read_stats(path: Path) -> dict:
    """The 'Aggregated' row of locust's <prefix>_stats.csv."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    agg = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if agg is None:
        raise ClientError(f"{path}: no Aggregated row (did locust send any request?)")

    def num(key):
        v = agg.get(key, "")
        return float(v) if v not in ("", "N/A") else None
    return {"requests": int(num("Request Count") or 0), "failures": int(num("Failure Count") or 0),
            "requests_per_s": num("Requests/s"), "mean_ms": num("Average Response Time"),
            "p50_ms": num("50%"), "p95_ms": num("95%"), "p99_ms": num("99%"), "max_ms": num("Max Response Time")}


def locust_command(host, users, spawn_rate, duration, csv_prefix, steps=False):
    """The locust command line; with steps, the locustfile's StepLoad shape sets users and duration."""
    exe = Path(sys.executable).with_name("locust")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "locust"]
    load = [] if steps else ["-u", str(users), "-r", str(spawn_rate), "-t", duration]
    return base + ["-f", str(LOCUSTFILE), "--headless", *load, "--host", host, "--csv", str(csv_prefix),
                   "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING"]


def parse_steps(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        steps = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ClientError(f"--steps {text!r}: expected users per step, e.g. 8,32,64,128")
    return steps


def load(args, log=print) -> dict:
    host_port, ssl = normalize_url(args.url, "http")
    host = f"{'https' if ssl else 'http'}://{host_port}"
    port = int(host_port.rsplit(":", 1)[1])
    if args.users < 1 or args.spawn_rate <= 0:
        raise ClientError("--users and --spawn-rate must be positive")
    steps = parse_steps(args.steps)
    seconds = len(steps) * args.step_seconds if steps else parse_duration(args.duration)
    # fail early and clearly: server down, unknown model
    with Classifier(host, "http", model=args.model, retries=args.retries, admin_key=args.admin_key) as clf:
        clf.classify(["warm-up text"])
    held = texts_from_args(args).take(args.limit)
    out = Path(args.out)
    texts_path = out / "texts.json"
    atomic_write_text(texts_path, json.dumps(held.texts, ensure_ascii=False))

    before = server_memory(port)
    how = (f"steps of {','.join(map(str, steps))} users, {args.step_seconds:g} s each" if steps else
           f"{args.users} users (spawn {args.spawn_rate}/s) for {args.duration}")
    log(f"locust: {how} on {host}/v2/models/{args.model}/infer, {len(held.texts)} texts from {held.source}")
    with tempfile.TemporaryDirectory(prefix=".locust-", dir=out) as tmp:
        prefix = Path(tmp) / args.model
        final = Path(tmp) / "final.json"
        env = dict(os.environ, LOAD_TEXTS=str(texts_path.resolve()), LOAD_MODEL=args.model,
                   LOAD_WAIT=str(args.wait), LOAD_SUMMARY=str(final), LOAD_RATE=str(args.rate or 0),
                   LOAD_STEPS=",".join(map(str, steps)), LOAD_STEP_SECONDS=str(args.step_seconds))
        cmd = locust_command(host, args.users, args.spawn_rate, args.duration, prefix, steps=bool(steps))
        t = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            raise ClientError(f"locust did not finish within {seconds + 120:.0f} s") from None
        elapsed = time.monotonic() - t
        if not final.is_file():
            raise ClientError(f"locust wrote no stats (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
        stats = json.loads(final.read_text())      # the final totals (the CSVs may lag by a second)
        for f in Path(tmp).glob(f"{args.model}_*.csv"):      # locust's CSVs, moved in whole
            os.replace(f, out / f.name)
    after = server_memory(port)
    doc = {"url": host, "model": args.model, "users": args.users, "spawn_rate": args.spawn_rate,
           "duration": args.duration if not steps else f"{seconds:g}s", "rate_per_user": args.rate, "wait_s": args.wait, "elapsed_s": round(elapsed, 1), "texts": len(held.texts),
           "text_source": held.source, **stats, "locust_exit_code": proc.returncode,
           "stats_csv": str(out / f"{args.model}_stats.csv"), "memory_before": before, "memory_after": after,
           "memory_growth_mib": None if not (before and after) else after["total_mib"] - before["total_mib"],
           "command": " ".join(cmd[cmd.index("-f"):]).replace(str(Path(tmp)), str(out))}
    if proc.returncode != 0 and not stats["failures"]:
        doc["locust_output"] = (proc.stdout + proc.stderr)[-2000:]
    if steps:
        from clients.load_report import plot_steps
        doc["steps"] = stats.get("steps", [])
        plot_steps(doc, out / "steps.png")
    atomic_write_json(out / "summary.json", doc, indent=1)
    atomic_write_text(out / "summary.md", render(doc))
    return doc


def _mem(m):
    if not m:
        return "n/a (server not a local process)"
    return (f"{m['total_mib']:.0f} MiB (tritonserver {m['tritonserver_mib']:.0f} + {m['stubs']} stubs "
            f"{m['stubs_mib']:.0f})")


def render(doc) -> str:
    ms = lambda x: "n/a" if x is None else f"{x:.0f} ms"
    growth = doc["memory_growth_mib"]
    who = (f"Steps of {', '.join(str(r['users']) for r in doc['steps'])} users" if doc.get("steps") else
           f"{doc['users']} users (spawn rate {doc['spawn_rate']}/s")
    pace = (f"at most {doc['rate_per_user']:g} requests/s each" if doc.get("rate_per_user") else
            f"wait {doc['wait_s']} s between a user's requests")
    lines = [f"# Load test: locust against {doc['model']}", "",
             f"{who}, {pace}{')' if not doc.get('steps') else ''} for {doc['duration']} on {doc['url']}/v2/models/"
             f"{doc['model']}/infer, one real text per request ({doc['texts']} texts from {doc['text_source']}).", "",
             f"- requests: {doc['requests']}, failures: **{doc['failures']}**"
             + (f" (of which refused as busy: {doc['refused']})" if doc.get("refused") else "")
             + f", {doc['requests_per_s'] or 0:.1f} requests/s",
             f"- latency p50 {ms(doc['p50_ms'])}, p95 {ms(doc['p95_ms'])}, p99 **{ms(doc['p99_ms'])}**, "
             f"max {ms(doc['max_ms'])}",
             f"- server memory (RSS) before: {_mem(doc['memory_before'])}",
             f"- server memory (RSS) after: {_mem(doc['memory_after'])}"
             + ("" if growth is None else f" ({growth:+.0f} MiB)"),
             f"- command: `locust {doc['command']}`"]
    for f in doc.get("errors", []):
        lines.append(f"- failure: {f['error']} x{f['occurrences']}")
    if doc.get("steps"):
        from clients.load_report import step_table
        lines += ["", step_table(doc["steps"]), "![per step: offered, answered, refused; p50/p99](steps.png)"]
    return "\n".join(lines) + "\n"


def add_arguments(p):
    p.add_argument("--url", help="server HTTP address (default http://127.0.0.1:8000)")
    p.add_argument("--model", default="bert_onnx_fp32", help="ensemble to load (default bert_onnx_fp32)")
    p.add_argument("--users", type=int, default=8, help="concurrent users (default 8)")
    p.add_argument("--spawn-rate", type=float, default=4, help="users started per second (default 4)")
    p.add_argument("--duration", default="30s", help="run time, e.g. 30s, 2m (default 30s)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds each user waits between requests (default 0)")
    p.add_argument("--steps", help="step load: users per step, e.g. 8,32,64,128 (replaces --users/--duration)")
    p.add_argument("--step-seconds", type=float, default=10.0, help="seconds per step (default 10)")
    p.add_argument("--rate", type=float, help="requests/s per user at most (locust's constant_throughput; "
                   "default: back to back, or --wait)")
    p.add_argument("--retries", type=int, default=4)
    p.add_argument("--admin-key", help="key for listing models in errors (default $TRITON_ADMIN_KEY)")
    add_text_arguments(p, limit=1000, limit_help="texts to draw from", out="reports/load")


def main(args) -> int:
    doc = load(args)
    print(render(doc))
    print(f"wrote {args.out}/summary.md, summary.json, {args.model}_stats.csv")
    failed = doc["failures"] - ((doc.get("refused") or 0) if doc.get("steps") else 0)
    if failed or doc["requests"] == 0:
        print(f"error: {failed} of {doc['requests']} requests failed", file=sys.stderr)
        return 1
    if doc["locust_exit_code"] != 0 and not (doc.get("steps") and doc["failures"]):
        print(f"error: locust exited with {doc['locust_exit_code']}:\n{doc.get('locust_output', '')}", file=sys.stderr)
        return 1
    return 0
