"""The clients install without torch: a fresh venv with only requirements-client.txt classifies texts
on the real embedded Triton (the tiny model), and imports nothing of torch, training/ or build/."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.server
def test_classify_from_a_client_only_venv(tiny_served, tmp_path):
    venv = tmp_path / "venv-client"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # --no-deps: the file pins the client's whole tree, so pip need not resolve it (a missing
    # dependency then shows as a failed import below); --no-compile: no .pyc for 76 packages
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                          "--no-compile", "-r", str(ROOT / "requirements-client.txt")],
                         capture_output=True, text=True, timeout=150)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT)

    def run(*args):
        return subprocess.run([str(python), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert run("-c", "import torch").returncode != 0          # the venv really has no torch
    out = run("-m", "clients", "classify", "--url", tiny_served.http_url, "--json",
              "i love this great happy day", "the flight was bad worst ever")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all('"label": "' in line for line in lines)
    # what the command loaded: the client, not the stages before it
    probe = run("-c", "import sys; from clients.__main__ import main; import clients.benchmark, clients.classify; "
                      "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'training', 'build'}))")
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr[-2000:]
    print(f"client-only venv: install + classify in {time.monotonic() - start:.0f} s")
