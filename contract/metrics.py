"""The metrics our served Python models publish through Triton, by name, in one place.

The served models (build/triton_models/*.py, which carry a copy of contract/ beside model.py),
the Prometheus rules and the Grafana dashboard generator (deploy/monitoring/) all read the names
from here, so a renamed series breaks a test, not a dashboard. Standard library only; pb_utils
(importable only inside Triton's Python stub) is passed in.

Triton exports these on its metrics port next to its own `nv_*` series, with the same `model` and
`version` labels, so per-model queries can join the two.
"""
from __future__ import annotations

from dataclasses import dataclass

MODEL_LABELS = ("model", "version")
NO_LABEL = "(none)"    # a multi-label row with no label above its threshold; Prometheus drops "" values


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    kind: str                      # a pb_utils.MetricFamily kind: COUNTER | GAUGE | HISTOGRAM
    labels: tuple = MODEL_LABELS
    buckets: tuple = ()            # HISTOGRAM only: upper bounds, ascending


TEXTS_TOKENIZED = Metric(
    "bert_tokenizer_texts_total", "Texts the tokenizer model encoded.", "COUNTER")
TEXTS_TRUNCATED = Metric(
    "bert_tokenizer_truncated_texts_total",
    "Texts longer than max_length tokens: their tail was cut off and never classified.", "COUNTER")
TOKENS_PER_TEXT = Metric(
    "bert_tokenizer_tokens_per_text",
    "Tokens per text after truncation, [CLS] and [SEP] included (padding excluded).", "HISTOGRAM",
    buckets=(8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512))
PREDICTIONS = Metric(
    "bert_postprocess_predictions_total",
    f"Predicted labels; a multi-label text counts once per label it gets ({NO_LABEL!r} when none).",
    "COUNTER", labels=MODEL_LABELS + ("label",))
CLASSIFIER_EXECUTIONS = Metric(
    "bert_classifier_executions_total",
    "execute() calls of a Python-backend classifier: one per batch Triton's dynamic batcher formed.",
    "COUNTER")
CHUNK_ROWS = Metric(
    "bert_classifier_chunk_rows",
    "Rows per length-sorted chunk a Python-backend classifier ran (each trimmed to its longest text).",
    "HISTOGRAM", buckets=(1, 2, 4, 8, 16, 32, 64, 128))

TOKENIZER = (TEXTS_TOKENIZED, TEXTS_TRUNCATED, TOKENS_PER_TEXT)
POSTPROCESS = (PREDICTIONS,)
CLASSIFIER = (CLASSIFIER_EXECUTIONS, CHUNK_ROWS)
ALL = TOKENIZER + POSTPROCESS + CLASSIFIER


def exported_names(metric: Metric) -> tuple:
    """The series names Prometheus sees: a histogram is exported as _bucket, _sum and _count."""
    if metric.kind == "HISTOGRAM":
        return tuple(f"{metric.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return (metric.name,)


class ModelMetrics:
    """The series of one served model (labels model and version), created through pb_utils.

    Create it at the end of initialize() and call the record methods from execute(). The families
    are kept referenced for the model's lifetime: Triton refuses a Metric whose family is gone.
    Every series a model can emit without a label of its own exists from the start (at 0), so a
    rate() over it is defined before the first request.
    """

    def __init__(self, pb_utils, args: dict, metrics: tuple, labels=()):
        self.labels = {"model": args["model_name"], "version": str(args["model_version"])}
        self._families = {m.name: pb_utils.MetricFamily(name=m.name, description=m.help,
                                                        kind=getattr(pb_utils.MetricFamily, m.kind))
                          for m in metrics}
        self._series = {}
        for m in metrics:
            if m.labels == MODEL_LABELS:
                self._get(m)
        if PREDICTIONS in metrics:
            for label in labels:
                self._get(PREDICTIONS, label=label)

    @classmethod
    def for_classifier(cls, pb_utils, args: dict, post=None) -> "ModelMetrics":
        """A Python-backend classifier's series; with `post` (a contract.postprocess.Postprocess it
        runs itself) the predictions series too, one per label name."""
        return cls(pb_utils, args, CLASSIFIER + (POSTPROCESS if post else ()), post.labels if post else ())

    def _get(self, metric: Metric, **extra):
        key = (metric.name, tuple(sorted(extra.items())))
        if key not in self._series:
            family = self._families[metric.name]
            labels = {**self.labels, **extra}
            self._series[key] = (family.Metric(labels=labels, buckets=list(metric.buckets))
                                 if metric.kind == "HISTOGRAM" else family.Metric(labels=labels))
        return self._series[key]

    def tokenized(self, tokens_per_text, truncated: int) -> None:
        """Texts one tokenizer execution encoded (their token counts) and how many were cut."""
        tokens_per_text = list(tokens_per_text)
        self._get(TEXTS_TOKENIZED).increment(len(tokens_per_text))
        if truncated:   # each update is a round trip to the server process: one text pays for every one
            self._get(TEXTS_TRUNCATED).increment(truncated)
        histogram = self._get(TOKENS_PER_TEXT)
        for n in tokens_per_text:
            histogram.observe(n)

    def predicted(self, label_names) -> None:
        """One postprocess execution's label strings (multi-label: names joined by ',')."""
        counts = {}
        for name in label_names:
            for label in name.split(",") if name else (NO_LABEL,):
                counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            self._get(PREDICTIONS, label=label).increment(n)

    def executed(self, chunk_rows) -> None:
        """One classifier execution and the rows of each chunk it ran."""
        self._get(CLASSIFIER_EXECUTIONS).increment(1)
        histogram = self._get(CHUNK_ROWS)
        for rows in chunk_rows:
            histogram.observe(rows)


def recording_rows(run):
    """-> (run', rows): run' calls run(batch) and appends the batch's row count to rows.

    Appending to a list is safe from the worker threads that run chunks side by side; the metric
    itself is then recorded once, from execute()'s own thread.
    """
    rows = []

    def counted(batch):
        rows.append(len(batch["input_ids"]))
        return run(batch)
    return counted, rows
