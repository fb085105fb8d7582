"""Faults and swaps on a live server: a killed Python stub, and a rebuilt repository rolled out under load.

One real embedded Triton in explicit model-control mode (`--load-model '*'`) serves a tiny random
BERT repository built by build/repository.py. Only the ONNX ensemble is kept in the repository:
the PyTorch one exercises the same tokenizer and version mechanics, and its stub
(import torch) would double the module's time on 2 cores.

Clients here never retry unless a test says so: a failure during a swap counts as a failure.
Every loop has a request count and a time limit.
"""
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).parent))
import tiny_bert  # noqa: E402
from procs import python_stubs  # noqa: E402

from build import repository  # noqa: E402
from clients.classify import Classifier, InferenceFailed  # noqa: E402
from server import rollout  # noqa: E402
from server.testing import running_server  # noqa: E402

pytestmark = pytest.mark.server

ENSEMBLE = "bert_onnx_fp32"
TEXT = "good morning, the sun is out"
ROOT = Path(__file__).resolve().parents[1]


def build(checkpoint, onnx_dir, out):
    """A repository with only the ONNX ensemble (see the module docstring); returns its version."""
    result = repository.build_repository("cpu", checkpoint, out, onnx_dir=onnx_dir, max_batch_size=8,
                                         log=lambda *_: None)
    for name in ("bert_pytorch_fp32", "bert_pytorch_fp32_model"):
        shutil.rmtree(out / name)
    return result.version


def expected_probabilities(checkpoint, text):
    """What the checkpoint says in-process (no padding; the tokenizer file the server uses)."""
    import torch
    from tokenizers import Tokenizer

    from training.model import BertForSequenceClassification

    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    ids = torch.tensor([tok.encode(text).ids])
    model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return torch.softmax(model(ids, torch.ones_like(ids), torch.zeros_like(ids)).logits, -1)[0].numpy()


class Traffic:
    """Client threads sending one text per request until stopped (or a count/time cap is hit)."""

    def __init__(self, url, threads=2, max_requests=5000, max_seconds=240.0, pause=0.01):
        self.url, self.pause = url, pause
        self.max_requests, self.deadline = max_requests, time.monotonic() + max_seconds
        # (monotonic time the request was *sent*, "ok" | error text, version, probabilities): judged by
        # send time, since on a busy box a request sent before a heal/rollout can come back well after it
        self.results = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        with httpclient.InferenceServerClient(self.url, network_timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                with self._lock:
                    if len(self.results) >= self.max_requests:
                        return
                inp = httpclient.InferInput("text", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[TEXT.encode()]], dtype=np.object_))
                sent = time.monotonic()
                try:
                    r = client.infer(ENSEMBLE, [inp])
                    row = (sent, "ok", int(r.get_response()["model_version"]),
                           r.as_numpy("probabilities")[0])
                except Exception as e:            # noqa: BLE001 - every failure is recorded
                    row = (sent, str(e), None, None)
                with self._lock:
                    self.results.append(row)
                time.sleep(self.pause)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)

    def wait_for(self, n, timeout=60.0):
        """Block until n more requests were answered (or failed)."""
        target, deadline = len(self.results) + n, time.monotonic() + timeout
        while len(self.results) < target and time.monotonic() < deadline:
            time.sleep(0.05)

    def failures(self, since=0.0):
        """Errors of requests sent at or after `since`."""
        return [e for t, e, _, _ in self.results if e != "ok" and t >= since]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    old = tiny_bert.make_checkpoint(tmp / "old" / "checkpoint", seed=0)
    new = tiny_bert.make_checkpoint(tmp / "new" / "checkpoint", seed=1)
    dirs = {c: tiny_bert.export_fp32(c, c.parent / "onnx") for c in (old, new)}
    repo = tmp / "model_repository"
    assert build(old, dirs[old], repo) == 1
    with running_server(repo, tmp / "state", model_control_mode="explicit", load_models=("*",)) as server:
        admin = rollout.Admin(server.http_url, server.admin_headers()[rollout.ADMIN_HEADER])
        yield {"server": server, "admin": admin, "repo": repo, "old": old, "new": new, "onnx": dirs, "tmp": tmp}


# ----------------------------------------------------------------------------------------------
# a Python stub killed during load

def test_killed_stub_is_reported_and_heal_brings_the_model_back(setup):
    server, admin, repo = setup["server"], setup["admin"], setup["repo"]
    stubs = python_stubs(server.pid)
    victim = next(pid for pid, model in stubs.items() if model == f"{ENSEMBLE}_model")
    with Traffic(server.http_url) as traffic:
        traffic.wait_for(20)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        traffic.wait_for(3, timeout=30)

        # reported clearly: HTTP 500 naming the ensemble and the dead stub; Triton 2.51 neither
        # restarts the stub nor marks the model unready
        errors = traffic.failures(since=killed_at)
        assert errors, "requests after the kill should fail until the model is reloaded"
        assert all(f"in ensemble '{ENSEMBLE}'" in e and f"Stub process '{ENSEMBLE}_model_0_0' is not healthy" in e
                   for e in errors), errors[:3]
        assert victim not in python_stubs(server.pid)
        with httpclient.InferenceServerClient(server.http_url) as c:
            assert c.is_server_ready() and c.is_model_ready(f"{ENSEMBLE}_model")

        # a client that retries a little gives up with a message naming the cause and its attempts
        with Classifier(server.http_url, model=ENSEMBLE, retries=1, backoff=0.1) as impatient:
            with pytest.raises(InferenceFailed, match=r"still failing after 2 attempts .*is not healthy"):
                impatient.infer([TEXT])

        # the documented recovery: probe, find the dead stub, reload that model from its files
        healed = rollout.heal(admin, repo, log=lambda *_: None)
        recovered_at = time.monotonic()
        assert healed["healed"] == [f"{ENSEMBLE}_model"]
        traffic.wait_for(10)
    assert not traffic.failures(since=recovered_at + 0.5), traffic.failures(since=recovered_at)[:3]
    after = python_stubs(server.pid)
    assert sorted(after.values()) == sorted(stubs.values()) and victim not in after   # a new stub, same set
    print(f"\nstub kill: {len(traffic.failures(since=killed_at))} failed requests; heal took "
          f"{healed['seconds']:.1f} s; kill -> recovered {recovered_at - killed_at:.1f} s")


