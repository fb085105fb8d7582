"""Rehearse a fault or a swap on the running server under live traffic, and print what clients saw.

    python -m server drill rollout              # traffic while the rebuilt repository is rolled out
    python -m server drill rollback             # traffic while the previous build comes back
    python -m server drill kill-stub MODEL      # kill MODEL's Python stub; time until answers return
                                                # (something must heal it: `python -m server up --watch`)

Client threads send one text per request (no retries: every error counts) to one ensemble and
record, per request, when it was sent, the outcome, and the ensemble version that answered. The
printout gives requests, failures, the versions seen and the durations; with --json, a record.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from server.admin import RolloutError, add_target_arguments, target
from server.embedded import TritonServer

TEXTS = ("what a wonderful morning, the sun is out", "my flight got cancelled again, worst airline ever",
         "not so good", "i love this great happy day")


@dataclass
class Answer:
    sent: float                  # time.monotonic() when the request left
    error: str                   # "" when answered
    version: int | None = None   # the ensemble version that answered
    probabilities: tuple = ()
    text: str = ""


class Traffic:
    """Client threads sending one text per request until stopped (or a count/time cap is hit)."""

    def __init__(self, url: str, model: str, threads: int = 2, texts=TEXTS, max_requests: int = 20000,
                 max_seconds: float = 300.0, pause: float = 0.01):
        self.url, self.model, self.texts, self.pause = url, model, tuple(texts), pause
        self.max_requests, self.deadline = max_requests, time.monotonic() + max_seconds
        self.answers: list[Answer] = []   # judged by send time: on a busy box a request sent before a
        self._stop = threading.Event()    # swap can come back well after it
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _one(self, conn: http.client.HTTPConnection, text: str) -> Answer:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]})
        sent = time.monotonic()
        try:
            conn.request("POST", f"/v2/models/{self.model}/infer", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            doc = json.loads(r.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            return Answer(sent, f"{type(e).__name__}: {e}", text=text)
        if r.status != 200:
            return Answer(sent, f"HTTP {r.status}: {doc.get('error', doc)}", text=text)
        outputs = {o["name"]: o["data"] for o in doc.get("outputs", [])}
        return Answer(sent, "", int(doc.get("model_version", 0)), tuple(outputs.get("probabilities", ())), text)

    def _run(self, index: int):
        host, _, port = self.url.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i = index
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            with self._lock:
                if len(self.answers) >= self.max_requests:
                    break
            answer = self._one(conn, self.texts[i % len(self.texts)])
            i += 1
            with self._lock:
                self.answers.append(answer)
            time.sleep(self.pause)
        conn.close()

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        """Block until n more requests were answered (or failed)."""
        target_count, deadline = len(self.answers) + n, time.monotonic() + timeout
        while len(self.answers) < target_count and time.monotonic() < deadline:
            time.sleep(0.02)

    def failures(self, since: float = 0.0) -> list[str]:
        """Errors of requests sent at or after `since`."""
        return [a.error for a in list(self.answers) if a.error and a.sent >= since]

    def ok(self) -> list[Answer]:
        return [a for a in list(self.answers) if not a.error]

    def healed_after(self, since: float) -> float | None:
        """Seconds from `since` to the first answer sent after the last failure (None: never)."""
        answers = [a for a in list(self.answers) if a.sent >= since]
        failed = [a.sent for a in answers if a.error]
        after = [a.sent for a in answers if not a.error and (not failed or a.sent > max(failed))]
        return (min(after) - since) if after else None


def python_stubs(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the server's Python-backend stubs (argv[1] is <repo>/<model>/<v>/model.py)."""
    stubs = {}
    for child in psutil.Process(server_pid).children():
        try:
            argv = child.cmdline()
        except psutil.Error:       # gone since it was listed
            continue
        if argv and argv[0].endswith("triton_python_backend_stub"):
            stubs[child.pid] = Path(argv[1]).parent.parent.name
    return stubs


# ----------------------------------------------------------------------------------------------

def _summary(traffic: Traffic, seconds: float, action: str) -> dict:
    versions = sorted({a.version for a in traffic.ok()})
    return {"action": action, "ensemble": traffic.model, "threads": len(traffic._threads),
            "requests": len(traffic.answers), "failed": len(traffic.failures()),
            "versions_seen": versions, "seconds": round(seconds, 2),
            "first_errors": traffic.failures()[:3]}


def run(args) -> int:
    if args.action == "kill-stub" and not args.model:
        raise RolloutError("kill-stub needs the model whose stub to kill, e.g. bert_onnx_fp32_model")
    admin, repo = target(args)
    from server import rollout as rolling

    with Traffic(admin.url, args.ensemble, threads=args.threads) as traffic:
        traffic.wait_for(20)
        t = time.monotonic()
        if args.action == "rollout":
            rolling.rollout(admin, repo, timeout=args.timeout, log=lambda *_: None)
        elif args.action == "rollback":
            rolling.rollback(admin, repo, timeout=args.timeout, log=lambda *_: None)
        else:
            server = TritonServer.from_pidfile(Path(args.state_dir or os.environ.get("TRITON_STATE_DIR") or ".triton"))
            if server is None:
                raise RolloutError("kill-stub needs the server started by `python -m server up` (its pid)")
            victims = [pid for pid, model in python_stubs(server.pid).items() if model == args.model]
            if not victims:
                raise RolloutError(f"no Python stub of {args.model!r} under server pid {server.pid}")
            t = time.monotonic()
            os.kill(victims[0], signal.SIGKILL)
            while traffic.healed_after(t) is None and time.monotonic() - t < args.timeout:
                time.sleep(0.05)
        seconds = time.monotonic() - t
        traffic.wait_for(20)
    result = _summary(traffic, seconds, args.action)
    if args.action == "kill-stub":
        result["killed"] = args.model
        healed = traffic.healed_after(t)
        result["seconds_to_healed"] = None if healed is None else round(healed, 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.action} under load ({result['threads']} client threads, {args.ensemble}): "
              f"{result['requests']} requests, {result['failed']} failed, versions seen {result['versions_seen']}; "
              + (f"killed {args.model}'s stub, answers again after {result['seconds_to_healed']} s"
                 if args.action == "kill-stub" else f"{args.action} took {result['seconds']:.1f} s"))
    return 0 if result["failed"] == 0 or args.action == "kill-stub" else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("rollout", "rollback", "kill-stub"))
    p.add_argument("model", nargs="?", help="kill-stub: the model whose stub is killed")
    add_target_arguments(p)
    p.add_argument("--ensemble", default="bert_onnx_fp32", help="the ensemble the traffic calls")
    p.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")

