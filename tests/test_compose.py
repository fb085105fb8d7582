"""The GPU deployment files: docker-compose.yml and docker/*, read with PyYAML, plus the container's
entrypoint run here against the embedded Triton of the same release, and `docker compose config`
where a Docker engine answers."""

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from server import install
from server.embedded import ADMIN_HEADER, DEFAULT_STATE_DIR, RESTRICTED_APIS, http_ready, port_in_use
from server.testing import free_ports, write_tiny_repository

ROOT = install.REPO_ROOT
NGC_RELEASE_OF_TRITON = {"2.51.0": "24.10"}     # NVIDIA's release notes: container 24.10 = Triton 2.51.0


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _from_image(dockerfile):
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / dockerfile).read_text(), flags=re.M)
    assert len(froms) == 1, f"{dockerfile}: expected one FROM, got {froms}"
    return froms[0]


def _pin(requirements, package):
    m = re.search(rf"^{re.escape(package)}==(\S+)", (ROOT / requirements).read_text(), flags=re.M | re.I)
    assert m, f"{package} not pinned in {requirements}"
    return m.group(1)


def _has_gpu(service):
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count", 0) >= 1
               for d in devices)


def test_gpu_server_runs_the_same_triton_release_as_the_embedded_one(compose):
    release = NGC_RELEASE_OF_TRITON[install.TRITON_VERSION]
    triton = compose["services"]["triton"]
    assert triton["build"]["dockerfile"] == "docker/triton.Dockerfile"
    assert _from_image("docker/triton.Dockerfile") == f"nvcr.io/nvidia/tritonserver:{release}-py3"
    # TensorRT plans only load in the TensorRT that built them: builder and server share the release
    builder = compose["services"]["builder"]
    assert _from_image(builder["build"]["dockerfile"]) == f"nvcr.io/nvidia/tensorrt:{release}-py3"
    # TorchScript is read by the server's libtorch, which comes from the PyTorch container of its release
    torchscript = compose["services"]["torchscript"]
    assert _from_image(torchscript["build"]["dockerfile"]) == f"nvcr.io/nvidia/pytorch:{release}-py3"
    assert builder["profiles"] == torchscript["profiles"] == ["build"]


def test_triton_image_adds_tokenizers_and_numpy_below_2_as_pinned():
    text = (ROOT / "docker/triton.Dockerfile").read_text()
    numpy = re.search(r'"numpy==([\d.]+)"', text).group(1)
    assert int(numpy.split(".")[0]) < 2
    assert numpy == _pin("requirements.lock", "numpy")
    assert f'"tokenizers=={_pin("requirements.lock", "tokenizers")}"' in text


def test_locust_image_matches_the_pinned_locust(compose):
    assert compose["services"]["locust"]["image"] == f"locustio/locust:{_pin('requirements.txt', 'locust')}"


def test_gpu_reserved_for_server_and_builders_only(compose):
    services = compose["services"]
    assert _has_gpu(services["triton"]) and _has_gpu(services["builder"]) and _has_gpu(services["torchscript"])
    assert "deploy" not in services["locust"]


def test_error_policy_is_explicit(compose):
    """A model that fails to load leaves the others serving and the server not ready (docs/gpu.md):
    the healthcheck then marks the container unhealthy instead of it exiting into a restart loop."""
    triton = compose["services"]["triton"]
    assert "--exit-on-error=false" in triton["command"] and "--strict-readiness=true" in triton["command"]
    assert triton["restart"] == "unless-stopped"
    assert not any(a.startswith("--exit-on-error=") and a != "--exit-on-error=false" for a in triton["command"])


def test_repository_mounted_read_only(compose):
    """The folder above the repository: a build swaps a new tree in at the path, and a mount of the
    repository folder itself would keep the old tree (tests/test_repository_mount.py)."""
    triton = compose["services"]["triton"]
    (mount,) = [v for v in triton["volumes"] if v["target"] == "/workspace"]
    assert mount["source"] == "." and mount["read_only"] is True
    assert "--model-repository=/workspace/model_repository" in triton["command"]
    assert not [v for v in triton["volumes"] if "model_repository" in v["source"]]
    # nothing of the host is writable by the server
    assert all(v.get("read_only") for v in triton["volumes"])