def test_a_retrying_client_rides_through_a_stub_kill(setup):
    """Classifier's backoff (0.5, 1, 2, 4 s) outlasts a heal: its caller sees answers, no error."""
    server, admin, repo = setup["server"], setup["admin"], setup["repo"]
    victim = next(pid for pid, model in python_stubs(server.pid).items() if model == "tokenizer")
    os.kill(victim, signal.SIGKILL)
    result = {}

    def patient():
        with Classifier(server.http_url, model=ENSEMBLE, retries=6, backoff=0.5) as clf:
            result["predictions"] = clf.classify([TEXT, "worst flight ever"])

    t = threading.Thread(target=patient)
    t.start()
    time.sleep(1.0)                       # let it fail once or twice, then heal (a watchdog would)
    assert rollout.heal(admin, repo, log=lambda *_: None)["healed"] == ["tokenizer"]
    t.join(timeout=120)
    assert [p.label in ("negative", "positive") for p in result["predictions"]] == [True, True]


def test_cli_heal_with_nothing_dead_says_so(setup):
    import subprocess
    server = setup["server"]
    proc = subprocess.run([sys.executable, "-m", "server.rollout", "--heal", "--state-dir",
                           str(server.settings.state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "every ensemble answers", proc.stderr


# ----------------------------------------------------------------------------------------------
# a rebuilt repository rolled out under load

def test_rebuilt_repository_rolls_out_with_zero_failed_requests(setup):
    server, admin, repo = setup["server"], setup["admin"], setup["repo"]
    old_p = expected_probabilities(setup["old"], TEXT)
    new_p = expected_probabilities(setup["new"], TEXT)
    assert not np.allclose(old_p, new_p, atol=1e-3)          # the two builds are told apart
    with Traffic(server.http_url) as traffic:
        traffic.wait_for(20)
        # the rebuild lands atomically; in explicit mode the server keeps serving v1 until told
        assert build(setup["new"], setup["onnx"][setup["new"]], repo) == 2
        traffic.wait_for(10)
        assert {v for _, e, v, _ in traffic.results if e == "ok"} == {1}
        summary = rollout.rollout(admin, repo, log=lambda *_: None)
        swapped_at = time.monotonic()
        traffic.wait_for(20)
    ok = [(t, v, p) for t, e, v, p in traffic.results if e == "ok"]
    assert traffic.failures() == [], traffic.failures()[:3]
    assert len(ok) >= 50
    assert {v for _, v, _ in ok} == {1, 2}
    for t, v, p in ok:                       # each answer is the old or the new model, never garbage
        assert np.allclose(p, old_p, atol=1e-4) or np.allclose(p, new_p, atol=1e-4)
    after = [(v, p) for t, v, p in ok if t > swapped_at]
    assert after and all(v == 2 and np.allclose(p, new_p, atol=1e-4) for v, p in after)
    assert set(summary["loaded"]) == {"tokenizer", f"{ENSEMBLE}_model", ENSEMBLE}   # cpu: no postprocess model
    assert summary["still_unloading"] == []
    states = {(m["name"], m["version"]): m["state"] for m in admin.index()}
    for name in summary["loaded"]:           # the old version is unloaded, the new one serves
        assert states[(name, "2")] == "READY" and states.get((name, "1")) in (None, "UNAVAILABLE")
    print(f"\nrollout: {len(traffic.results)} requests during the swap, 0 failed; "
          f"loads took {summary['seconds']:.1f} s")
    assert rollout.rollout(admin, repo, log=lambda *_: None)["loaded"] == {}     # idempotent


def test_rollout_cli_dry_run_prints_the_plan(setup):
    import subprocess
    server, repo = setup["server"], setup["repo"]
    proc = subprocess.run([sys.executable, "-m", "server.rollout", "--dry-run", "--state-dir",
                           str(server.settings.state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to roll out" in proc.stdout


def test_a_contract_change_is_refused_not_half_rolled(setup, tmp_path):
    """Three labels instead of two: old and new steps cannot be mixed, so nothing is loaded."""
    admin, repo = setup["admin"], setup["repo"]
    three = tiny_bert.make_checkpoint(tmp_path / "checkpoint", labels=("a", "b", "c"), seed=2)
    before = admin.served()
    build(three, tiny_bert.export_fp32(three, tmp_path / "onnx"), repo)
    with pytest.raises(rollout.RolloutError, match=f"ensemble '{ENSEMBLE}' changes its inputs/outputs"):
        rollout.rollout(admin, repo, log=lambda *_: None)
    assert admin.served() == before
