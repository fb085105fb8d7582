"""Swaps and faults on a live server: two builds whose tokenizers differ rolled out and back under
load, a rollout whose classifier does not load, a killed Python stub found by the probe and healed.

One real embedded Triton in explicit model-control mode (`--load-model '*'`) serves a tiny random
BERT repository built by build/repository.py. Only the ONNX ensemble is kept in the repository:
the PyTorch one exercises the same tokenizer and version mechanics, and its stub
(import torch) would double the module's time on 2 cores.

The two checkpoints differ in weights and in vocabulary (the same words at other ids, and a
larger vocabulary), so an answer that paired one build's tokenizer with the other's classifier
would match neither build: every answer is checked against the build its version names.
Clients here never retry unless a test says so: a failure during a swap counts as a failure.
Every loop has a request count and a time limit.
"""
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_bert  # noqa: E402

from build import repository  # noqa: E402
from clients.classify import Classifier  # noqa: E402
from contract.repository_versions import current_version  # noqa: E402
from server import heal, rollout  # noqa: E402
from server import probe as probing  # noqa: E402
from server.admin import Admin  # noqa: E402
from server.drill import Traffic, python_stubs  # noqa: E402
from server.embedded import ADMIN_HEADER  # noqa: E402
from server.testing import running_server  # noqa: E402

pytestmark = pytest.mark.server

ENSEMBLE = "bert_onnx_fp32"
TEXTS = ("good morning, the sun is out", "the flight was bad, worst airline ever",
         "i love this great happy day", "my flight got cancelled again")
ROOT = Path(__file__).resolve().parents[1]


def quiet(*_):
    pass


def build(checkpoint, out):
    """A repository with only the ONNX ensemble (see the module docstring); returns its version."""
    result = repository.build_repository("cpu", checkpoint, out, onnx_dir=checkpoint.parent / "onnx",
                                         max_batch_size=8, log=quiet)
    for name in ("bert_pytorch_fp32", "bert_pytorch_fp32_model"):
        shutil.rmtree(out / name)
    return result.version


def answers(checkpoint, tokenizer_of=None):
    """{text: probabilities} of the checkpoint in-process, its texts tokenized by its own tokenizer
    (or by `tokenizer_of`'s: what a mixed ensemble would compute)."""
    import torch
    from tokenizers import Tokenizer

    from training.model import BertForSequenceClassification

    tok = Tokenizer.from_file(str((tokenizer_of or checkpoint) / "tokenizer.json"))
    model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
    out = {}
    for text in TEXTS:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            out[text] = torch.softmax(model(ids, torch.ones_like(ids), torch.zeros_like(ids)).logits, -1)[0].numpy()
    return out


