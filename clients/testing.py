"""Test fixture for the client tests: one real embedded Triton serving a tiny-model repository.

    from clients.testing import tiny_served      # a session-wide pytest fixture
    def test_x(tiny_served): Classifier(tiny_served.http_url, model="bert_onnx_fp32") ...

The repository is what build/repository.py makes for the cpu target from a tiny random BERT
(checkpoint + fp32 ONNX + int8 ONNX, made by tests/test_repository.py's helper): ensembles
bert_pytorch_fp32, bert_onnx_fp32, bert_onnx_int8, the shared tokenizer and postprocess.
Several test modules import the fixture; the server starts once per session and stops at its end.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

LABELS = ("negative", "positive")
ENSEMBLES = ("bert_pytorch_fp32", "bert_onnx_fp32", "bert_onnx_int8")


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
    from tests.test_repository import WORDS
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
        lines.append(f"{text},{rng.choice(LABELS)}")
    path.write_text("\n".join(lines) + "\n")
    return path


_session: dict = {}


@pytest.fixture(scope="session")
def tiny_served(tmp_path_factory):
    if "served" not in _session:
        from build.repository import build_repository
        from server.embedded import admin_key
        from server.testing import running_server
        from tests.test_repository import make_tiny_build

        root = tmp_path_factory.mktemp("clients-tiny")
        checkpoint, onnx_dir = make_tiny_build(root)
        repo = root / "model_repository"
        build_repository("cpu", checkpoint, repo, onnx_dir=onnx_dir, log=lambda *_: None)
        state = root / "triton-state"
        context = running_server(repo, state, timeout=300)
        server = context.__enter__()
        _session["context"] = context
        _session["served"] = Served(server, repo, checkpoint, admin_key(state), write_texts_csv(root / "texts.csv"))
    yield _session["served"]
    context = _session.pop("context", None)     # the first module's teardown stops it, at session end
    if context is not None:
        context.__exit__(None, None, None)
