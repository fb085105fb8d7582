"""Test helpers for anything that needs a real embedded Triton: free ports, a tiny repository, a server.

    from server.testing import free_port, write_tiny_repository, running_server
    with running_server(repo_dir, state_dir=tmp_path / "triton") as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)

Pytest fixtures (import them into a test module to use them):
    triton_server_factory   call it with a repository path (and ServerSettings overrides) to get a
                            ready server on free ports; every server it started is stopped at teardown
"""

import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from contract import pbtxt
from server import install
from server.embedded import ServerSettings, TritonServer

_handed_out = set()          # ports given out in this session are never handed out twice
_lock = threading.Lock()


def free_port(host="127.0.0.1"):
    """A port nothing listens on now and that this session has not handed out before."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port found in 100 tries")


def free_ports(n, host="127.0.0.1"):
    return [free_port(host) for _ in range(n)]


def settings_on_free_ports(model_repository, state_dir, **overrides):
    """ServerSettings on fresh ports with its own state folder (never the user's .triton/); the server
    dies with the process that starts it (a killed test run leaves no server behind)."""
    http, grpc, metrics = free_ports(3)
    overrides.setdefault("die_with_parent", True)
    return ServerSettings(model_repository=Path(model_repository), state_dir=Path(state_dir),
                          http_port=http, grpc_port=grpc, metrics_port=metrics, **overrides)


@contextmanager
def running_server(model_repository, state_dir, timeout=120.0, **overrides):
    """Install Triton if needed, start it on free ports, yield it once ready, stop it afterwards."""
    install.install_triton(log=lambda *_: None)
    with TritonServer(settings_on_free_ports(model_repository, state_dir, **overrides)) as server:
        yield server


@pytest.fixture
def triton_server_factory(tmp_path_factory):
    servers = []

    def start(model_repository, timeout=120.0, **overrides):
        install.install_triton(log=lambda *_: None)
        state = tmp_path_factory.mktemp("triton-state")
        server = TritonServer(settings_on_free_ports(model_repository, state, **overrides))
        servers.append(server)
        server.start()
        server.wait_ready(timeout)
        return server

    yield start
    for server in servers:
        server.stop()


# ----------------------------------------------------------------------------------------------
# a tiny repository: one Python-backend model on strings, and an ensemble over it

UPPER_MODEL_PY = '''\
"""Uppercases each text; also reports how many requests this execute() saw (dynamic batching)."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()   # (B, 1) bytes
            upper = np.array([[t.upper() for t in row] for row in text], dtype=np.object_)
            batch = np.full((text.shape[0], 1), len(requests), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("upper", upper),
                pb_utils.Tensor("requests_in_execute", batch),
                pb_utils.Tensor("numpy_version", np.full((text.shape[0], 1), np.__version__.encode(),
                                                         dtype=np.object_)),
            ]))
        return responses
'''

def _config(name: str, inputs: dict, outputs: dict, **fields):
    """A ModelConfig with batch size 8 and the given {tensor name: data type name} inputs and outputs."""
    mc = pbtxt.messages()
    c = mc.ModelConfig(name=name, max_batch_size=8, **fields)
    for add, tensors in ((c.input.add, inputs), (c.output.add, outputs)):
        for tensor, data_type in tensors.items():
            add(name=tensor, data_type=getattr(mc, f"TYPE_{data_type}"), dims=[1])
    return c, mc


def _upper_config():
    c, mc = _config("upper", {"text": "STRING"},
                    {"upper": "STRING", "requests_in_execute": "INT32", "numpy_version": "STRING"}, backend="python")
    c.dynamic_batching.max_queue_delay_microseconds = 2000
    c.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return c


def _ensemble_config():
    c, _ = _config("upper_ensemble", {"text": "STRING"}, {"result": "STRING"}, platform="ensemble")
    step = c.ensemble_scheduling.step.add(model_name="upper", model_version=-1)
    step.input_map["text"] = "text"
    step.output_map["upper"] = "result"
    return c


def write_tiny_repository(root):
    """Write models `upper` (Python backend, TYPE_STRING, max_batch_size 8, dynamic batching) and
    `upper_ensemble` (text -> upper -> result) under `root`; returns root."""
    root = Path(root)
    (root / "upper" / "1").mkdir(parents=True, exist_ok=True)
    (root / "upper" / "1" / "model.py").write_text(UPPER_MODEL_PY)
    (root / "upper" / pbtxt.CONFIG_FILE).write_text(pbtxt.to_text(_upper_config()))
    (root / "upper_ensemble" / "1").mkdir(parents=True, exist_ok=True)
    (root / "upper_ensemble" / pbtxt.CONFIG_FILE).write_text(pbtxt.to_text(_ensemble_config()))
    return root


__all__ = ["free_port", "free_ports", "settings_on_free_ports", "running_server",
           "triton_server_factory", "write_tiny_repository"]
