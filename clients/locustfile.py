"""Locust users that classify real texts through one ensemble's KServe v2 HTTP endpoint.

Run it through `python -m clients load` (which writes the texts file, bounds users and duration,
reads the CSV stats and the server's memory), or by hand:

    LOAD_TEXTS=reports/load/texts.json LOAD_MODEL=bert_onnx_fp32 \
        locust -f clients/locustfile.py --headless -u 8 -r 4 -t 30s --host http://127.0.0.1:8000

Each request: POST /v2/models/<model>/infer with one text as a BYTES input `text` of shape [1, 1];
a response counts as a success only if it is HTTP 200 and carries a label and probabilities in [0, 1].
With LOAD_SUMMARY=path, the final totals are written there as JSON when locust quits (its CSV files
are rewritten only once a second, so they can miss the last moments of a run).
"""
import json
import os
import random

from locust import HttpUser, constant, events, task

MODEL = os.environ.get("LOAD_MODEL", "bert_onnx_fp32")
WAIT = float(os.environ.get("LOAD_WAIT", "0"))       # seconds between a user's requests (0: closed loop)


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
    wait_time = constant(WAIT)

    @task
    def classify(self):
        body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [random.choice(TEXTS)]}],
                "outputs": [{"name": "label"}, {"name": "probabilities"}]}
        with self.client.post(f"/v2/models/{MODEL}/infer", json=body, catch_response=True,
                              name=f"/v2/models/{MODEL}/infer") as r:
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
           "errors": [{"error": str(e.error), "occurrences": e.occurrences} for e in environment.stats.errors.values()]}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