def test_healthcheck_sends_a_real_text_after_readiness(compose):
    """server/probe.py, copied into the image: readiness first (unless --ignore-readiness), then one
    text per ensemble, because a dead Python stub leaves its model READY."""
    hc = compose["services"]["triton"]["healthcheck"]
    assert hc["test"][:2] == ["CMD", "triton-probe"] and "--ignore-readiness" not in hc["test"]
    assert "COPY server/probe.py /usr/local/bin/triton-probe" in (ROOT / "docker/triton.Dockerfile").read_text()
    assert float(hc["timeout"].rstrip("s")) > float(hc["test"][hc["test"].index("--timeout") + 1])
    assert compose["services"]["locust"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_only_triton_ports_published_on_loopback(compose):
    published = {}
    for name, service in compose["services"].items():
        for spec in service.get("ports", []):
            published.setdefault(name, []).append(spec)
    assert set(published) == {"triton", "prometheus", "grafana"}   # the last two: profile monitoring
    container_ports = {}
    for name, specs in published.items():
        for spec in specs:
            # "127.0.0.1:${TRITON_HTTP_PORT:-8000}:8000": ip, host port (overridable), container port
            m = re.fullmatch(r"(?P<ip>[^:]+):(?P<host>.+):(?P<container>\d+)", spec)
            assert m and m["ip"] == "127.0.0.1", f"{name}: {spec} is not bound to loopback"
            container_ports.setdefault(name, set()).add(int(m["container"]))
    assert container_ports == {"triton": {8000, 8001, 8002}, "prometheus": {9090}, "grafana": {3000}}


def test_locust_run_is_headless_and_bounded(compose):
    cmd = compose["services"]["locust"]["command"]
    assert "--headless" in cmd and "http://triton:8000" in cmd
    assert "--run-time" in cmd and "--users" in cmd
    assert "clients/locustfile.py" in cmd
    # the settings it passes are the ones the locustfile reads
    locustfile = (ROOT / "clients/locustfile.py").read_text()
    for name in compose["services"]["locust"]["environment"]:
        if name.startswith("LOAD_"):
            assert f'"{name}"' in locustfile, f"clients/locustfile.py does not read {name}"


def test_admin_key_secret_is_the_file_the_embedded_server_writes(compose):
    secret = compose["secrets"]["triton_admin_key"]["file"]
    assert (ROOT / secret).resolve() == (DEFAULT_STATE_DIR / "admin_key").resolve()
    assert "triton_admin_key" in compose["services"]["triton"]["secrets"]


def test_entrypoint_restricts_the_same_apis_as_the_embedded_server():
    script = (ROOT / "docker/triton-entrypoint.sh").read_text()
    assert f'apis="{",".join(RESTRICTED_APIS)}"' in script
    assert f'--http-restricted-api="${{apis}}:{ADMIN_HEADER}=${{key}}"' in script
    assert f'--grpc-restricted-protocol="${{apis}}:{ADMIN_HEADER}=${{key}}"' in script


# ----------------------------------------------------------------------------------------------
# the entrypoint for real, with the embedded tritonserver (same 2.51.0 release) standing in

def _entrypoint_env(key):
    from server.embedded import TritonServer
    server = TritonServer()
    env = server.environment()
    env["PATH"] = os.pathsep.join([str(install.tritonserver_path().parent), env["PATH"]])
    env.pop("TRITON_ADMIN_KEY", None)
    if key is not None:
        env["TRITON_ADMIN_KEY"] = key
    return env


@pytest.mark.server
def test_entrypoint_refuses_to_start_without_a_key():
    install.install_triton(log=lambda *_: None)
    out = subprocess.run(["sh", str(ROOT / "docker/triton-entrypoint.sh"), "--help"],
                         env=_entrypoint_env(None), capture_output=True, text=True, timeout=30)
    assert out.returncode == 64 and "no admin key" in out.stderr


@pytest.mark.server
def test_entrypoint_serves_with_restricted_repository_api(tmp_path):
    install.install_triton(log=lambda *_: None)
    repo = write_tiny_repository(tmp_path / "repo")
    http, grpc, metrics = free_ports(3)
    key = "entrypoint-test-key-0123456789"
    home = install.tritonserver_path().parent.parent
    cmd = ["sh", str(ROOT / "docker/triton-entrypoint.sh"), f"--model-repository={repo}",
           f"--backend-directory={home / 'backends'}", "--http-address=127.0.0.1",
           "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", f"--http-port={http}",
           f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--exit-timeout-secs=1"]
    log = open(tmp_path / "triton.log", "w")
    proc = subprocess.Popen(cmd, env=_entrypoint_env(key), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if http_ready(f"127.0.0.1:{http}") or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
        url = f"http://127.0.0.1:{http}/v2/repository/index"

        def post(headers):
            req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as e:
                return e.code, None

        assert post({})[0] != 200
        status, index = post({ADMIN_HEADER: key})
        assert status == 200 and {m["name"] for m in index} == {"upper", "upper_ensemble"}
    finally:
        proc.terminate()     # `exec` in the script: the signal reaches tritonserver itself
        proc.wait(timeout=30)
        log.close()
    deadline = time.monotonic() + 15
    while port_in_use("127.0.0.1", http) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_in_use("127.0.0.1", http)


# ----------------------------------------------------------------------------------------------

@pytest.mark.docker
def test_docker_compose_config_accepts_the_file(tmp_path):
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the docker CLI has no compose plugin: {probe.stderr.strip()[:200]}")
    env = dict(os.environ, TRITON_ADMIN_KEY="compose-config-test-key-0123")
    out = subprocess.run(["docker", "compose", "--profile", "build", "--profile", "load", "config", "--format", "json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert {"triton", "builder", "torchscript", "locust"} <= set(resolved["services"])
    ports = resolved["services"]["triton"]["ports"]
    assert {p["host_ip"] for p in ports} == {"127.0.0.1"}
