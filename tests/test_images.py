"""The GPU images, checked without Docker: each chains NGC's entrypoint, each installs exactly what the
step it runs imports (that step run here under an import guard, as far as it runs without a GPU),
and the build context (.dockerignore) holds docker/ and the health probe only: no venv, artifacts or
admin key."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NGC_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
# every Dockerfile of the repository, for what reaches its build context (deploy/ has two more)
ALL_DOCKERFILES = DOCKERFILES + sorted((ROOT / "deploy").rglob("*Dockerfile"))
# what NVIDIA's images provide that our steps import (not installed by us)
PROVIDED = {"builder.Dockerfile": {"tensorrt"}, "torchscript.Dockerfile": {"torch"}}


def instructions(dockerfile: Path, keyword: str) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.strip().upper().startswith(keyword + " ")]


def pip_installs(dockerfile: Path) -> dict[str, str]:
    runs = " ".join(r for r in instructions(dockerfile, "RUN") if "pip install" in r)
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)==([0-9.]+)"', runs))


def locked(package: str) -> str:
    m = re.search(rf"^{re.escape(package)}==(\S+)", (ROOT / "requirements.lock").read_text(), flags=re.M | re.I)
    assert m, f"{package} is not in requirements.lock"
    return m.group(1)


def test_there_are_the_three_images():
    assert [d.name for d in DOCKERFILES] == ["builder.Dockerfile", "torchscript.Dockerfile", "triton.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_every_image_chains_ngcs_entrypoint(dockerfile):
    [entrypoint] = instructions(dockerfile, "ENTRYPOINT")
    argv = json.loads(entrypoint)          # exec form: no shell between NGC's script and ours
    assert argv[0] == NGC_ENTRYPOINT and len(argv) > 1, argv
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if service.get("build", {}).get("dockerfile") == f"docker/{dockerfile.name}":
            assert service.get("entrypoint", [NGC_ENTRYPOINT])[0] == NGC_ENTRYPOINT, name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_installs_are_pinned_as_locked_and_without_dependencies(dockerfile):
    installs = pip_installs(dockerfile)
    assert installs, f"{dockerfile.name} installs nothing"
    assert {p: locked(p) for p in installs} == installs
    runs = [r for r in instructions(dockerfile, "RUN") if "pip install" in r]
    assert all("--no-deps" in r for r in runs)      # what pip would add is not what the step imports


def _guarded(tmp_path, allow: set[str], code: str) -> dict:
    record = tmp_path / "imports.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "import_guard.py"), "--allow", ",".join(sorted(allow)),
                          "--record", str(record), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(record.read_text())


def test_builder_installs_only_what_the_plan_step_imports(tmp_path):
    from build_fixtures import make_run

    from build.artifacts import load_examples
    from build.export_onnx import build_onnx

    run = make_run(tmp_path / "run")
    test = load_examples(run / "split.json", parts=["test"])["test"]
    build_onnx(run / "checkpoint", run / "onnx", test, ("fp32",), max_length=32, packed=False, log=lambda *_: None)
    dockerfile = ROOT / "docker" / "builder.Dockerfile"
    installed = set(pip_installs(dockerfile))
    # every command of the step, as far as it runs without TensorRT, and what verification runs first
    code = f"""
from build.__main__ import main
onnx, engines = {str(run / 'onnx')!r}, {str(tmp_path / 'engines')!r}
assert main(["engines", "--onnx", onnx, "--out", engines, "--precisions", "fp16", "--print-commands"]) == 0
assert main(["engines", "--onnx", onnx, "--out", engines, "--precisions", "fp16"]) == 2      # no TensorRT here
assert main(["verify-plans", "--onnx", onnx, "--engines", engines]) == 0                      # says so, exits 0
import build.plan_runner
from build.artifacts import Encoder
from build.reference import read_reference
from build.verify import batched_logits, compare
from build.verify_plans import report_plans
examples, reference, meta = read_reference(onnx)
logits = batched_logits(lambda feeds: reference[:len(feeds["input_ids"])], examples, Encoder(onnx, meta["max_length"]))
compare("fp16", engines + "/model_fp16.plan", logits, reference, examples.labels)
"""
    record = _guarded(tmp_path, installed | PROVIDED[dockerfile.name], code)
    assert record["refused"] == []
    assert set(record["imported"]) - PROVIDED[dockerfile.name] == installed == {"numpy", "tokenizers"}


def test_torchscript_image_installs_only_what_the_trace_step_imports(tmp_path):
    from test_repository import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "checkpoint")
    dockerfile = ROOT / "docker" / "torchscript.Dockerfile"
    installed = set(pip_installs(dockerfile))
    code = f"""
