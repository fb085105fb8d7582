"""The embedded Triton server for real: a tiny Python-backend model + ensemble, HTTP and gRPC,
the key-protected repository API, port clashes, and up/status/down across processes."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import install
from server.embedded import ADMIN_HEADER, PortInUseError, ServerError, TritonServer, port_in_use
from server.testing import free_ports, running_server, settings_on_free_ports, write_tiny_repository

pytestmark = pytest.mark.server

REPO_ROOT = install.REPO_ROOT
TEXTS = np.array([[b"hello"], [b"w\xc3\xa9rld"], [b""]], dtype=np.object_)   # utf-8, empty string
EXPECTED = [b"HELLO", b"W\xc3\xa9RLD", b""]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    return write_tiny_repository(tmp_path_factory.mktemp("tiny_repo"))


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
    with running_server(tiny_repo, tmp_path_factory.mktemp("state")) as s:
        yield s


def _http_infer(url, model, output):
    with httpclient.InferenceServerClient(url) as client:
        inp = httpclient.InferInput("text", list(TEXTS.shape), "BYTES")
        inp.set_data_from_numpy(TEXTS)
        return client.infer(model, [inp]).as_numpy(output)


def _post(url, headers=None):
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_install_is_idempotent_and_matches_this_python():
    install.install_triton(log=lambda *_: None)
    exe = install.tritonserver_path()
    before = exe.stat().st_ino
    messages = []
    install.install_triton(log=messages.append)
    assert exe.stat().st_ino == before and "already installed" in messages[0]   # nothing recopied
    stub = install.TRITON_HOME / "backends/python/triton_python_backend_stub"
    wheel_stub = install.pytriton_dir() / "tritonserver/python_backend_stubs" / install.stub_version()
    assert stub.read_bytes() == (wheel_stub / "triton_python_backend_stub").read_bytes()
    assert not list(install.TRITON_HOME.parent.glob("tritonserver.tmp-*"))     # no leftovers


def test_ready_and_bound_to_loopback_only(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_ready()
        assert client.is_model_ready("upper") and client.is_model_ready("upper_ensemble")
        assert client.get_server_metadata()["version"] == install.TRITON_VERSION
    assert server.settings.host == "127.0.0.1"


def test_http_infer_model_and_ensemble(server):
    assert _http_infer(server.http_url, "upper", "upper").ravel().tolist() == EXPECTED
    assert _http_infer(server.http_url, "upper_ensemble", "result").ravel().tolist() == EXPECTED


def test_stub_runs_this_venvs_numpy(server):
    # the stub must use the venv's python3 (numpy<2), not whatever python3 the system has
    versions = _http_infer(server.http_url, "upper", "numpy_version").ravel()
    assert {v.decode() for v in versions} == {np.__version__}
    assert int(np.__version__.split(".")[0]) < 2


def test_grpc_infer_ensemble(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        inp = grpcclient.InferInput("text", list(TEXTS.shape), "BYTES")
        inp.set_data_from_numpy(TEXTS)
        result = client.infer("upper_ensemble", [inp]).as_numpy("result")
    assert result.ravel().tolist() == EXPECTED


def test_batch_over_max_batch_size_is_refused_with_reason(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        inp = httpclient.InferInput("text", [9, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"x"]] * 9, dtype=np.object_))
        with pytest.raises(InferenceServerException, match="batch"):
            client.infer("upper", [inp])


def test_repository_api_needs_admin_key_over_http(server):
    url = f"http://{server.http_url}/v2/repository/index"
    status, body = _post(url)
    assert status != 200 and ADMIN_HEADER in body
    status, body = _post(url, {ADMIN_HEADER: "wrong-key-wrong-key"})
    assert status != 200
    status, body = _post(url, server.admin_headers())
    assert status == 200
    assert {m["name"] for m in json.loads(body)} == {"upper", "upper_ensemble"}
    # inference and model config stay open: clients and perf_analyzer carry no key
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/upper/config") as r:
        assert json.load(r)["max_batch_size"] == 8


def test_repository_api_needs_admin_key_over_grpc(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        key = server.admin_headers()[ADMIN_HEADER]
        with pytest.raises(InferenceServerException, match="restricted"):   # gRPC wants the prefixed name
            client.get_model_repository_index(headers={ADMIN_HEADER: key})
        index = client.get_model_repository_index(headers=server.admin_headers())
    assert {m.name for m in index.models} == {"upper", "upper_ensemble"}


def test_admin_key_file_is_private(server):
    if os.environ.get("TRITON_ADMIN_KEY"):
        pytest.skip("TRITON_ADMIN_KEY is set, no key file is written")
    key_file = server.settings.state_dir / "admin_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() not in server.log_path.read_text()   # never logged


def test_perf_analyzer_measures_the_ensemble_without_the_key(server):
    # perf_analyzer reads model config, metadata and statistics: all must stay open for it
    install.install_perf_analyzer(log=lambda *_: None)      # idempotent; `make setup` did it already
    out = subprocess.run([str(install.perf_analyzer_path()), "-m", "upper_ensemble", "-u", server.grpc_url,
                          "-i", "grpc", "-b", "2", "--concurrency-range", "2", "--measurement-interval", "300",
                          "--max-trials", "3", "--stability-percentage", "100"],
                         env=install.perf_analyzer_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Throughput:" in out.stdout and "Composing models" in out.stdout


def test_second_server_on_same_port_fails_naming_the_port(server, tiny_repo, tmp_path):
    settings = settings_on_free_ports(tiny_repo, tmp_path / "state2")
    settings.http_port = server.settings.http_port      # clash on HTTP only
    clash = TritonServer(settings)
    with pytest.raises(PortInUseError, match=f"HTTP port {server.settings.http_port}"):
        clash.start()
    assert clash.pid is None                            # nothing was started
    assert server.ready()                               # and the first server is untouched


def test_unknown_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServerError, match="does-not-exist"):
        TritonServer(settings_on_free_ports(tmp_path / "does-not-exist", tmp_path / "s")).start()


def test_broken_model_fails_fast_with_log_tail(tmp_path):
    repo = write_tiny_repository(tmp_path / "repo")
    (repo / "upper" / "1" / "model.py").write_text("raise ImportError('broken on purpose')\n")
    server = TritonServer(settings_on_free_ports(repo, tmp_path / "state"))
    with pytest.raises(ServerError, match="broken on purpose"):
        with server:
            pass
    assert not server.running()
    assert not (tmp_path / "state" / "server.pid").exists()


def _cli(*args, state_dir, check=True):
    out = subprocess.run([sys.executable, "-m", "server", *args, "--state-dir", str(state_dir)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"python -m server {' '.join(args)} -> {out.returncode}\n{out.stdout}{out.stderr}")
    return out


def test_cli_up_explicit_load_status_down_across_processes(tiny_repo, tmp_path):
    state = tmp_path / "state"
    http, grpc, metrics = free_ports(3)
    _cli("up", "--model-repository", str(tiny_repo), "--http-port", str(http), "--grpc-port", str(grpc),
         "--metrics-port", str(metrics), "--model-control-mode", "explicit", "--load-model", "upper",
         state_dir=state)
    try:
        info = json.loads((state / "server.pid").read_text())
        assert info["http_port"] == http
        status = _cli("status", state_dir=state)
        assert "READY" in status.stdout and "upper" in status.stdout
        # explicit mode: only `upper` is loaded; loading the ensemble needs the key
        url = f"http://127.0.0.1:{http}/v2/repository/models/upper_ensemble/load"
        assert _post(url)[0] != 200
        key = _cli("admin-key", state_dir=state).stdout.strip()
        assert _post(url, {ADMIN_HEADER: key})[0] == 200
        assert _http_infer(f"127.0.0.1:{http}", "upper_ensemble", "result").ravel().tolist() == EXPECTED
        again = _cli("up", "--http-port", str(http), state_dir=state)       # idempotent
        assert "already up" in again.stdout
    finally:
        down = _cli("down", state_dir=state)
    assert "stopped" in down.stdout
    assert not any(port_in_use("127.0.0.1", p) for p in (http, grpc, metrics))
    assert not (state / "server.pid").exists()
    assert _cli("status", state_dir=state, check=False).returncode == 3


def test_cli_up_on_taken_port_exits_nonzero_naming_it(server, tiny_repo, tmp_path):
    out = _cli("up", "--model-repository", str(tiny_repo), "--http-port", str(server.settings.http_port),
               state_dir=tmp_path / "state", check=False)
    assert out.returncode != 0
    assert f"HTTP port {server.settings.http_port}" in out.stderr


def test_stop_frees_ports(tiny_repo, tmp_path):
    with running_server(tiny_repo, tmp_path / "state", exit_timeout_secs=1) as s:
        ports = (s.settings.http_port, s.settings.grpc_port, s.settings.metrics_port)
        assert all(port_in_use("127.0.0.1", p) for p in ports)
        # an open keep-alive connection must not keep the ports busy after stop()
        client = httpclient.InferenceServerClient(s.http_url)
        assert client.is_server_live()
    assert not any(port_in_use("127.0.0.1", p) for p in ports)
    assert not s.running()
    client.close()
