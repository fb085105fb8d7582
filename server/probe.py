#!/usr/bin/env python3
"""Send one real text through every ready ensemble of a Triton server; fail naming the ensemble that
does not answer.

    python -m server probe                           # the running embedded server (key from .triton/)
    triton-probe --url localhost:8000                # in the server's container (compose, Kubernetes)

Why: Triton 2.51 keeps a model READY after its Python stub dies (killed, out of memory), so
/v2/health/ready stays 200 while every request through that model fails. Only a request shows it.

Exit status: 0 every ensemble answered (or refused one request as busy: a full queue is load, not
a fault, and a probe that failed then would restart a busy server), 1 at least one ensemble failed
(each named, with the server's error), 2 the server is unreachable, not ready (unless
--ignore-readiness), or the ensembles cannot be listed. The ensembles come from the repository index, a restricted API: the admin key is
--admin-key, else $TRITON_ADMIN_KEY, else the file --admin-key-file (default: the secret docker
compose and the Kubernetes Deployment mount, /run/secrets/triton_admin_key).

Standard library only: the server images copy this file as /usr/local/bin/triton-probe and run it
with their own python3, without the project's packages.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

PROBE_TEXT = "health probe: is every model of this ensemble answering?"
ADMIN_HEADER = "triton-admin-key"
SECRET_FILE = "/run/secrets/triton_admin_key"
DEAD_STUB = re.compile(r"Stub process '([^']+)' is not healthy")
# A bounded queue refuses with HTTP 429 or 503 and these words; the request itself was fine.
_BUSY = re.compile(r"exceeds maximum queue size|request timeout expired|server is busy", re.I)


class ProbeError(RuntimeError):
    """The ensembles could not be probed at all (unreachable, not ready, no key)."""


@dataclass
class Result:
    model: str
    status: str              # "ok" | "busy" | "failed"
    seconds: float
    error: str = ""

    @property
    def dead_stub(self) -> str | None:
        """The model instance whose stub is dead (e.g. 'bert_onnx_fp32_model_0_0'), if that is the error."""
        m = DEAD_STUB.search(self.error)
        return m.group(1) if m else None

    def line(self) -> str:
        detail = f": {self.error}" if self.error else ""
        return f"{self.status:<6} {self.model} ({self.seconds * 1000:.0f} ms){detail}"


def _call(base: str, method: str, path: str, body=None, headers=None, timeout=5.0):
    """(HTTP status, decoded JSON or {'error': text}); raises ProbeError when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else {})
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"error": text}
    except (urllib.error.URLError, OSError) as e:
        raise ProbeError(f"{base}{path}: {getattr(e, 'reason', e)}") from None


def _inputs(config: dict) -> list[dict]:
    """One row per input: the probe text for strings, zeros for numbers (a tabular model's features)."""
    inputs = []
    for i in config.get("input", []):
        dims = [1 if int(d) == -1 else int(d) for d in i.get("dims", [])]
        shape = ([1] if config.get("max_batch_size", 0) else []) + dims
        n = 1
        for d in shape:
            n *= d
        dtype = i["data_type"].replace("TYPE_", "")
        if dtype == "STRING":
            inputs.append({"name": i["name"], "shape": shape, "datatype": "BYTES", "data": [PROBE_TEXT] * n})
        else:
            inputs.append({"name": i["name"], "shape": shape, "datatype": dtype, "data": [0] * n})
    return inputs


def probe_model(base: str, name: str, timeout: float = 5.0) -> Result:
    start = time.monotonic()
    try:
        status, config = _call(base, "GET", f"/v2/models/{name}/config", timeout=timeout)
        if status == 200:
            status, doc = _call(base, "POST", f"/v2/models/{name}/infer", {"inputs": _inputs(config)},
                                timeout=timeout)
        else:
            doc = config
    except ProbeError as e:        # no answer within the timeout, or the connection dropped
        return Result(name, "failed", time.monotonic() - start, str(e))
    seconds = time.monotonic() - start
    if status == 200:
        return Result(name, "ok", seconds)
    error = f"HTTP {status}: {doc.get('error', doc)}"
    busy = status in (429, 503) and _BUSY.search(error) and not DEAD_STUB.search(error)
    return Result(name, "busy" if busy else "failed", seconds, error)


def ready_ensembles(base: str, key: str | None, timeout: float = 5.0, require_ready: bool = True) -> list[str]:
    """Names of the READY ensembles, from the repository index (a restricted API: needs the key).
    require_ready: fail unless /v2/health/ready says 200 (with strict readiness: every model loaded)."""
    status, _ = _call(base, "GET", "/v2/health/ready", timeout=timeout)
    if status != 200 and require_ready:
        raise ProbeError(f"{base} is not ready (HTTP {status}): a model failed to load, or it is starting")
    headers = {ADMIN_HEADER: key} if key else {}
    status, index = _call(base, "POST", "/v2/repository/index", {"ready": True}, headers, timeout)
    if status != 200:
        raise ProbeError(f"repository index on {base}: HTTP {status}: {index.get('error')} "
                         "(pass the admin key: --admin-key, $TRITON_ADMIN_KEY or --admin-key-file)")
    names = sorted({m["name"] for m in index if m.get("state", "READY") == "READY"})
    ensembles = []
    for name in names:
        status, config = _call(base, "GET", f"/v2/models/{name}/config", timeout=timeout)
        if status == 200 and config.get("platform") == "ensemble":
            ensembles.append(name)
    if not ensembles:
        raise ProbeError(f"{base} serves no ensemble")
    return ensembles


def probe(url: str, key: str | None = None, models=None, timeout: float = 5.0,
          require_ready: bool = True) -> list[Result]:
    """Probe `models` (default: every ready ensemble) one after the other."""
    base = "http://" + re.sub(r"^https?://", "", url).rstrip("/")
    names = list(models) if models else ready_ensembles(base, key, timeout, require_ready)
    return [probe_model(base, name, timeout) for name in names]


def read_key(key=None, key_file=SECRET_FILE) -> str | None:
    if key or os.environ.get("TRITON_ADMIN_KEY"):
        return key or os.environ["TRITON_ADMIN_KEY"]
    try:
        with open(key_file) as f:
            return f.read().strip() or None
    except OSError:
        return None


def report(results: list[Result], out=sys.stdout) -> int:
    for r in results:
        print(r.line(), file=out)
    return 1 if any(r.status == "failed" for r in results) else 0


def add_arguments(p: argparse.ArgumentParser, default_url="127.0.0.1:8000") -> None:
    p.add_argument("--url", default=os.environ.get("TRITON_URL", default_url),
                   help=f"server HTTP address (default {default_url or 'the running server'})")
    p.add_argument("--model", action="append", help="probe this model only (repeatable; default: every ready ensemble)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--admin-key", help="key for the repository index (default $TRITON_ADMIN_KEY, then --admin-key-file)")
    p.add_argument("--admin-key-file", default=SECRET_FILE, help=f"default {SECRET_FILE}")
    p.add_argument("--ignore-readiness", action="store_true",
                   help="probe the ready ensembles even when the server reports not ready (a liveness check: a "
                        "model that failed to load is readiness' business, a restart would not fix it)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="triton-probe", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        results = probe(args.url, read_key(args.admin_key, args.admin_key_file), args.model, args.timeout,
                        require_ready=not args.ignore_readiness)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
