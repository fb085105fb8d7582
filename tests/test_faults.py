"""Faults around the server process: a test run killed with its server still up, and a Python stub
dying under a server in mode none that `python -m server up --watch` must restart.

Both serve server/testing.py's tiny repository (one Python model on strings and an ensemble over
it), which loads in about a second; the BERT-level behaviour is tests/test_rollout.py's.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from server import probe as probing
from server.drill import python_stubs
from server.embedded import TritonServer, admin_key
from server.testing import free_ports, write_tiny_repository

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids, timeout: float) -> float | None:
    """Seconds until every pid is gone, or None if some still run at the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not any(alive(p) for p in pids):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def read_until(proc, needle: str, timeout: float) -> list[str]:
    """Lines of proc's stdout up to the one containing `needle` (fails at the deadline or EOF)."""
    lines, deadline = [], time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line.rstrip())
            if needle in line:
                return lines
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"no {needle!r} within {timeout:.0f} s; output:\n" + "\n".join(lines))


def test_a_server_dies_with_the_process_that_started_it(tmp_path):
    """CI kills the run (SIGKILL: no teardown, no atexit): the server and its stubs follow."""
    repo = write_tiny_repository(tmp_path / "repo")
    starter = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
               "from server.testing import running_server\n"
               f"with running_server({str(repo)!r}, {str(tmp_path / 'state')!r}) as s:\n"
               "    print(s.pid, flush=True)\n"
               "    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", starter], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    server_pid, stubs = None, []
    try:
        server_pid = int(read_until(proc, "", timeout=120)[-1])
        stubs = list(python_stubs(server_pid))
        assert stubs and alive(server_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        gone = wait_gone([server_pid, *stubs], timeout=30)
    finally:
        proc.kill()
        for pid in (server_pid, *stubs):           # never leave an orphan behind, whatever failed
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert gone is not None, "the server or a stub outlived the process that started it"
    print(f"\nstarter killed: server and {len(stubs)} stub(s) gone {gone:.1f} s later")


def test_up_watch_restarts_a_mode_none_server_whose_stub_died(tmp_path):
    repo = write_tiny_repository(tmp_path / "repo")
    http, grpc, metrics = free_ports(3)
    state = tmp_path / "state"
    server = [sys.executable, "-m", "server"]
    where = ["--state-dir", str(state)]
    up = subprocess.Popen([*server, "up", "--model-repository", str(repo), *where, "--http-port", str(http),
                           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--exit-timeout-secs", "1",
                           "--watch", "0.5"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = int(read_until(up, "Triton ready (pid", timeout=120)[-1].split("(pid ")[1].split(")")[0])
        read_until(up, "watching", timeout=30)
        (victim,) = python_stubs(first)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        lines = read_until(up, "restarted the server", timeout=90)
        restarted = time.monotonic() - killed
        assert any("dead Python stub: upper" in line for line in lines), lines
        assert "mode none cannot reload upper" in lines[-1]
        second = int(lines[-1].split("(pid ")[1].split(")")[0])
        assert second != first and not alive(first)
        assert [r.status for r in probing.probe(f"127.0.0.1:{http}", admin_key(state))] == ["ok"]
        up.send_signal(signal.SIGINT)                 # stops watching; the server stays up
        assert "the server keeps running" in "".join(read_until(up, "stopped watching", timeout=30))
        assert up.wait(timeout=30) == 0 and alive(second)
    finally:
        up.kill()
        running = TritonServer.from_pidfile(state)
        if running is not None:
            running.stop()
    assert not alive(second)
    print(f"\nmode none: stub killed, the watcher (every 0.5 s) restarted the server in {restarted:.1f} s")


def test_a_hanging_test_fails_at_its_timeout(tmp_path, pytestconfig):
    """pytest-timeout turns a hang into a failed test (the suite's default comes from pyproject.toml)."""
    assert float(pytestconfig.getini("timeout")) >= 300 and pytestconfig.getini("timeout_method") == "signal"
    (tmp_path / "test_hang.py").write_text("import time\n\n\ndef test_hangs():\n    time.sleep(120)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_hang.py", "-q", "-p", "no:cacheprovider",
                           "-o", "timeout=1"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Failed: Timeout (>1.0s) from pytest-timeout" in proc.stdout, proc.stdout
    assert time.monotonic() - start < 30


def test_the_probe_counts_a_full_queue_as_busy_not_dead(tmp_path):
    """A liveness probe must not restart a server for being busy: Triton 2.51 refuses a request past
    the queue bound with HTTP 503 "Exceeds maximum queue size", which the probe reports as busy."""
    import io
    import json
    import threading
    import urllib.error
    import urllib.request

    from contract import pbtxt
    from server.testing import running_server

    repo = write_tiny_repository(tmp_path / "repo")
    model = repo / "upper" / "1" / "model.py"                 # 0.3 s per execution, a queue of one
    model.write_text(model.read_text().replace("        responses = []\n",
                                               "        import time\n        time.sleep(0.3)\n        responses = []\n"))
    for name in ("upper", "upper_ensemble"):
        config = pbtxt.read(repo / name)
        config.max_batch_size = 1
        if name == "upper":
            config.dynamic_batching.default_queue_policy.max_queue_size = 1
        (repo / name / "config.pbtxt").write_text(pbtxt.to_text(config))
    with running_server(repo, tmp_path / "state", exit_timeout_secs=1) as server:
        stop = threading.Event()
        body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]})

        def flood():
            while not stop.is_set():
                try:
                    urllib.request.urlopen(urllib.request.Request(
                        f"http://{server.http_url}/v2/models/upper_ensemble/infer", body.encode(), method="POST"),
                        timeout=30).read()
                except urllib.error.HTTPError:
                    pass

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        seen, deadline = [], time.monotonic() + 15
        try:
            while "busy" not in {r.status for r in seen} and time.monotonic() < deadline:
                seen += probing.probe(server.http_url, admin_key(server.settings.state_dir))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    busy = [r for r in seen if r.status == "busy"]
    assert busy and "HTTP 503" in busy[0].error and "Exceeds maximum queue size" in busy[0].error, seen
    assert {r.status for r in seen} <= {"ok", "busy"} and probing.report(busy, out=io.StringIO()) == 0
