"""A short bounded locust run against the real embedded Triton (tiny model): zero failures.

locust monkey-patches the standard library (gevent) when imported, so it only ever runs in a
subprocess here, as `python -m clients load` runs it.
"""
import json
import os
import subprocess
import sys

import pytest

from clients.load import LOCUSTFILE, parse_duration, read_stats, server_memory

ROOT = LOCUSTFILE.parents[1]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "clients", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.server
def test_short_locust_run_has_zero_failures(tiny_served, tmp_path):
    out = tmp_path / "load"
    proc = run_cli("load", "--url", f"http://{tiny_served.http_url}", "--model", "bert_onnx_fp32",
                   "--texts", str(tiny_served.texts_csv), "--users", "4", "--spawn-rate", "4",
                   "--duration", "5s", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["requests"] > 10 and doc["failures"] == 0
    assert 0 < doc["p50_ms"] <= doc["p95_ms"] <= doc["p99_ms"]
    for key in ("memory_before", "memory_after"):       # the server is local: its RSS is known
        mem = doc[key]
        assert mem["tritonserver_mib"] > 0 and mem["stubs"] == 5 and mem["total_mib"] > mem["tritonserver_mib"]
    stats = read_stats(out / "bert_onnx_fp32_stats.csv")     # locust's CSV, rewritten once a second
    assert 0 < stats["requests"] <= doc["requests"] and stats["failures"] == 0
    assert "failures: **0**" in (out / "summary.md").read_text()
    assert json.loads((out / "texts.json").read_text())[0]


@pytest.mark.server
def test_locustfile_counts_bad_answers_as_failures(tiny_served, tmp_path):
    """The users' checks can fail: against an unknown model every request is a failure."""
    exe = os.path.join(os.path.dirname(sys.executable), "locust")
    summary = tmp_path / "final.json"
    proc = subprocess.run([exe, "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2", "-t", "2s",
                           "--host", f"http://{tiny_served.http_url}", "--only-summary"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, LOAD_MODEL="bert_nope_fp32", LOAD_SUMMARY=str(summary)))
    assert proc.returncode != 0
    stats = json.loads(summary.read_text())
    assert stats["requests"] > 0 and stats["failures"] == stats["requests"]
    assert "HTTP 404" in stats["errors"][0]["error"] and "bert_nope_fp32" in stats["errors"][0]["error"]


@pytest.mark.server
def test_load_refuses_an_unknown_model_before_starting(tiny_served, tmp_path):
    proc = run_cli("load", "--url", tiny_served.http_url, "--model", "bert_nope_fp32",
                   "--texts", str(tiny_served.texts_csv), "--duration", "5s", "--out", str(tmp_path / "x"),
                   "--admin-key", tiny_served.admin_key, timeout=60)
    assert proc.returncode == 2
    assert "bert_nope_fp32" in proc.stderr and "bert_onnx_fp32" in proc.stderr
    assert not (tmp_path / "x" / "summary.json").exists()


@pytest.mark.server
def test_server_memory_finds_the_stubs(tiny_served):
    mem = server_memory(tiny_served.http_port)
    assert mem["pid"] == tiny_served.server.pid and mem["stubs"] == 5


def test_parse_duration():
    assert parse_duration("30s") == 30 and parse_duration("2m") == 120 and parse_duration("1m30s") == 90
    assert parse_duration("45") == 45
    from clients.classify import ClientError
    with pytest.raises(ClientError, match="--duration"):
        parse_duration("soon")


@pytest.mark.server
def test_step_load_reports_each_step(tiny_served, tmp_path):
    """Two steps of users sending at a fixed rate each: one report row and plot point per step."""
    out = tmp_path / "steps"
    proc = run_cli("load", "--url", f"http://{tiny_served.http_url}", "--model", "bert_onnx_fp32",
                   "--texts", str(tiny_served.texts_csv), "--steps", "2,8", "--step-seconds", "1", "--rate", "10",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    steps = doc["steps"]
    assert [(s["step"], s["users"], s["asked_per_s"]) for s in steps] == [(1, 2, 20.0), (2, 8, 80.0)]
    assert 0 < steps[0]["sent_per_s"] < steps[1]["sent_per_s"] <= 1.2 * 80     # the rate each user keeps to
    for s in steps:
        assert s["answered_per_s"] > 0 and s["refused_per_s"] == 0 and s["failed"] == 0
        assert 0 < s["p50_ms"] <= s["p99_ms"]
    md = (out / "summary.md").read_text()
    assert "| step | users | asked/s | offered (sent)/s | answered/s | refused/s |" in md and "steps.png" in md
    assert (out / "steps.png").stat().st_size > 10_000
