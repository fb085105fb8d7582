"""A client for the BERT ensembles served by Triton, over HTTP or gRPC (its command line:
`python -m clients classify`, clients/classify.py).

    from clients.client import Classifier
    clf = Classifier("127.0.0.1:8000", protocol="http", model="bert_onnx_fp32")
    for p in clf.classify(["what a lovely day", "my flight got cancelled again"]):
        print(p.label, p.probabilities)

Every ensemble in this project takes `text` (BYTES, [1] per text) and returns `logits` and
`probabilities` ([num_labels] per text) and the predicted `label` name; tabular ensembles also take
`features` ([k] per text); the names are contract/names.py's. A text is a str (sent as UTF-8) or
bytes (sent as they are: the server reads invalid UTF-8 as U+FFFD). `tokenize` shows the token ids
the server's tokenizer makes of texts. The client reads what it needs from the server itself:
  - max_batch_size from the model config: longer lists are split into requests of at most that;
  - the label names, in index order, from the ensemble's `label_filename` through Triton's
    classification extension (asking for the top-k of `probabilities` returns "score:index:label"),
    falling back to a `labels` parameter in the config, then to LABEL_0, LABEL_1, ...
Connection failures, "unavailable" answers (server starting, a stub restarting) and a busy server's
refusals (HTTP 503 / gRPC UNAVAILABLE) are retried by tenacity with exponential backoff and jitter,
at most `retries` more times and never past `retry_time` seconds; giving up, the error names the
URL, the attempts and the last error (ServerBusy: the server kept refusing work). One Classifier
per thread (the HTTP client is not thread-safe)."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
from tenacity import (RetryError, Retrying, retry_if_exception, retry_if_result, stop_after_attempt,
                      stop_before_delay, wait_exponential, wait_random_exponential)

from clients.errors import (ClientError, InferenceFailed, ServerBusy, ServerUnreachable, UnknownModel,  # noqa: F401
                            error_message, error_status, is_busy, is_connection_error, is_restricted, is_retryable)
from contract.names import (COMPOSING_SUFFIX, ENSEMBLE_OUTPUTS, FEATURES, LABEL, LOGITS, PROBABILITIES, TEXT,
                            TEXT_INPUTS, TOKENIZER_MODEL)

PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
DEFAULT_MODEL = "bert_onnx_fp32"
ADMIN_HEADER = "triton-admin-key"   # the header the embedded server's restricted APIs expect
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"   # gRPC metadata key = this prefix + the header name

_BATCH_LIMIT = re.compile(r"batch-size must be <= (\d+)")


@dataclass
class Prediction:
    label: str                          # the ensemble's `label` output (multi-label: as the server joins them)
    probabilities: dict[str, float]     # label name -> probability, in the model's label order
    logits: list[float] = field(repr=False)

    def to_dict(self):
        return {"label": self.label, "probabilities": self.probabilities, "logits": self.logits}


def normalize_url(url: str | None, protocol: str) -> tuple[str, bool]:
    """'http://host:port' | 'host:port' | None -> ('host:port', ssl) as tritonclient wants it."""
    if protocol not in PROTOCOLS:
        raise ClientError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not url:
        return f"127.0.0.1:{DEFAULT_PORTS[protocol]}", False
    ssl = url.startswith("https://")
    url = re.sub(r"^(https?|grpc)://", "", url).rstrip("/")
    if ":" not in url.rsplit("]", 1)[-1]:
        url = f"{url}:{DEFAULT_PORTS[protocol]}"
    return url, ssl


def find_admin_key(explicit: str | None = None) -> str | None:
    """--admin-key, else $TRITON_ADMIN_KEY, else the embedded server's saved key (.triton/admin_key)."""
    if explicit:
        return explicit
    if os.environ.get("TRITON_ADMIN_KEY"):
        return os.environ["TRITON_ADMIN_KEY"]
    try:
        from server.embedded import admin_key
        return admin_key(create=False)
    except Exception:
        return None


