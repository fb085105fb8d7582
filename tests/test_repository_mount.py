"""docker compose's mount, reproduced on the embedded server: a server that reads the repository
through a bind mount of the folder above it sees a rebuilt repository; a bind mount of the
repository folder itself would keep showing the swapped-out tree.

A build (or rollback) swaps a whole new tree in at the repository's path (contract/
repository_versions.py). A bind mount pins the folder it was given, not its path, so compose
mounts the project folder and Triton reads <mount>/model_repository. Here Triton runs in its own
mount namespace (`unshare --user --map-root-user --mount`, no root needed) with both mounts, as
the container would.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from contract.repository_versions import swap_tree
from server import install
from server.admin import Admin
from server.embedded import ADMIN_HEADER, TritonServer, http_ready
from server.testing import settings_on_free_ports, write_tiny_repository

pytestmark = pytest.mark.server


def _can_bind_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "--bind", d, d],
                               capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_bind_mount(), reason="needs unprivileged user and mount namespaces (unshare)")
def test_a_server_reading_the_folder_above_sees_the_rebuilt_repository(tmp_path):
    project = tmp_path / "project"
    repo = write_tiny_repository(project / "model_repository")
    above, itself = tmp_path / "mnt" / "workspace", tmp_path / "mnt" / "models"     # compose now / before
    above.mkdir(parents=True)
    itself.mkdir()
    install.install_triton(log=lambda *_: None)
    settings = settings_on_free_ports(above / "model_repository", tmp_path / "state",
                                      model_control_mode="explicit", load_models=("*",), die_with_parent=False)
    server = TritonServer(settings)
    command = [a for a in server.command() if not a.startswith("--model-repository=")]
    command.append(f"--model-repository={above / 'model_repository'}")
    mounts = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
    log = open(tmp_path / "tritonserver.log", "w")
    proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mounts, "sh",
                             str(project), str(above), str(repo), str(itself), *command],
                            env=server.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not http_ready(settings.http_url):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "tritonserver.log").read_text()
            time.sleep(0.2)
        admin = Admin(settings.http_url, server.admin_headers()[ADMIN_HEADER])
        assert admin.served() == {"upper": {1}, "upper_ensemble": {1}}

        # a rebuild: a new tree (version 2 of both models) swapped in at the repository's path
        new = write_tiny_repository(tmp_path / "new")
        for model in ("upper", "upper_ensemble"):
            (new / model / "1").rename(new / model / "2")
        swap_tree(new, repo)
        in_namespace = Path(f"/proc/{proc.pid}/root")
        assert (in_namespace / str(above).lstrip("/") / "model_repository" / "upper" / "2").is_dir()
        # what a mount of the repository folder itself shows: the old tree, deleted
        assert not (in_namespace / str(itself).lstrip("/") / "upper" / "2").exists()

        admin.load("upper_ensemble")                      # explicit mode: reads the new tree
        assert admin.served() == {"upper": {2}, "upper_ensemble": {2}}
        body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["abc"]}]})
        req = urllib.request.Request(f"http://{settings.http_url}/v2/models/upper_ensemble/infer", body.encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.load(r)
        assert answer["model_version"] == "2" and answer["outputs"][0]["data"] == ["ABC"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)       # the server and its stubs: their own process group
        proc.wait(timeout=30)
        log.close()