from build.__main__ import main
assert main(["torchscript", "--checkpoint", {str(ckpt)!r}, "--out", {str(tmp_path / 'ts')!r}]) == 0
"""
    record = _guarded(tmp_path, installed | PROVIDED[dockerfile.name], code)
    assert record["refused"] == [] and (tmp_path / "ts" / "model_fp32.pt").is_file()
    assert set(record["imported"]) - PROVIDED[dockerfile.name] == installed == {"safetensors"}


def _third_party_imports(path: Path, seen: set) -> set:
    """Top-level packages a module imports (anywhere: some load lazily), following our contract/ modules."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        for name in names:
            if name.partition(".")[0] == "contract":
                module = ROOT / (name.replace(".", "/") + ".py")
                if module.is_file() and module not in seen:
                    seen.add(module)
                    found |= _third_party_imports(module, seen)
            elif name.partition(".")[0] not in sys.stdlib_module_names:
                found.add(name.partition(".")[0])
    return found


def test_triton_image_installs_what_the_gpu_repositorys_python_models_import():
    imported, seen = set(), set()
    for model in ("tokenizer.py", "postprocess.py"):     # the Python models of the GPU repository
        imported |= _third_party_imports(ROOT / "build" / "triton_models" / model, seen)
    assert imported - {"triton_python_backend_utils"} == set(pip_installs(ROOT / "docker" / "triton.Dockerfile"))


# ---- the build context --------------------------------------------------------------------------
def _pattern(p: str) -> re.Pattern:
    out, i = "", 0
    while i < len(p):
        if p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out)


def in_context(path: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last rule matching the path or one of its parent
    folders decides; `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    keep = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = _pattern(os.path.normpath(rule.lstrip("!")).lstrip("/"))
        if any(pattern.fullmatch(c) for c in candidates):
            keep = negate
    return keep


def dockerignore(dockerfile: Path | None = None) -> list[str]:
    """The rules Docker (BuildKit) applies to a build from the repository root with `dockerfile`:
    `<dockerfile>.dockerignore` beside it where there is one, else the root .dockerignore."""
    own = dockerfile.with_name(dockerfile.name + ".dockerignore") if dockerfile else None
    lines = (own if own and own.is_file() else ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_dockerignore_keeps_the_venv_artifacts_and_admin_key_out():
    rules = dockerignore()
    for path in (".venv/bin/python", "artifacts/demo/checkpoint/model.safetensors", ".triton/admin_key",
                 ".triton/tritonserver/bin/tritonserver", ".tools/bin/perf_analyzer", "model_repository/x/1/model.plan",
                 "reports/benchmark.json", "data/tweets.csv", ".git/config", "build/repository.py"):
        assert not in_context(path, rules), path
    assert in_context("docker/triton-entrypoint.sh", rules)


def test_every_copied_file_is_in_the_context_and_none_is_the_key():
    rules = dockerignore()
    reincluded = [r.lstrip("!").strip("/") for r in rules if r.startswith("!")]
    sent = []
    for folder, dirs, files in os.walk(ROOT):     # as Docker does: no descent into excluded folders
        rel = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if in_context(str(rel / d), rules)
                   or any(r.startswith(str(rel / d) + "/") or r == str(rel / d) for r in reincluded)]
        sent += [str(rel / f) for f in files if in_context(str(rel / f), rules)]
    assert sent and all(s.startswith("docker/") or s == "server/probe.py" for s in sent), sent
    for dockerfile in ALL_DOCKERFILES:
        own = dockerignore(dockerfile)
        for secret in (".venv/bin/python", ".triton/admin_key", "artifacts/demo/checkpoint/model.safetensors"):
            assert not in_context(secret, own), f"{dockerfile.name}'s context holds {secret}"
        for copy in instructions(dockerfile, "COPY") + instructions(dockerfile, "ADD"):
            *sources, _ = [w for w in copy.split() if not w.startswith("--")]
            for source in sources:
                assert in_context(source, own), f"{dockerfile.name}: {source} is not in the build context"
                assert ".triton" not in source and "admin_key" not in source
