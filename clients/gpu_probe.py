"""What `make gpu-report` asks the running server and the machine it runs on, before measuring.

    python -m clients.gpu_probe wait  --out reports/gpu [--url 127.0.0.1:8000] [--timeout 900]
    python -m clients.gpu_probe probe --out reports/gpu [--url 127.0.0.1:8000] --texts "..." "..."

wait   polls until the server answers and no model is still loading (TensorRT engines and
       TorchScript load for minutes on a cold GPU), then writes models.json: every model's state
       and, for one that failed, Triton's reason. Under the container's error policy
       (--exit-on-error=false) a model that failed leaves the others serving: it is listed, and
       the run goes on with the READY ensembles. Exit status 2 when no bert_* ensemble is READY.
probe  writes environment.json (GPU, driver and CUDA from nvidia-smi; Docker and the project's and
       NVIDIA's images from `docker image ls`; the server's name and version from its metadata;
       the host CPU) and classify.json (the texts through every READY bert_* ensemble).
Whatever cannot be asked (no nvidia-smi, no Docker) is recorded with the reason, never guessed.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from clients.classify import Classifier, ClientError
from contract.cli import run_guarded
from contract.files import atomic_write_json

IMAGE_PREFIXES = ("bert-triton/", "nvcr.io/nvidia/")


def ensembles(index: list[dict], state: str = "READY") -> list[str]:
    return sorted(m["name"] for m in index if m["name"].startswith("bert_") and not m["name"].endswith("_model")
                  and m.get("state") == state)


def wait_for_models(url: str, timeout: float, poll: float = 2.0, log=print) -> dict:
    """The repository index once the server answers and nothing is LOADING; ClientError on timeout."""
    clf = Classifier(url, "http", retries=0, timeout=10)
    deadline, last = time.monotonic() + timeout, "no answer yet"
    while True:
        try:
            index = clf.repository_index()
            loading = [m["name"] for m in index if m.get("state") in ("LOADING", "UNLOADING")]
            if index and not loading:
                break
            last = f"still loading: {', '.join(loading)}" if loading else "empty repository index"
        except ClientError as e:
            last = str(e).splitlines()[0]
        if time.monotonic() > deadline:
            raise ClientError(f"the server at {url} did not settle within {timeout:.0f} s ({last})")
        time.sleep(poll)
    failed = [{"name": m["name"], "state": m.get("state"), "reason": m.get("reason") or "no reason given"}
              for m in index if m.get("state") not in ("READY", None)]
    for f in failed:
        log(f"  {f['name']}: {f['state']}: {f['reason']}")
    return {"url": url, "models": index, "ready_ensembles": ensembles(index), "failed": failed}


def _run(cmd: list[str]) -> tuple[str | None, str | None]:
    """(stdout, None) or (None, why it could not be asked)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"`{' '.join(cmd[:2])}` could not run ({type(e).__name__}: {e})"
    if out.returncode != 0:
        return None, f"`{' '.join(cmd[:2])}` failed: {(out.stderr or out.stdout).strip()[:200]}"
    return out.stdout, None


def gpus() -> dict:
    out, why = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                     "--format=csv,noheader"])
    if out is None:
        return {"error": why}
    rows = [dict(zip(("name", "driver", "memory", "compute_capability"), (c.strip() for c in line.split(","))))
            for line in out.splitlines() if line.strip()]
    header, _ = _run(["nvidia-smi"])
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header or "")
    return {"gpus": rows, "cuda_driver_api": cuda.group(1) if cuda else None}


def docker_images() -> dict:
    version, why = _run(["docker", "version", "--format", "{{.Server.Version}}"])
    if version is None:
        return {"error": why}
    out, why = _run(["docker", "image", "ls", "--digests", "--format", "{{json .}}"])
    images = [json.loads(line) for line in (out or "").splitlines() if line.strip()]
    return {"engine": version.strip(), "error": why,
            "images": [{"image": f"{i['Repository']}:{i['Tag']}", "id": i.get("ID"), "digest": i.get("Digest"),
                        "created": i.get("CreatedAt")} for i in images if i["Repository"].startswith(IMAGE_PREFIXES)]}


def server_metadata(url: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://{url}/v2", timeout=10) as r:
            return json.load(r)
    except (OSError, ValueError) as e:
        return {"error": f"GET http://{url}/v2: {e}"}


def classify_all(url: str, models: list[str], texts: list[str]) -> dict:
    """Each text through each ensemble; an ensemble that fails is recorded with its error."""
    out = {}
    for model in models:
        try:
            with Classifier(url, "http", model=model, retries=2) as clf:
                out[model] = {"predictions": [p.to_dict() for p in clf.classify(texts)]}
        except ClientError as e:
            out[model] = {"error": str(e).splitlines()[0]}
    return out


def probe(url: str, texts: list[str]) -> tuple[dict, dict]:
    from clients.benchmark import cpu_info

    index = Classifier(url, "http", retries=2).repository_index()
    environment = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "server": server_metadata(url),
                   "nvidia_smi": gpus(), "docker": docker_images(), "host": cpu_info()}
    return environment, {"texts": texts, "results": classify_all(url, ensembles(index), texts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.gpu_probe", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("wait", "probe"))
    p.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address")
    p.add_argument("--out", type=Path, default=Path("reports/gpu"))
    p.add_argument("--timeout", type=float, default=900.0, help="wait: seconds until the models settle")
    p.add_argument("--texts", nargs="*", default=["what a wonderful morning, the sun is out"])
    args = p.parse_args(argv)
    return run_guarded(lambda: STEPS[args.step](args))


def wait_step(args) -> int:
    doc = wait_for_models(args.url, args.timeout)
    atomic_write_json(args.out / "models.json", doc)
    if not doc["ready_ensembles"]:
        raise ClientError(f"no bert_* ensemble is READY on {args.url}; failed: " +
                          "; ".join(f"{f['name']}: {f['reason']}" for f in doc["failed"]))
    print(f"READY: {', '.join(doc['ready_ensembles'])}" +
          (f"; failed to load: {', '.join(f['name'] for f in doc['failed'])}" if doc["failed"] else ""))
    return 0


def probe_step(args) -> int:
    environment, classified = probe(args.url, args.texts)
    atomic_write_json(args.out / "environment.json", environment)
    atomic_write_json(args.out / "classify.json", classified)
    print(f"wrote {args.out / 'environment.json'}, {args.out / 'classify.json'}")
    return 0


STEPS = {"wait": wait_step, "probe": probe_step}


if __name__ == "__main__":
    sys.exit(main())
