"""Interrupted stages leave nothing half-written: training resumes, a killed build keeps the old repository.

Real processes and real signals: `python -m training fit` gets SIGTERM once its first epoch's state
is on disk and must resume to the end with `--resume`; `python -m build repository` gets SIGINT or
SIGTERM while its new tree is being assembled, and the repository it was replacing must be
byte-for-byte what it was (so a server reading it is unaffected). Every wait has a time limit.
"""
import csv
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_bert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below `folder` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def start(*args):
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout, proc=None, every=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(every)
    return False


def finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} did not finish within {timeout} s:\n{err[-2000:]}")
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_bert.make_checkpoint(tmp_path_factory.mktemp("interrupts") / "checkpoint")


# ----------------------------------------------------------------------------------------------
# training

def write_dataset(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    filler = "the flight was my day is so not i this again airline morning sun out".split()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            positive = i % 2 == 0
            words = [rng.choice(filler) for _ in range(6)] + [rng.choice(["good", "great", "happy"] if positive
                                                                         else ["bad", "awful", "worst"])]
            rng.shuffle(words)
            w.writerow([" ".join(words), "positive" if positive else "negative"])
    return path


@pytest.mark.slow
def test_training_sigterm_after_first_epoch_then_resume_completes(checkpoint, tmp_path):
    import torch

    from training.model import BertForSequenceClassification

    data = write_dataset(tmp_path / "data.csv")
    out = tmp_path / "run"
    args = ["training", "fit", "--model", str(checkpoint), "--data", str(data), "--dataset", "csv",
            "--epochs", "2", "--batch-size", "16", "--max-length", "16", "--out", str(out), "--no-progress"]
    base_before = tree_digest(checkpoint)

    proc = start(*args)
    state = out / "trainer_state.pt"
    assert wait_for(state.exists, timeout=240, proc=proc), finish(proc)[2][-2000:]
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    assert "rerun with --resume" in err.splitlines()[-1]
    saved = torch.load(state, map_location="cpu", weights_only=True)     # a whole, loadable state
    assert saved["progress"]["epoch"] == 1 and saved["progress"]["step"] < 10     # stopped inside epoch 2
    assert not (out / "checkpoint").exists() and not (out / "metrics.json").exists()   # nothing half-written
    assert not [p for p in out.iterdir() if p.name.startswith(".")]                     # no temp leftovers
    assert tree_digest(checkpoint) == base_before                                       # the base model untouched

    code, stdout, err = finish(start(*args, "--resume"))
    assert code == 0, err[-2000:]
    assert f"resuming {out} at epoch {saved['progress']['epoch'] + 1}" in err
    assert not state.exists()                              # finished: nothing left to resume
    model = BertForSequenceClassification.from_pretrained(out / "checkpoint")
    assert model.config.labels == ["negative", "positive"]
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]


def test_training_refuses_to_start_over_an_unfinished_run(checkpoint, tmp_path):
    """Without --resume a run folder holding a saved state is not silently overwritten."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "trainer_state.pt").write_bytes(b"state of an interrupted run")
    code, _, err = finish(start("training", "fit", "--model", str(checkpoint), "--data",
                                str(write_dataset(tmp_path / "d.csv", n=40)), "--dataset", "csv",
                                "--max-length", "32", "--out", str(out), "--no-progress"), timeout=180)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "--resume" in err
    assert (out / "trainer_state.pt").read_bytes() == b"state of an interrupted run"


# ----------------------------------------------------------------------------------------------
# building the repository

@pytest.fixture
def built(checkpoint, tmp_path):
    onnx_dir = tiny_bert.export_fp32(checkpoint, tmp_path / "onnx")
    repo = tmp_path / "model_repository"
    from build import repository
    repository.build_repository("cpu", checkpoint, repo, onnx_dir=onnx_dir, log=lambda *_: None)
    return repo, onnx_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_build_interrupted_midway_leaves_the_previous_repository_intact(built, checkpoint, sig):
    repo, onnx_dir = built
    before = tree_digest(repo)
    args = ["build", "repository", "--checkpoint", str(checkpoint), "--onnx-dir", str(onnx_dir),
            "--out", str(repo)]
    proc = start(*args)
    building = lambda: any(repo.parent.glob(f".{repo.name}.building-{proc.pid}"))   # noqa: E731
    assert wait_for(building, timeout=120, proc=proc), "the build never started assembling"
    proc.send_signal(sig)
    code, _, err = finish(proc, timeout=120)
    assert code != 0, "the build finished before the signal: nothing was interrupted"
    assert tree_digest(repo) == before                  # the served repository did not change at all
    if sig == signal.SIGINT:                            # KeyboardInterrupt: the build cleans up itself
        assert not building()
    # the next build removes whatever a killed one left behind and lands as the next version
    code, out, err = finish(start(*args), timeout=180)
    assert code == 0, err[-2000:]
    assert "(version 2)" in out
    assert not list(repo.parent.glob(f".{repo.name}.building-*"))
    # v2 served, v1 (the build it replaced) kept unserved for a rollback
    assert sorted(p.name for p in (repo / "tokenizer").iterdir() if p.name.isdigit()) == ["1", "2"]
