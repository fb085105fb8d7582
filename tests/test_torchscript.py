"""build/export_torchscript.py: the `torchscript` stage (meant for NVIDIA's PyTorch 24.10 container,
run here with the host's torch) and how the GPU repository takes its files or falls back to tracing."""
import json
import sys
from pathlib import Path

import pytest
import torch

from build import repository
from build.__main__ import main
from build.export_torchscript import RECORD, export_torchscript, weights_sha256
from training.model import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))
from test_repository import make_tiny_build, make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_build(tmp_path_factory.mktemp("ts"), int8=False)


def test_stage_writes_traced_files_that_match_eager_pytorch(tiny, tmp_path):
    ckpt, _ = tiny
    record = export_torchscript(ckpt, tmp_path / "torchscript", log=lambda *_: None)
    assert record["torch"] == torch.__version__ and record["weights_sha256"] == weights_sha256(ckpt)
    assert json.loads((tmp_path / "torchscript" / RECORD).read_text()) == record
    assert set(record["files"]) | set(record["failed"]) == {"fp32", "fp16"} and "fp32" in record["files"]
    assert record["files"]["fp32"]["cpu_max_abs_dlogit"] <= 1e-4
    traced = torch.jit.load(str(tmp_path / "torchscript" / "model_fp32.pt"))
    x = torch.tensor([[2, 50, 51, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]]), torch.zeros(1, 5, dtype=torch.long)
    eager = BertForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():
        assert torch.allclose(traced(*x), eager(*x).logits, atol=1e-5)


def test_gpu_repository_takes_the_container_traced_files_for_the_same_weights(tiny, tmp_path):
    ckpt, build_dir = tiny      # build_dir/onnx holds the ONNX; the stage's folder goes beside it
    export_torchscript(ckpt, build_dir / "torchscript", log=lambda *_: None)
    record = json.loads((build_dir / "torchscript" / RECORD).read_text())
    record["torch"] = "2.5.0a0+e000cf0ad9.nv24.10"     # as the PyTorch 24.10 container writes it
    (build_dir / "torchscript" / RECORD).write_text(json.dumps(record))
    lines = []
    result = repository.build_repository("gpu", ckpt, tmp_path / "repo", onnx_dir=build_dir / "onnx",
                                         log=lines.append)
    artifacts = json.loads((tmp_path / "repo" / "build.json").read_text())["artifacts"]
    assert "bert_pytorch_fp32" in result.ensembles
    assert artifacts["bert_pytorch_fp32_model"].startswith("TorchScript fp32 traced with torch 2.5.0a0")
    assert not any("traced here" in line for line in lines)
    served = tmp_path / "repo" / "bert_pytorch_fp32_model" / "1" / "model.pt"
    assert served.read_bytes() == (build_dir / "torchscript" / "model_fp32.pt").read_bytes()


def test_other_weights_fall_back_to_tracing_here_and_say_so(tiny, tmp_path):
    _, build_dir = tiny
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)     # same shapes, other weights
    export_torchscript(build_dir.parent / "checkpoint", build_dir / "torchscript", log=lambda *_: None)
    lines = []
    repository.build_repository("gpu", other, tmp_path / "repo", onnx_dir=build_dir / "onnx", log=lines.append)
    artifacts = json.loads((tmp_path / "repo" / "build.json").read_text())["artifacts"]
    assert artifacts["bert_pytorch_fp32_model"].endswith("(host fallback)")
    assert any("traced here with torch" in line and "docker compose run --rm torchscript" in line for line in lines)


def test_cli_traces_and_reports_a_bad_checkpoint_in_one_line(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    assert main(["torchscript", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ts"),
                 "--precisions", "fp32"]) == 0
    assert sorted(p.name for p in (tmp_path / "ts").iterdir()) == ["model_fp32.pt", RECORD]
    assert main(["torchscript", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "ts2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and err.count("\n") == 1
    assert not (tmp_path / "ts2").exists()