class Classifier:
    """A client for one ensemble on one server. Not thread-safe: make one per thread."""

    def __init__(self, url: str | None = None, protocol: str = "http", model: str = DEFAULT_MODEL,
                 retries: int = 4, timeout: float = 60.0, backoff: float = 0.5, max_backoff: float = 8.0,
                 admin_key: str | None = None, verbose: bool = False, retry_time: float = 60.0):
        self.protocol = protocol
        self.host_port, ssl = normalize_url(url, protocol)
        self.url = f"{'https' if ssl else 'http' if protocol == 'http' else 'grpc'}://{self.host_port}"
        self.model = model
        self.retries, self.timeout = max(0, int(retries)), float(timeout)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.retry_time = float(retry_time)
        self.verbose = verbose
        self._admin_key = admin_key
        if protocol == "http":
            import tritonclient.http as tc
            self._client = tc.InferenceServerClient(self.host_port, ssl=ssl, connection_timeout=self.timeout,
                                                    network_timeout=self.timeout)
        else:
            import tritonclient.grpc as tc
            self._client = tc.InferenceServerClient(self.host_port)
        self._tc = tc
        self._info = None      # filled on first use: see _load()

    # -- retries ------------------------------------------------------------------------------------
    def _retrying(self, what: str, retry) -> Retrying:
        """At most `retries` more attempts, none starting past `retry_time` s; waits of backoff x 2^n
        up to max_backoff, each drawn between half and all of that ("equal jitter"): clients refused
        together come back spread out, and every wait keeps a floor that outlasts a model reload."""
        half = dict(multiplier=self.backoff / 2, max=self.max_backoff / 2)

        def log(state):
            error = state.outcome.exception() if state.outcome.failed else "not ready yet"
            print(f"[{self.url}] {what}: {error_message(error) if isinstance(error, Exception) else error}; "
                  f"retry {state.attempt_number}/{self.retries} in {state.upcoming_sleep:.1f} s")
        return Retrying(stop=stop_after_attempt(self.retries + 1) | stop_before_delay(self.retry_time),
                        wait=wait_exponential(**half) + wait_random_exponential(**half),
                        retry=retry, before_sleep=log if self.verbose else None, reraise=True)

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), retried on connection errors, refusals and transient failures."""
        start = time.monotonic()
        retrying = self._retrying(what, retry_if_exception(is_retryable))
        try:
            return retrying(fn, *args, **kwargs)
        except (self._tc.InferenceServerException, OSError) as e:   # OSError: refused, reset (HTTP client)
            err = e
        attempts = retrying.statistics.get("attempt_number", 1)
        spent = time.monotonic() - start
        detail = f"{type(err).__name__}: {error_message(err)}"
        if is_restricted(err):
            raise ClientError(f"{what} on {self.url} needs the admin key ({error_message(err)}): pass --admin-key "
                              "or set TRITON_ADMIN_KEY (`python -m server admin-key` prints it)") from err
        if not is_retryable(err):
            raise self._explain(what, err) from err
        if is_busy(err):
            raise ServerBusy(
                f"{what} on {self.url}: the server is busy and refused the request {attempts} times over "
                f"{spent:.1f} s (last error: {detail}). It sheds load past its capacity instead of queueing "
                f"without bound: send fewer requests at once, retry later (--retries, retry_time), or add "
                f"replicas (docs/reliability.md).") from err
        if is_connection_error(err):
            raise ServerUnreachable(
                f"Triton server at {self.url} is unreachable: gave up on {what} after {attempts} attempts "
                f"over {spent:.1f} s (last error: {detail}). Is it running? Start it with `make up` "
                f"(or `python -m server up`) and check the URL/--protocol.") from err
        hint = ""
        if re.search(r"stub process", error_message(err), re.I):
            hint = (" A Python-backend stub died and Triton does not restart it by itself: reload the model "
                    "(POST /v2/repository/models/<name>/load with the admin key, server in explicit model-control "
                    "mode) or restart the server (make down && make up).")
        raise InferenceFailed(f"{what} on {self.url} still failing after {attempts} attempts over "
                              f"{spent:.1f} s (last error: {detail}).{hint}") from err

    def _explain(self, what: str, err: Exception) -> ClientError:
        msg = error_message(err)
        if "unknown model" in msg.lower() or error_status(err) in ("404", "StatusCode.NOT_FOUND"):
            return UnknownModel(f"model {self.model!r} is not on the server at {self.url}; "
                                f"{self._models_sentence()}")
        return InferenceFailed(f"{what} on {self.url} failed: {msg}")

    # -- server information -------------------------------------------------------------------------
    def admin_headers(self) -> dict:
        """The key header for restricted APIs; Triton's gRPC side expects it with a fixed prefix."""
        key = find_admin_key(self._admin_key)
        if not key:
            return {}
        return {(GRPC_HEADER_PREFIX if self.protocol == "grpc" else "") + ADMIN_HEADER: key}

    def repository_index(self) -> list[dict]:
        """[{name, version, state, reason}] for every model in the server's repository (needs the admin key)."""
        index = self._call("the repository index", self._client.get_model_repository_index,
                           headers=self.admin_headers(), **({"as_json": True} if self.protocol == "grpc" else {}))
        if self.protocol == "grpc":
            index = index.get("models", [])
        return list(index)

    def list_models(self, ready_only: bool = True) -> list[str]:
        return sorted({m["name"] for m in self.repository_index()
                       if not ready_only or m.get("state", "READY") == "READY"})

    def _models_sentence(self) -> str:
        try:
            names = self.list_models()
        except ClientError as e:
            return f"could not list the server's models: {e}"
        ensembles = [n for n in names if n.startswith("bert_") and not n.endswith(COMPOSING_SUFFIX)]
        return (f"models there: {', '.join(names) or '(none)'}"
                + (f" (ensembles to classify with: {', '.join(ensembles)})" if ensembles else ""))

    def model_config(self, model: str | None = None) -> dict:
        model = model or self.model
        cfg = self._call(f"the config of {model!r}", self._client.get_model_config, model,
                         **({"as_json": True} if self.protocol == "grpc" else {}))
        return cfg.get("config", cfg) if self.protocol == "grpc" else cfg

    def model_metadata(self, model: str | None = None) -> dict:
        model = model or self.model
        return self._call(f"the metadata of {model!r}", self._client.get_model_metadata, model,
                          **({"as_json": True} if self.protocol == "grpc" else {}))

    def statistics(self, model: str | None = None) -> dict:
        """Triton's inference statistics of one model (its latest version): counts and times."""
        model = model or self.model
        stats = self._call(f"the statistics of {model!r}", self._client.get_inference_statistics, model,
                           **({"as_json": True} if self.protocol == "grpc" else {}))
        rows = stats.get("model_stats", [])
        return max(rows, key=lambda r: int(r.get("version", 0) or 0)) if rows else {}

    def _ready(self) -> bool:
        try:
            return bool(self._call("the readiness check", self._client.is_model_ready, self.model))
        except UnknownModel:
            return False

    def _index_entry(self) -> dict | None:
        """This model's row in the repository index, or None (absent, or no admin key to ask)."""
        try:
            return next((m for m in self.repository_index() if m["name"] == self.model), None)
        except ClientError:
            return None

    def _wait_ready(self):
        """Ready: go on. In the repository but (re)loading: wait with backoff. Otherwise fail at once."""
        start = time.monotonic()

        def check():   # -> None when ready, else the model's index entry (None inside when absent)
            return None if self._ready() else (self._index_entry(),)

        def loading(result):
            return result is not None and (result[0] or {}).get("state") in ("LOADING", "UNLOADING")
        try:
            result = self._retrying("the readiness check", retry_if_result(loading))(check)
        except RetryError as e:    # still loading after every attempt
            result = e.last_attempt.result()
        if result is None:
            return
        entry, spent = result[0], time.monotonic() - start
        state = f" (state {entry['state']}: {entry.get('reason') or 'no reason given'})" if entry else ""
        waited = f" after {spent:.1f} s" if spent > 1 else ""
        raise UnknownModel(f"model {self.model!r} is not loaded and ready on the server at {self.url}{state}{waited}; "
                           f"{self._models_sentence()}")

    def _load(self):
        if self._info is not None:
            return self._info
        self._wait_ready()
        cfg = self.model_config()
        inputs = {i["name"]: i for i in cfg.get("input", [])}
        outputs = {o["name"]: o for o in cfg.get("output", [])}
        missing = set(ENSEMBLE_OUTPUTS) - outputs.keys()
        if TEXT not in inputs or missing:
            raise ClientError(f"model {self.model!r} on {self.url} does not follow the ensemble contract "
                              f"(input `{TEXT}`; outputs {', '.join(ENSEMBLE_OUTPUTS)}): inputs "
                              f"{sorted(inputs)}, outputs {sorted(outputs)}")
        num_labels = int(outputs[PROBABILITIES]["dims"][-1])
        features = int(inputs[FEATURES]["dims"][-1]) if FEATURES in inputs else 0
        self._info = {"max_batch_size": int(cfg.get("max_batch_size", 0)) or 1, "num_labels": num_labels,
                      "features": features, "config": cfg}
        self._info["labels"] = self._label_names(cfg, outputs, num_labels)
        return self._info

    def _label_names(self, cfg: dict, outputs: dict, num_labels: int) -> list[str]:
        """Label names in index order: classification extension > `labels` config parameter > LABEL_i."""
        if outputs[PROBABILITIES].get("label_filename"):
            names = self._labels_from_classification(num_labels)
            if names:
                return names
        param = cfg.get("parameters", {}).get("labels", {}).get("string_value")
        if param:
            names = json.loads(param) if param.lstrip().startswith("[") else param.split(",")
            if len(names) == num_labels:
                return [str(n).strip() for n in names]
        return [f"LABEL_{i}" for i in range(num_labels)]

    def _labels_from_classification(self, num_labels: int) -> list[str] | None:
        # top-k with k = num_labels over one probe text returns every "score:index:label"
        outputs = [self._tc.InferRequestedOutput(PROBABILITIES, class_count=num_labels)]
        result = self._call(f"inference on {self.model!r} (label lookup)", self._client.infer, self.model,
                            self._inputs(["label probe"], None), outputs=outputs)
        names = {}
        for entry in result.as_numpy(PROBABILITIES).reshape(-1):
            entry = entry.decode() if isinstance(entry, bytes) else str(entry)
            _, index, name = entry.split(":", 2)
            names[int(index)] = name
        return [names[i] for i in range(num_labels)] if sorted(names) == list(range(num_labels)) else None

    @property
    def labels(self) -> list[str]:
        return self._load()["labels"]

    @property
    def max_batch_size(self) -> int:
        return self._load()["max_batch_size"]

    # -- inference ----------------------------------------------------------------------------------
    def _inputs(self, texts, features):
        text = self._tc.InferInput(TEXT, [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t if isinstance(t, bytes) else t.encode("utf-8")] for t in texts],
                                          dtype=np.object_).reshape(-1, 1))
        inputs = [text]
        if features is not None:
            f = self._tc.InferInput(FEATURES, list(features.shape), "FP32")
            f.set_data_from_numpy(features)
            inputs.append(f)
        return inputs

    @staticmethod
    def _check_texts(texts):
        if isinstance(texts, (str, bytes)):
            raise ClientError("texts must be a list of strings, not one string (wrap it: [text])")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, (str, bytes))]
        if bad:
            raise ClientError(f"texts must be strings (or UTF-8 bytes); item {bad[0]} is {type(texts[bad[0]]).__name__}")

    def _check(self, texts, features):
        self._check_texts(texts)
        k = self._load()["features"]
        if k and features is None:
            raise ClientError(f"model {self.model!r} is tabular: pass features=(n_texts, {k}) floats")
        if not k and features is not None:
            raise ClientError(f"model {self.model!r} takes no features (it is not a tabular model)")
        if features is not None:
            features = np.asarray(features, dtype=np.float32)
            if features.shape != (len(texts), k):
                raise ClientError(f"features must have shape ({len(texts)}, {k}), got {features.shape}")
        return features

    def _timeout(self) -> dict:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def infer(self, texts: list[str], features=None):
        """One request for at most max_batch_size texts -> (logits (n, L), probabilities (n, L), labels [n])."""
        features = self._check(texts, features)
        result = self._call(f"inference on {self.model!r}", self._client.infer, self.model,
                            self._inputs(texts, features),
                            outputs=[self._tc.InferRequestedOutput(n) for n in ENSEMBLE_OUTPUTS], **self._timeout())
        labels = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                  for x in result.as_numpy(LABEL).reshape(-1)]
        return result.as_numpy(LOGITS), result.as_numpy(PROBABILITIES), labels

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """What the server's tokenizer model makes of texts, in one request: input_ids,
        attention_mask, token_type_ids, each (n, T), padded together as one execution pads them."""
        self._check_texts(texts)
        result = self._call(f"tokenization on {TOKENIZER_MODEL!r}", self._client.infer, TOKENIZER_MODEL,
                            self._inputs(texts, None),
                            outputs=[self._tc.InferRequestedOutput(n) for n in TEXT_INPUTS], **self._timeout())
        return {n: result.as_numpy(n) for n in TEXT_INPUTS}

    def classify(self, texts: list[str], features=None) -> list[Prediction]:
        """Texts (any number) -> one Prediction each, sent in requests of at most max_batch_size texts."""
        features = self._check(texts, features)
        names, out, i = self.labels, [], 0
        while i < len(texts):
            n = self._info["max_batch_size"]
            try:
                logits, probs, labels = self.infer(texts[i:i + n], None if features is None else features[i:i + n])
            except InferenceFailed as e:
                # a server whose limit is below the config's (e.g. a reloaded model): obey it and go on
                limit = _BATCH_LIMIT.search(str(e))
                if limit and int(limit.group(1)) < n:
                    self._info["max_batch_size"] = int(limit.group(1))
                    continue
                raise
            for lg, pr, lb in zip(logits, probs, labels):
                out.append(Prediction(lb, {name: float(p) for name, p in zip(names, pr)}, [float(x) for x in lg]))
            i += n
        return out

    def close(self):
        try:
            self._client.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Ensembles in the order the reports list them: the reference (PyTorch fp32) first
ENSEMBLE_ORDER = ["bert_pytorch_fp32", "bert_pytorch_fp16", "bert_onnx_fp32", "bert_onnx_fp16", "bert_onnx_int8",
                  "bert_onnx_int8dyn", "bert_trt_fp16", "bert_trt_int8"]


def discover_ensembles(clf: Classifier) -> list[str]:
    """READY `bert_*` ensembles in the server's repository index (needs the admin key), reference first."""
    names = [n for n in clf.list_models() if n.startswith("bert_") and not n.endswith(COMPOSING_SUFFIX)]
    ensembles = [n for n in names if clf.model_config(n).get("platform") == "ensemble"]
    if not ensembles:
        raise ClientError(f"no READY bert_* ensemble on {clf.url} (models: {', '.join(clf.list_models()) or 'none'})")
    order = ENSEMBLE_ORDER
    return sorted(ensembles, key=lambda n: (order.index(n) if n in order else len(order), n))
