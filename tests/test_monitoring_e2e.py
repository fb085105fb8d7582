"""The monitoring path end to end on CPU: a real embedded Triton serving a cpu repository built by
build/repository.py, scraped by a real Prometheus (Debian's, from `make setup`) with the
repository's rules, under real traffic.

1. Our models' series (contract/metrics.py) count exactly what was sent: texts, truncations,
   predictions, classifier rows.
2. Every PromQL expression that the Grafana dashboard JSON, the rule files (records, and each
   alert's series before its threshold) and the prometheus-adapter rules use returns a non-empty
   result. The expressions are read from those files, so a query naming a series that Triton or
   our models do not export, or a recorded series no rule writes, fails here. GPU series exist
   only where Triton sees a GPU: on a machine without one those expressions are listed as skipped.
"""
import json
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_repository import make_tiny_build  # noqa: E402

from build import repository  # noqa: E402
from contract import metrics  # noqa: E402
from server import install, monitor  # noqa: E402
from server.testing import free_port, running_server  # noqa: E402

pytestmark = pytest.mark.server

ROOT = install.REPO_ROOT
DASHBOARD = ROOT / "deploy/monitoring/grafana/dashboards/triton.json"
ADAPTER = ROOT / "deploy/k8s/prometheus-adapter/values.yaml"
# the labels Kubernetes service discovery puts on a pod's series, which the adapter rule keys on
POD_LABELS = {"namespace": "bert-test", "pod": "triton-test-0"}
ALERT_FORM = re.compile(r"^(?P<series>.+?)\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?[-+0-9.eE]+\s*$", re.S)
SHORT = ["what a wonderful morning", "my flight got cancelled again", "meh", "great game last night"]
LONG = ["worst airline ever " * 200, "the longest review of a phone ever written " * 100]


