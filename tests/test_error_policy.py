"""The server's error policy when one model fails to load, on the real embedded Triton (2.51.0, the
release of the GPU container), as docs/gpu.md states it:

- the GPU container's policy (--exit-on-error=false, --strict-readiness=true): the server keeps
  running, the other ensembles answer, the failed model is UNAVAILABLE with its reason in the
  repository index, and /v2/health/ready stays false. `make gpu-report`'s probe then lists the
  failure and classifies through the ensembles that are READY;
- the embedded server's default (exit_on_error=True): the server exits within seconds and the
  error names the model (tests/test_server.py::test_broken_model_fails_fast_with_log_tail).
"""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from server import install
from server.embedded import ServerError, TritonServer
from server.testing import settings_on_free_ports, write_tiny_repository

sys.path.insert(0, str(Path(__file__).parent))
from test_repository import make_tiny_build  # noqa: E402

pytestmark = pytest.mark.server
KEY = "error-policy-test-key-0123456789"
BROKEN_PY = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("deliberately broken: this model never loads")

    def execute(self, requests):
        return []
'''


def add_broken_model(repo: Path, name: str = "broken_model") -> Path:
    c = mc.ModelConfig(name=name, backend="python", max_batch_size=8)
    c.input.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    c.output.add(name="out", data_type=mc.TYPE_STRING, dims=[1])
    c.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(BROKEN_PY)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(c))
    return repo


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture
def admin_key(monkeypatch):
    monkeypatch.setenv("TRITON_ADMIN_KEY", KEY)    # the server and the clients share it


def test_container_policy_keeps_serving_the_models_that_loaded(tmp_path, admin_key):
    from build import repository
    from clients import gpu_probe

    ckpt, onnx_dir = make_tiny_build(tmp_path, int8=False)
    repo = repository.build_repository("cpu", ckpt, tmp_path / "repo", onnx_dir=onnx_dir, log=lambda *_: None).out
    add_broken_model(repo)
    install.install_triton(log=lambda *_: None)
    server = TritonServer(settings_on_free_ports(repo, tmp_path / "state", exit_on_error=False))
    assert "--exit-on-error=false" in server.command()
    server.start()
    try:
        deadline = time.monotonic() + 180
        while status(f"http://{server.http_url}/v2/health/live") != 200:
            assert server.running(), server.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "server not live after 180 s"
            time.sleep(0.5)
        assert server.running()
        assert status(f"http://{server.http_url}/v2/health/ready") == 400      # strict readiness: not ready
        with pytest.raises(ServerError, match="not ready after"):
            server.wait_ready(timeout=2)                                         # bounded, says so

        models = gpu_probe.wait_for_models(server.http_url, timeout=60, log=lambda *_: None)
        assert models["ready_ensembles"] == ["bert_onnx_fp32", "bert_pytorch_fp32"]
        [failed] = models["failed"]
        assert failed["name"] == "broken_model" and failed["state"] == "UNAVAILABLE"
        assert "deliberately broken" in failed["reason"]
        assert "deliberately broken" in server.log_path.read_text()

        texts = ["i love this great happy day", "worst airline ever"]
        assert gpu_probe.main(["wait", "--url", server.http_url, "--out", str(tmp_path / "gpu"), "--timeout", "30"]) == 0
        assert gpu_probe.main(["probe", "--url", server.http_url, "--out", str(tmp_path / "gpu"), "--texts", *texts]) == 0
        environment = json.loads((tmp_path / "gpu" / "environment.json").read_text())
        assert environment["server"]["version"] == install.TRITON_VERSION
        assert environment["nvidia_smi"].get("gpus") or "nvidia-smi" in environment["nvidia_smi"]["error"]
        classified = json.loads((tmp_path / "gpu" / "classify.json").read_text())["results"]
        assert set(classified) == {"bert_onnx_fp32", "bert_pytorch_fp32"}
        labels = {m: [p["label"] for p in r["predictions"]] for m, r in classified.items()}
        assert labels["bert_onnx_fp32"] == labels["bert_pytorch_fp32"] and len(labels["bert_onnx_fp32"]) == 2
    finally:
        server.stop()


def test_embedded_default_is_to_exit_and_is_passed_explicitly(tmp_path, admin_key, monkeypatch):
    """What exiting looks like (a ServerError within seconds, naming the model's error) is
    tests/test_server.py::test_broken_model_fails_fast_with_log_tail; here: that it is the default,
    that tritonserver is told so rather than left to its own default, and that it can be changed."""
    install.install_triton(log=lambda *_: None)
    repo = write_tiny_repository(tmp_path / "repo")
    default = TritonServer(settings_on_free_ports(repo, tmp_path / "state"))
    assert default.settings.exit_on_error is True and "--exit-on-error=true" in default.command()
    monkeypatch.setenv("TRITON_EXIT_ON_ERROR", "false")
    assert "--exit-on-error=false" in TritonServer(model_repository=repo, state_dir=tmp_path / "state").command()
