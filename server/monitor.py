"""A real Prometheus beside the embedded Triton server, with the repository's rules: `make monitor`.

    python -m server monitor [--port 9090]   start it (background) against the running server
    python -m server down                    stops it together with the server

The configuration is deploy/monitoring/prometheus.yml, the one docker compose mounts, rendered for
this machine: the `triton` job scrapes the embedded server's metrics port on loopback and the rule
files are the repository's deploy/monitoring/rules/*.yml. So the series, the recording rules and
the alerts seen here are the ones the containers and the cluster get. Prometheus itself comes from
Debian's package (server/install.py), binds 127.0.0.1 only and keeps its data, log and pidfile in
the server's state folder (.triton/prometheus/).

Debian's build serves its web UI from other Debian packages that are not taken here; the HTTP API
answers without them (`curl 'http://127.0.0.1:9090/api/v1/query?query=up'`), and `monitor` prints
what the recording rules compute. Grafana is in the compose `monitoring` profile.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from contract.files import atomic_write_json, atomic_write_text
from server import install
from server.embedded import ServerError, pid_alive, log_tail, port_in_use, read_pidfile_at

MONITORING = install.REPO_ROOT / "deploy" / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
TRITON_JOB = "triton"
DEFAULT_PORT = 9090


def rule_files() -> list[Path]:
    """The rule files the configuration names, resolved against deploy/monitoring/."""
    config = yaml.safe_load(CONFIG.read_text())
    files = sorted({p for pattern in config.get("rule_files", []) for p in MONITORING.glob(pattern)})
    if not files:
        raise ServerError(f"{CONFIG}: its rule_files {config.get('rule_files')} match no file")
    return files


def local_config(metrics_target: str, scrape_interval: str | None = None,
                 evaluation_interval: str | None = None, target_labels: dict | None = None) -> dict:
    """deploy/monitoring/prometheus.yml with the triton job pointed at `metrics_target` (host:port),
    absolute rule-file paths, and optionally other intervals or extra labels on the target (a test
    adds the pod and namespace labels that Kubernetes service discovery would)."""
    config = yaml.safe_load(CONFIG.read_text())
    jobs = [j for j in config.get("scrape_configs", []) if j.get("job_name") == TRITON_JOB]
    if len(jobs) != 1:
        raise ServerError(f"{CONFIG}: expected one scrape job named {TRITON_JOB!r}")
    target = {"targets": [metrics_target]}
    if target_labels:
        target["labels"] = dict(target_labels)
    jobs[0]["static_configs"] = [target]
    config["rule_files"] = [str(p) for p in rule_files()]
    if scrape_interval:
        config.setdefault("global", {})["scrape_interval"] = scrape_interval
    if evaluation_interval:
        config.setdefault("global", {})["evaluation_interval"] = evaluation_interval
    return config


class Prometheus:
    """One Prometheus process whose files live in <state_dir>/prometheus/."""

    def __init__(self, state_dir: str | Path, port: int = DEFAULT_PORT, host: str = "127.0.0.1"):
        self.home = Path(state_dir) / "prometheus"
        self.port, self.host = port, host
        self.pid = None
        self._proc = None

    url = property(lambda self: f"http://{self.host}:{self.port}")
    config_path = property(lambda self: self.home / "prometheus.yml")
    log_path = property(lambda self: self.home / "prometheus.log")
    pid_path = property(lambda self: self.home / "prometheus.pid")

    @classmethod
    def from_pidfile(cls, state_dir: str | Path):
        """The Prometheus recorded under state_dir if it still runs, else None (stale file removed)."""
        info = read_pidfile_at(Path(state_dir) / "prometheus" / "prometheus.pid", "prometheus")
        if info is None:
            return None
        found = cls(state_dir, info["port"], info["host"])
        found.pid = info["pid"]
        return found

    def start(self, config: dict, retention: str = "2d") -> "Prometheus":
        running = Prometheus.from_pidfile(self.home.parent)
        if running is not None:
            raise ServerError(f"Prometheus from {self.home} already runs (pid {running.pid}, {running.url}); "
                              "`python -m server down` stops it")
        if port_in_use(self.host, self.port):
            raise ServerError(f"cannot start Prometheus: port {self.port} on {self.host} is in use "
                              "(choose another with --prometheus-port or PROMETHEUS_PORT)")
        binary = install.prometheus_tool("prometheus")
        self.home.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run([str(install.prometheus_tool("promtool")), "check", "config", str(self.config_path)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerError(f"promtool rejects {self.config_path}:\n{check.stdout}{check.stderr}")
        cmd = [str(binary), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.home / 'data'}",
               f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={self.host}:{self.port}"]
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.pid = self._proc.pid
        atomic_write_json(self.pid_path, {"pid": self.pid, "host": self.host, "port": self.port})
        return self

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def wait_ready(self, timeout: float = 30.0) -> "Prometheus":
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                self._forget()
                raise ServerError(f"Prometheus exited before becoming ready; log {self.log_path}:\n"
                                  f"{log_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"Prometheus not ready after {timeout:.0f} s on {self.url}; log "
                                  f"{self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> bool:
        if self.pid is None or not self.running():
            self._forget()
            return False
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.1)
        if self.running():
            os.killpg(self.pid, signal.SIGKILL)
        self._forget()
        return True

    def _forget(self):
        try:
            if json.loads(self.pid_path.read_text()).get("pid") == self.pid:
                self.pid_path.unlink()
        except (OSError, ValueError):
            pass

    # -- the HTTP API ----------------------------------------------------------------------------
    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:
            doc = json.load(e)
        if doc.get("status") != "success":
            raise ServerError(f"Prometheus {path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list:
        """Instant query; the result vector (a list of {"metric": labels, "value": [t, "v"]})."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list:
        """Poll until `expr` returns a non-empty result; that result (empty if the time ran out)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------------------------
# what the rules compute, for `monitor` to print

def rules(kind: str | None = None) -> list[dict]:
    """Every rule of the rule files (dicts with `record` or `alert`, and `expr`), optionally only
    one kind ("record" or "alert")."""
    found = []
    for path in rule_files():
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            found += [r for r in group.get("rules", []) if kind is None or kind in r]
    return found


def summary(prom: Prometheus) -> str:
    """One line per model: every recorded series that has a value now (ratios are NaN, and left
    out, while a model has no traffic), then the alerts that fire."""
    per_model = {}
    for rule in rules("record"):
        short = rule["record"].split(":", 1)[1]
        for series in prom.query(rule["record"]):
            labels, value = series["metric"], float(series["value"][1])
            if math.isnan(value):
                continue
            extra = ",".join(v for k, v in sorted(labels.items()) if k not in ("__name__", "model", "version"))
            key = f"{labels.get('model', '-')} v{labels.get('version', '-')}"
            per_model.setdefault(key, []).append(f"{short}{'{' + extra + '}' if extra else ''}={value:.4g}")
    lines = [f"{model}: {'  '.join(values)}" for model, values in sorted(per_model.items())]
    firing = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    return "\n".join(lines or ["(no recorded series yet)"]) + f"\nalerts firing: {', '.join(firing) or 'none'}\n"