def scrape(url) -> dict:
    """Triton's /metrics as {(name, sorted label items): value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for m in re.finditer(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", text, re.M):
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m[2] or "")))
        out[(m[1], labels)] = float(m[3])
    return out


def total(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def infer(server, model, texts):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1))
    return client.infer(model, [x]).as_numpy("label")


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """Server + Prometheus after traffic; yields (prometheus, metrics delta, what was sent)."""
    install.install_prometheus(log=lambda *_: None)
    tmp = tmp_path_factory.mktemp("monitoring")
    ckpt, onnx_dir = make_tiny_build(tmp)
    repo = repository.build_repository("cpu", ckpt, tmp / "model_repository", onnx_dir=onnx_dir,
                                       log=lambda *_: None)
    with running_server(repo.out, state_dir=tmp / "state") as server:
        target = f"127.0.0.1:{server.settings.metrics_port}"
        config = monitor.local_config(target, scrape_interval="1s", evaluation_interval="1s",
                                      target_labels=POD_LABELS)
        with monitor.Prometheus(tmp / "state", free_port()).start(config) as prom:
            prom.wait_ready()
            before = scrape(server.metrics_url)
            sent = {"texts": 0, "long": 0, "per_model": {}}

            def send(model, texts):
                labels = infer(server, model, texts)
                assert len(labels) == len(texts)
                return model, len(texts), sum(t in LONG for t in texts)

            batches = [(e, SHORT + LONG) for e in repo.ensembles]
            singles = [("bert_onnx_fp32", [t]) for t in SHORT * 4]   # concurrent: batched by Triton
            with ThreadPoolExecutor(8) as pool:
                for model, n, long in pool.map(lambda a: send(*a), batches + singles):
                    sent["texts"] += n
                    sent["long"] += long
                    sent["per_model"][f"{model}_model"] = sent["per_model"].get(f"{model}_model", 0) + n
            after = scrape(server.metrics_url)
            delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
            # one evaluation of every recording rule after two scrapes with traffic in them
            for rule in monitor.rules("record"):
                assert prom.wait_for(rule["record"], timeout=30), f"{rule['record']} never recorded"
            yield prom, delta, sent


def test_our_model_metrics_count_what_was_sent(observed):
    _, delta, sent = observed
    assert total(delta, metrics.TEXTS_TOKENIZED.name) == sent["texts"]
    assert total(delta, metrics.TEXTS_TRUNCATED.name) == sent["long"] > 0
    assert total(delta, f"{metrics.TOKENS_PER_TEXT.name}_count") == sent["texts"]
    assert total(delta, metrics.PREDICTIONS.name) == sent["texts"]
    for model, n in sent["per_model"].items():
        assert total(delta, f"{metrics.CHUNK_ROWS.name}_sum", model=model) == n, model
        assert 1 <= total(delta, metrics.CLASSIFIER_EXECUTIONS.name, model=model) <= n, model
    # the histograms' buckets: every long text lands above the short ones' bucket
    shortest = min(metrics.TOKENS_PER_TEXT.buckets)
    assert total(delta, f"{metrics.TOKENS_PER_TEXT.name}_bucket", le=str(float(shortest))) < sent["texts"]
    # every series carries the model and version labels Triton's own series carry
    ours = {n for m in metrics.ALL for n in metrics.exported_names(m)}
    labelled = [dict(ls) for (n, ls), _ in delta.items() if n in ours]
    assert labelled and all({"model", "version"} <= set(ls) for ls in labelled)


def _dashboard_expressions():
    from deploy.monitoring.dashboard import expressions

    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v.get("allValue") or ".*" for v in doc["templating"]["list"]}
    out = []
    for expr in expressions(doc):
        expr = re.sub(r"\$__(rate_)?interval", "1m", expr)
        expr = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m[1]], expr)
        label_values = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr)
        out.append((f"dashboard: {expr}", label_values[1] if label_values else expr,
                    label_values[2] if label_values else None))
    return out


def _rule_expressions():
    out = []
    for rule in monitor.rules():
        if "record" in rule:
            out.append((f"record {rule['record']}", rule["expr"], None))
        else:
            m = ALERT_FORM.match(rule["expr"].strip())
            assert m, f"alert {rule['alert']}: expr is not '<series> <op> <threshold>': {rule['expr']}"
            out.append((f"alert {rule['alert']}", m["series"], None))
    return out


def _adapter_expressions():
    out = []
    for rule in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]:
        series = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule["seriesQuery"])[1]
        matchers = ",".join(f'{k}="{v}"' for k, v in POD_LABELS.items())
        query = (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
                 .replace("<<.GroupBy>>", "pod"))
        out += [(f"adapter seriesQuery {rule['name']['as']}", rule["seriesQuery"], "pod"),
                (f"adapter metricsQuery {rule['name']['as']}", query, "pod")]
    return out


def test_every_expression_of_dashboard_rules_and_autoscaler_returns_data(observed):
    import torch

    prom, _, _ = observed
    checks = _dashboard_expressions() + _rule_expressions() + _adapter_expressions()
    assert len(checks) > 30
    gpu = torch.cuda.is_available()
    empty, skipped = [], []
    for where, expr, label in checks:
        names = set(re.findall(r"\b(?:nv|bert)_\w+", expr))
        if not gpu and names and all(n.startswith("nv_gpu_") for n in names):
            skipped.append(where)   # Triton exports GPU series only where it sees a GPU
            continue
        result = prom.query(expr)
        if not result or (label and not all(label in s["metric"] for s in result)):
            empty.append(f"{where}: {expr.strip()}")
    assert not empty, "expressions with no data on a real Triton:\n" + "\n".join(empty)
    assert gpu or len(skipped) == 2, skipped


def test_the_autoscaler_metric_is_a_number_per_pod(observed):
    """What the HPA reads: one finite value per pod (0 for an idle model, never NaN)."""
    prom, _, _ = observed
    (_, query, _), = [c for c in _adapter_expressions() if "metricsQuery" in c[0]]
    result = prom.query(query)
    assert [s["metric"] for s in result] == [{"pod": POD_LABELS["pod"]}]
    value = float(result[0]["value"][1])
    assert 0 <= value < 10e6, value
