"""The Grafana dashboard for Triton and our models, built with Grafana's own typed Python SDK.

    python -m deploy.monitoring.dashboard            rewrite grafana/dashboards/triton.json
    python -m deploy.monitoring.dashboard --check    exit 1 if the committed JSON is not what this builds

The JSON is committed because docker compose (and any Grafana) provisions it as a file; this
module is its source, as build/model_configs.py is the source of the config.pbtxt files, and
tests/test_dashboard.py fails when the two differ. Panels read the recorded series of
rules/triton.rules.yml where one exists (each name is checked against that file here) and our
models' series by the names in contract/metrics.py, so nothing is spelled twice.
tests/test_monitoring_e2e.py runs every query against a real Prometheus scraping a real Triton.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from contract import metrics
from contract.files import atomic_write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "grafana" / "dashboards" / "triton.json"
RULES = HERE / "rules" / "triton.rules.yml"
UID = "bert-triton"
# the datasource uid that grafana/provisioning/datasources/prometheus.yml gives Prometheus
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="prometheus")
MODEL = 'model=~"$model"'        # the dashboard's model selector, as a label matcher
LEGEND = "{{model}} v{{version}}"


def recorded(name: str) -> str:
    """A recorded series of rules/triton.rules.yml, by name; unknown names fail the build."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    names = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    if name not in names:
        raise SystemExit(f"{RULES} records no series {name!r} (it has {sorted(names)})")
    return name


