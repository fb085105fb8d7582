"""Locust users that classify real texts through one ensemble's KServe v2 HTTP endpoint.

Run it through `python -m clients load` (which writes the texts file, bounds users and duration,
reads the CSV stats and the server's memory), or by hand:

    LOAD_TEXTS=reports/load/texts.json LOAD_MODEL=bert_onnx_fp32 \
        locust -f clients/locustfile.py --headless -u 8 -r 4 -t 30s --host http://127.0.0.1:8000

Each request: POST /v2/models/<model>/infer with one text as a BYTES input `text` of shape [1, 1];
a response counts as a success only if it is HTTP 200 and carries a label and probabilities in [0, 1].
A busy server's refusal (HTTP 503, "Request timeout expired" / "Exceeds maximum queue size") is a
failure named "refused (busy)", counted apart from the others. With LOAD_SUMMARY=path, the final
totals are written there as JSON when locust quits (its CSV files are rewritten only once a second,
so they can miss the last moments of a run).

Step load: LOAD_STEPS=8,32,128 runs that many users for LOAD_STEP_SECONDS each (the StepLoad shape
below; -u, -r and -t do not apply), and LOAD_RATE=5 makes each user send 5 requests a second at
most (locust's constant_throughput) instead of back to back, so a step offers about users x rate
requests a second until the answers take longer than 1/rate. The summary then has one row per
step: users, requests sent, answered and refused per second, failures, p50/p99 of the answered.
"""
import json
import os
import random
import time

import numpy as np
from locust import HttpUser, LoadTestShape, constant, constant_throughput, events, task

MODEL = os.environ.get("LOAD_MODEL", "bert_onnx_fp32")
WAIT = float(os.environ.get("LOAD_WAIT", "0"))       # seconds between a user's requests (0: closed loop)
RATE = float(os.environ.get("LOAD_RATE", "0"))       # requests/s per user at most (0: WAIT applies)
STEPS = [int(n) for n in os.environ.get("LOAD_STEPS", "").split(",") if n.strip()]
STEP_SECONDS = float(os.environ.get("LOAD_STEP_SECONDS", "10"))
REFUSED = "refused (busy)"
BUSY_TEXT = ("Request timeout expired", "Exceeds maximum queue size")


def _texts():
    path = os.environ.get("LOAD_TEXTS")
    if not path:
        return ["what a wonderful morning, the sun is out", "my flight got cancelled again, worst airline ever"]
    with open(path, encoding="utf-8") as f:
        texts = json.load(f)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise SystemExit(f"LOAD_TEXTS={path}: expected a non-empty JSON list of strings")
    return texts


TEXTS = _texts()


class EnsembleUser(HttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(WAIT)

    @task
    def classify(self):
        body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [random.choice(TEXTS)]}],
                "outputs": [{"name": "label"}, {"name": "probabilities"}]}
        with self.client.post(f"/v2/models/{MODEL}/infer", json=body, catch_response=True,
                              name=f"/v2/models/{MODEL}/infer") as r:
            if r.status_code == 503 and any(t in r.text for t in BUSY_TEXT):
                r.failure(f"{REFUSED}: HTTP 503: {r.text[:200]}")
                return
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            try:
                out = {o["name"]: o["data"] for o in r.json()["outputs"]}
                label, probs = out["label"][0], out["probabilities"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                r.failure(f"malformed response ({type(e).__name__}: {e}): {r.text[:200]}")
                return
            if not isinstance(label, str) or not probs or not all(0.0 <= p <= 1.0 for p in probs):
                r.failure(f"bad outputs: label {label!r}, probabilities {probs}")
            else:
                r.success()


if STEPS:
    class StepLoad(LoadTestShape):
        """LOAD_STEPS users, each count held LOAD_STEP_SECONDS, all of a step's users started at once."""

        def tick(self):
            step = int(self.get_run_time() // STEP_SECONDS)
            return (STEPS[step], STEPS[step]) if step < len(STEPS) else None


_requests = []     # (start time, response ms, outcome) of every request, for the per-step rows
_start = [None]


@events.test_start.add_listener
def _started(**_):
    _start[0] = time.time()


@events.request.add_listener
def _record(response_time, exception, **_):
    outcome = "ok" if exception is None else "refused" if str(exception).startswith(REFUSED) else "failed"
    _requests.append((time.time() - response_time / 1000, response_time, outcome))


def step_rows():
    """One row per step of the StepLoad shape, by when each request was sent."""
    rows = []
    for i, users in enumerate(STEPS):
        lo = _start[0] + i * STEP_SECONDS
        mine = [r for r in _requests if lo <= r[0] < lo + STEP_SECONDS]
        answered = [ms for _, ms, outcome in mine if outcome == "ok"]
        count = lambda outcome: sum(r[2] == outcome for r in mine)
        rows.append({"step": i + 1, "users": users, "asked_per_s": users * RATE if RATE > 0 else None,
                     "sent_per_s": len(mine) / STEP_SECONDS, "answered_per_s": len(answered) / STEP_SECONDS,
                     "refused_per_s": count("refused") / STEP_SECONDS, "failed": count("failed"),
                     "p50_ms": float(np.percentile(answered, 50)) if answered else None,
                     "p99_ms": float(np.percentile(answered, 99)) if answered else None})
    return rows


@events.quitting.add_listener
def write_summary(environment, **_):
    path = os.environ.get("LOAD_SUMMARY")
    if not path:
        return
    total = environment.stats.total
    pct = lambda q: total.get_response_time_percentile(q) if total.num_requests else None
    doc = {"requests": total.num_requests, "failures": total.num_failures, "requests_per_s": total.total_rps,
           "mean_ms": total.avg_response_time, "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
           "max_ms": total.max_response_time if total.num_requests else None,
           "refused": sum(outcome == "refused" for *_, outcome in _requests),
           "errors": [{"error": str(e.error), "occurrences": e.occurrences} for e in environment.stats.errors.values()]}
    if STEPS and _start[0] is not None:
        doc["steps"] = step_rows()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