def served_versions(admin):
    return {name: sorted(v) for name, v in admin.served().items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    a = tiny_bert.make_checkpoint(tmp / "a" / "checkpoint", seed=0)
    b = tiny_bert.make_checkpoint(tmp / "b" / "checkpoint", seed=1, vocab_size=640, vocab_seed=3)
    for checkpoint in (a, b):
        tiny_bert.export_fp32(checkpoint, checkpoint.parent / "onnx")
    repo = tmp / "model_repository"
    assert build(a, repo) == 1
    with running_server(repo, tmp / "state", model_control_mode="explicit", load_models=("*",)) as server:
        admin = Admin(server.http_url, server.admin_headers()[ADMIN_HEADER])
        yield {"server": server, "admin": admin, "repo": repo, "a": a, "b": b, "tmp": tmp}


# ----------------------------------------------------------------------------------------------
# builds swapped under load

def test_rollout_and_rollback_under_load_never_pair_two_builds(setup):
    server, admin, repo, a, b = setup["server"], setup["admin"], setup["repo"], setup["a"], setup["b"]
    expected = {1: answers(a), 2: answers(b)}
    for text in TEXTS:   # a mix would show: it matches neither build
        for mixed in (answers(a, tokenizer_of=b)[text], answers(b, tokenizer_of=a)[text]):
            assert not np.allclose(mixed, expected[1][text], atol=1e-3)
            assert not np.allclose(mixed, expected[2][text], atol=1e-3)

    with Traffic(server.http_url, ENSEMBLE, threads=2, texts=TEXTS) as traffic:
        traffic.wait_for(10)
        # the rebuild lands atomically; in explicit mode the server keeps serving v1 until told
        assert build(b, repo) == 2
        traffic.wait_for(10)
        assert {x.version for x in traffic.ok()} == {1}
        started = time.monotonic()
        out = rollout.rollout(admin, repo, log=quiet)
        rolled_out = time.monotonic()
        traffic.wait_for(10)
        assert served_versions(admin) == {n: [2] for n in out["loaded"]}
        back = rollout.rollback(admin, repo, log=quiet)
        rolled_back = time.monotonic()
        traffic.wait_for(10)

    assert traffic.failures() == [], traffic.failures()[:3]
    ok = traffic.ok()
    for x in ok:                                  # every answer is exactly its own build's
        assert x.version in expected and np.allclose(x.probabilities, expected[x.version][x.text], atol=1e-4), x
    assert [x.version for x in ok if rolled_out < x.sent < rolled_out + 0.5 * (rolled_back - rolled_out)] \
        and {x.version for x in ok if rolled_out < x.sent < rolled_out + 0.5 * (rolled_back - rolled_out)} == {2}
    assert {x.version for x in ok if x.sent > rolled_back} == {1}
    assert set(out["loaded"]) == {"tokenizer", f"{ENSEMBLE}_model", ENSEMBLE}   # cpu: the classifier post-processes
    assert out["still_unloading"] == [] and back["still_unloading"] == []
    assert (back["from"], back["to"]) == (2, 1) and served_versions(admin) == {n: [1] for n in out["loaded"]}
    assert current_version(repo) == 1 and (repo / "tokenizer" / "2").is_dir()    # v2 kept, unserved
    assert rollout.rollout(admin, repo, log=quiet)["loaded"] == {}               # nothing left to do
    print(f"\nrollout v1 -> v2 {rolled_out - started:.1f} s, rollback v2 -> v1 {back['seconds']:.1f} s, under "
          f"{len(traffic.answers)} requests (2 client threads): 0 failed, none mixed")


# ----------------------------------------------------------------------------------------------
# a Python stub killed under load

def test_a_killed_stub_is_named_by_the_probe_and_healed_by_the_watcher(setup):
    server, admin = setup["server"], setup["admin"]
    victim = next(pid for pid, model in python_stubs(server.pid).items() if model == f"{ENSEMBLE}_model")
    watcher = heal.Watcher(server, interval=0.5, log=quiet)
    with Traffic(server.http_url, ENSEMBLE, threads=2, texts=TEXTS) as traffic:
        traffic.wait_for(10)
        os.kill(victim, signal.SIGKILL)
        traffic.wait_for(3, timeout=30)
        # Triton 2.51 neither restarts the stub nor marks anything unready: only a request shows it
        assert admin._request("GET", "/v2/health/ready")[0] == 200
        assert admin._request("GET", f"/v2/models/{ENSEMBLE}_model/ready")[0] == 200
        out = io.StringIO()
        assert probing.report(probing.probe(server.http_url, admin.key), out) == 1      # the probe's exit status
        assert f"failed {ENSEMBLE} " in out.getvalue()
        assert f"Stub process '{ENSEMBLE}_model_0_0' is not healthy" in out.getvalue()

        # a client that retries (backoff 0.25, 0.5, 1, ... s) rides through: its caller sees answers
        patient = {}

        def classify():
            with Classifier(server.http_url, model=ENSEMBLE, retries=8, backoff=0.25) as clf:
                patient["labels"] = [p.label for p in clf.classify(list(TEXTS[:2]))]

        retrying = threading.Thread(target=classify, daemon=True)
        retrying.start()
        watching = threading.Thread(target=watcher.run, daemon=True)
        started = time.monotonic()
        watching.start()
        while traffic.healed_after(started) is None and time.monotonic() - started < 60:
            time.sleep(0.05)
        traffic.wait_for(10)
        watcher.stop.set()
        watching.join(timeout=30)
        retrying.join(timeout=60)
    # judged once every request has come back: a request sent just before the first good answer can
    # still be failing on the dead stub while Triton swaps in the reloaded one
    healed = traffic.healed_after(started)
    assert healed is not None and healed < 30, healed
    assert len([a for a in traffic.ok() if a.sent > started + healed]) >= 10     # and it keeps answering
    assert len(patient["labels"]) == 2 and set(patient["labels"]) <= {"negative", "positive"}
    assert [e["kind"] for e in watcher.events] == ["dead", "reloaded"] and watcher.events[0]["models"] == [
        f"{ENSEMBLE}_model"]
    after = python_stubs(server.pid)
    assert victim not in after and f"{ENSEMBLE}_model" in after.values()
    print(f"\nstub killed: {len(traffic.failures())} failed requests; the watcher (every 0.5 s) had it answering "
          f"{healed:.1f} s after it started (reload {watcher.events[1]['seconds']:.1f} s)")


def test_cli_heal_and_probe_with_nothing_dead_say_so(setup):
    server = setup["server"]
    proc = subprocess.run([sys.executable, "-m", "server.rollout", "--heal", "--state-dir",
                           str(server.settings.state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "every ensemble answers", proc.stderr
    # the probe as the server images run it: the file alone, its own python, the key from a file
    key_file = setup["tmp"] / "key"
    key_file.write_text(setup["admin"].key)
    proc = subprocess.run([sys.executable, "-I", str(ROOT / "server" / "probe.py"), "--url", server.http_url,
                           "--admin-key-file", str(key_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"ok     {ENSEMBLE} ("), proc.stdout + proc.stderr


def test_rollout_cli_dry_run_prints_the_plan(setup):
    server = setup["server"]
    proc = subprocess.run([sys.executable, "-m", "server.rollout", "--dry-run", "--state-dir",
                           str(server.settings.state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to roll out" in proc.stdout


def test_a_rollout_whose_classifier_fails_to_load_rolls_back_by_itself(setup):
    """Last but one: Triton then reports the server unready (see the end)."""
    server, admin, repo = setup["server"], setup["admin"], setup["repo"]
    assert build(setup["b"], repo) == 3
    (repo / f"{ENSEMBLE}_model" / "3" / "model.onnx").write_bytes(b"not an ONNX model")
    with Traffic(server.http_url, ENSEMBLE, threads=2, texts=TEXTS) as traffic:
        traffic.wait_for(10)
        said = []
        with pytest.raises(rollout.RolledBack) as failed:
            rollout.rollout(admin, repo, log=said.append)
        traffic.wait_for(10)
    message = str(failed.value)
    assert message.startswith("rollout of v3 failed and was rolled back: the server and ")
    assert f"serve v1 again (v3 stays on disk, unserved). Cause: load '{ENSEMBLE}_model'" in message
    assert "INVALID_PROTOBUF" in message
    assert traffic.failures() == [], traffic.failures()[:3]
    assert {x.version for x in traffic.ok()} == {1}
    assert set(sum(served_versions(setup["admin"]).values(), [])) == {1} and current_version(repo) == 1
    # Triton 2.51 keeps the failed version on record: strict readiness stays false though all serve
    assert admin._request("GET", "/v2/health/ready")[0] == 400 and "/v2/health/ready stays false" in said[-1]


def test_a_contract_change_is_refused_not_half_rolled(setup, tmp_path):
    """Three labels instead of two: clients would see both contracts, so nothing is loaded."""
    admin, repo = setup["admin"], setup["repo"]
    three = tiny_bert.make_checkpoint(tmp_path / "checkpoint", labels=("a", "b", "c"), seed=2)
    tiny_bert.export_fp32(three, tmp_path / "onnx")
    before = admin.served()
    build(three, repo)
    with pytest.raises(rollout.RolloutError, match=f"ensemble '{ENSEMBLE}' changes its inputs/outputs"):
        rollout.rollout(admin, repo, log=quiet)
    assert admin.served() == before