def query(expr: str, legend: str = LEGEND, ref: str = "A") -> gp.Dataquery:
    return gp.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def panel(title: str, description: str, unit: str, *queries: gp.Dataquery, width: int = 8,
          stacked: bool = False) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
         .height(8).span(width).line_width(1).fill_opacity(10 if not stacked else 60)
         .legend(gc.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"])))
    if stacked:
        p = p.stacking(gc.StackingConfig().mode(cm.StackingMode.PERCENT))
    for i, q in enumerate(queries):
        p = p.with_target(q.ref_id(chr(ord("A") + i)))
    return p


def histogram_quantile(q: float, metric: metrics.Metric) -> str:
    return (f"histogram_quantile({q}, sum by (model, le) "
            f"(rate({metric.name}_bucket[$__rate_interval])))")


def traffic() -> list:
    return [
        panel("Requests per second", "Successful and failed requests per model (sum over replicas).",
              "reqps", query(f"{recorded('model:nv_inference_requests:rate1m')}{{{MODEL}}}")),
        panel("Failures by reason", "Share of requests failing, per Triton's reason: REJECTED = a full "
              "queue refused it (capacity), BACKEND = the model erred, CANCELED = the client gave up, "
              "OTHER = e.g. a malformed request.", "percentunit",
              query(f"{recorded('model_reason:nv_inference_request_failure:ratio_rate1m')}{{{MODEL}}}",
                    "{{model}} {{reason}}")),
        panel("Pending requests", "Requests waiting in each model's queue now (sum over replicas).",
              "short", query(f"{recorded('model:nv_inference_pending_requests:sum')}{{{MODEL}}}")),
    ]


def latency() -> list:
    return [
        panel("Latency p50 / p99", "Request duration quantiles (Triton's summaries over the last "
              "minutes; the slowest replica's quantile per model).", "s",
              query(f"{recorded('model:nv_inference_request_duration_seconds:p50')}{{{MODEL}}}",
                    "p50 {{model}}"),
              query(f"{recorded('model:nv_inference_request_duration_seconds:p99')}{{{MODEL}}}",
                    "p99 {{model}}")),
        panel("Queue vs compute time per request", "Average time a request waits in the model's "
              "queue (what the autoscaler scales on) against the time it computes (input + infer + "
              "output).", "s",
              query(f"{recorded('model:nv_inference_queue_seconds_per_request:rate1m')}{{{MODEL}}}",
                    "queue {{model}}"),
              query(f"{recorded('model:nv_inference_compute_seconds_per_request:rate1m')}{{{MODEL}}}",
                    "compute {{model}}")),
        panel("Batch size", "Texts per execution: what Triton's dynamic batcher forms.", "short",
              query(f"{recorded('model:nv_inference_batch_size:rate1m')}{{{MODEL}}}")),
    ]


def resources() -> list:
    return [
        panel("CPU utilisation", "Triton's view of the CPU, per replica (0-1 of all its cores).",
              "percentunit", query("nv_cpu_utilization", "{{instance}}"), width=6),
        panel("CPU memory", "Memory in use on the replica's machine.", "bytes",
              query("nv_cpu_memory_used_bytes", "{{instance}}"), width=6),
        panel("GPU utilisation", "Per GPU (GPU replicas only).", "percentunit",
              query("nv_gpu_utilization", "{{instance}} {{gpu_uuid}}"), width=6),
        panel("GPU memory", "Memory in use per GPU (GPU replicas only).", "bytes",
              query("nv_gpu_memory_used_bytes", "{{instance}} {{gpu_uuid}}"), width=6),
    ]


def our_models() -> list:
    return [
        panel("Tokens per text", "Median and p95 of the tokens per text the tokenizer produced "
              "(after truncation), from our histogram.", "short",
              query(histogram_quantile(0.5, metrics.TOKENS_PER_TEXT), "p50 {{model}}"),
              query(histogram_quantile(0.95, metrics.TOKENS_PER_TEXT), "p95 {{model}}")),
        panel("Texts truncated", "Share of texts longer than max_length tokens: their tail was "
              "never classified.", "percentunit",
              query(recorded("model:bert_tokenizer_truncated:ratio_rate5m"))),
        panel("Predicted label mix", "Share of each predicted label over 15 minutes: a shift in the "
              "inputs shows here first.", "percentunit",
              query(recorded("model_label:bert_postprocess_predictions:share_rate15m"), "{{label}}"),
              stacked=True),
        panel("Classifier executions", "execute() calls per second of each Python-backend classifier.",
              "ops", query(f"sum by (model) (rate({metrics.CLASSIFIER_EXECUTIONS.name}{{{MODEL}}}"
                           "[$__rate_interval]))", "{{model}}"), width=12),
        panel("Classifier chunk rows", "Median rows per length-sorted chunk a classifier ran.",
              "short", query(histogram_quantile(0.5, metrics.CHUNK_ROWS), "{{model}}"), width=12),
    ]


def build() -> dict:
    model = (gd.QueryVariable("model").label("Model").datasource(DATASOURCE)
             .query("label_values(nv_inference_request_success, model)")
             .multi(True).include_all(True).all_value(".*")
             .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))
    board = (gd.Dashboard("BERT classifiers on Triton").uid(UID).tags(["triton", "bert"])
             .description("Throughput, latency, queueing, failures and resources of the Triton "
                          "replicas, and what our tokenizer, classifiers and postprocess models see. "
                          "Generated by deploy/monitoring/dashboard.py: edit that, not this.")
             .readonly().refresh("10s").time("now-30m", "now").timezone("browser")
             .tooltip(dm.DashboardCursorSync.CROSSHAIR).with_variable(model))
    ids = iter(range(1, 100))    # fixed ids: Grafana links and keeps panel state by them
    for title, panels in (("Traffic", traffic()), ("Latency", latency()),
                          ("Resources", resources()), ("Our models", our_models())):
        board = board.with_row(gd.Row(title).id(next(ids)))
        for p in panels:
            board = board.with_panel(p.id(next(ids)))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def expressions(doc: dict) -> list[str]:
    """Every PromQL expression of a dashboard JSON: panel targets and query variables."""
    exprs = [t["expr"] for p in doc.get("panels", []) for t in p.get("targets", []) if t.get("expr")]
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return [e for e in exprs if e]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.monitoring.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help=f"compare with {OUT.relative_to(HERE.parent.parent)}")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'differs from what dashboard.py builds (run it)'}")
        return 0 if same else 1
    atomic_write_text(OUT, text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
