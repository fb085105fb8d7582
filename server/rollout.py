"""Roll a rebuilt model repository out to a running Triton without failing a request; heal dead stubs.

    python -m server.rollout                        # serve what the repository holds now
    python -m server.rollout --dry-run              # only print the plan
    python -m server.rollout --heal                 # reload models whose Python stub died
    python -m server.rollout --reload tokenizer     # reload named models from their files

The server must run with `--model-control-mode explicit` (and `--load-model '*'` to load everything
at start): `python -m server up --model-control-mode explicit --load-model '*'`. In the default
mode `none` Triton refuses every load, and the only way to a new build or a dead stub is a restart.

How a rollout works. `python -m build repository` writes every model of a new build into a version
folder one above the last (`model/2/`), with `version_policy: latest 1`, and swaps the whole tree in
atomically; a server in explicit mode does not look at it until told to. This command compares
what the repository holds with what the server serves (repository index, admin key) and asks the
server to load each model that changed: the composing models side by side (Triton then reloads
the ensembles over them), then any ensemble still on its old version. For each load
Triton reads the new version, loads and warms it while the old version keeps answering, then sends
new requests to the new version and unloads the old one once its in-flight requests are done.
No request is refused at any point; for a moment an ensemble may combine a new tokenizer with an
old classifier (each step resolves "latest" on its own), which is why a change to the ensemble
contract (inputs, outputs, label count) is refused: roll those out under a new name or restart.
Models no longer in the repository are unloaded at the end, ensembles first.

Healing. When a Python-backend stub dies (killed, out of memory), Triton 2.51 does not restart it:
the model stays READY in the index and every request to it fails with HTTP 500 "Stub process
'<model>_0_0' is not healthy" after about a second. `--heal` sends one probe request to every ready
ensemble, reads which model's stub is dead from that error, and reloads that model from its
files (Triton only reloads a model whose files changed, so its version folder's mtime is bumped
first); a new stub answers within seconds, and clients that retry (clients/classify.py does, with
backoff) never see the outage. `--heal --watch 10` does that every 10 seconds.

Everything here uses the restricted repository API, so it needs the admin key (the running
server's .triton/admin_key, $TRITON_ADMIN_KEY or --admin-key); inference needs none.

Longer than 400 lines on purpose: the plan (what changed on disk), its execution against the
server and the healing share the repository reader and the admin HTTP calls, and read as one story.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from contract import cli, pbtxt
from contract.errors import UserError
from server.embedded import (ADMIN_HEADER, DEFAULT_STATE_DIR, ServerError, ServerSettings, TritonServer,
                             admin_key)

PROBE_TEXT = "rollout probe: is every model of this ensemble answering?"
_DEAD_STUB = re.compile(r"Stub process '([^']+)' is not healthy")
_REFUSED = "not allowed if polling is enabled"     # Triton's words for load/unload in modes none and poll


class RolloutError(UserError, RuntimeError):
    """The rollout (or heal) cannot go on; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# the server's admin side, over plain HTTP

class Admin:
    """The few Triton HTTP endpoints a rollout needs; every call has a timeout."""

    def __init__(self, url: str, key: str | None, timeout: float = 300.0):
        self.base = "http://" + re.sub(r"^https?://", "", url).rstrip("/")
        self.key, self.timeout = key, timeout

    def _request(self, method, path, body=None, admin=False, timeout=None):
        headers = {"Content-Type": "application/json"}
        if admin and self.key:
            headers[ADMIN_HEADER] = self.key
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                text = r.read()
                return r.status, json.loads(text) if text else {}
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text
            if e.code == 403 and "restricted" in message:
                raise RolloutError(f"{self.base}{path} needs the admin key ({message}): pass --admin-key, set "
                                   "TRITON_ADMIN_KEY, or --state-dir of the server (`python -m server admin-key`)")
            return e.code, {"error": message}
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RolloutError(f"Triton at {self.base} is unreachable ({reason}); is it running? "
                               "(`python -m server status`)") from None

    def index(self) -> list[dict]:
        status, doc = self._request("POST", "/v2/repository/index", {}, admin=True)
        if status != 200:
            raise RolloutError(f"repository index on {self.base}: HTTP {status}: {doc.get('error')}")
        return doc

    def served(self) -> dict[str, set[int]]:
        """model -> versions READY now."""
        out: dict[str, set[int]] = {}
        for m in self.index():
            if m.get("state") == "READY" and str(m.get("version", "")).isdigit():
                out.setdefault(m["name"], set()).add(int(m["version"]))
        return out

    def _control(self, action, name, timeout):
        status, doc = self._request("POST", f"/v2/repository/models/{name}/{action}", {}, admin=True,
                                    timeout=timeout)
        if status == 200:
            return
        error = doc.get("error", "")
        if _REFUSED in error:
            raise RolloutError(f"the server at {self.base} refuses to {action} models: it runs with "
                               "--model-control-mode none (or poll). Restart it in explicit mode: "
                               "`python -m server up --model-control-mode explicit --load-model '*'`, "
                               "or restart it to serve the new files (`make down up`)")
        raise RolloutError(f"{action} {name!r} on {self.base} failed (HTTP {status}): {error}")

    def load(self, name, timeout=None):
        self._control("load", name, timeout)

    def unload(self, name, timeout=None):
        self._control("unload", name, timeout)

    def config(self, name) -> dict:
        status, doc = self._request("GET", f"/v2/models/{name}/config")
        if status != 200:
            raise RolloutError(f"config of {name!r} on {self.base}: HTTP {status}: {doc.get('error')}")
        return doc

    def probe(self, name, config: dict) -> str | None:
        """One inference with placeholder inputs; None if it answered, else the server's error."""
        inputs = []
        for i in config.get("input", []):
            dims = [1 if d == -1 else int(d) for d in i.get("dims", [])]
            shape = ([1] if config.get("max_batch_size", 0) else []) + dims
            n = 1
            for d in shape:
                n *= d
            dtype = i["data_type"].replace("TYPE_", "")
            if dtype == "STRING":
                inputs.append({"name": i["name"], "shape": shape, "datatype": "BYTES", "data": [PROBE_TEXT] * n})
            else:
                inputs.append({"name": i["name"], "shape": shape, "datatype": dtype, "data": [0] * n})
        status, doc = self._request("POST", f"/v2/models/{name}/infer", {"inputs": inputs}, timeout=60)
        return None if status == 200 else f"HTTP {status}: {doc.get('error')}"


# ----------------------------------------------------------------------------------------------
# what the repository holds

@dataclass
class DiskModel:
    name: str
    versions: set[int]              # the versions its version policy selects among the folders there
    ensemble: bool
    steps: list[str] = field(default_factory=list)
    config: object = None           # its ModelConfig message


def read_repository(repo: Path) -> dict[str, DiskModel]:
    repo = Path(repo)
    if not repo.is_dir():
        raise RolloutError(f"model repository {repo} does not exist")
    models = {}
    for cfg_path in sorted(repo.glob(f"*/{pbtxt.CONFIG_FILE}")):
        config = pbtxt.read(cfg_path)
        folders = sorted(int(p.name) for p in cfg_path.parent.iterdir() if p.is_dir() and p.name.isdigit())
        policy = config.version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            versions = set(folders)
        elif kind == "specific":
            versions = set(folders) & set(policy.specific.versions)
        else:                                   # Triton's default: latest 1
            n = policy.latest.num_versions if kind == "latest" else 1
            versions = set(folders[-max(1, n):])
        name = config.name or cfg_path.parent.name
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        models[name] = DiskModel(name, versions, config.platform == "ensemble", steps, config)
    if not models:
        raise RolloutError(f"{repo} holds no model (no */config.pbtxt)")
    return models


def _signature(config: dict) -> list:
    """Inputs and outputs of a served config (JSON), comparable with a disk config's."""
    def tensors(key):
        return sorted((t["name"], t["data_type"], tuple(int(d) for d in t.get("dims", []))) for t in config.get(key, []))
    return [tensors("input"), tensors("output"), int(config.get("max_batch_size", 0))]


def _disk_signature(config) -> list:
    def tensors(items):
        return sorted((t.name, pbtxt.messages().DataType.Name(t.data_type), tuple(t.dims)) for t in items)
    return [tensors(config.input), tensors(config.output), int(config.max_batch_size)]


# ----------------------------------------------------------------------------------------------
# the plan and its execution

@dataclass
class Plan:
    load: list[str]                  # in order: composing models, then ensembles
    unload: list[str]                # served but gone from the repository: ensembles first
    changes: dict[str, tuple]        # model -> (served versions, versions on disk)

    def describe(self) -> str:
        if not self.load and not self.unload:
            return "nothing to roll out: the server already serves every model at the repository's versions"
        lines = [f"load {m}: {_v(self.changes[m][0])} -> {_v(self.changes[m][1])}" for m in self.load]
        lines += [f"unload {m}: {_v(self.changes[m][0])} (no longer in the repository)" for m in self.unload]
        return "\n".join(lines)


def _v(versions) -> str:
    return ",".join(f"v{v}" for v in sorted(versions)) or "-"


def make_plan(disk: dict[str, DiskModel], served: dict[str, set[int]], is_ensemble=lambda name: False) -> Plan:
    """is_ensemble(name) tells, for a served model gone from the repository, whether it is an ensemble."""
    changed = [m for m in disk.values() if m.versions and served.get(m.name, set()) != m.versions]
    load = [m.name for m in changed if not m.ensemble] + [m.name for m in changed if m.ensemble]
    gone = [n for n in served if n not in disk]
    unload = sorted(gone, key=lambda n: (not is_ensemble(n), n))   # an ensemble before its steps
    changes = {m.name: (served.get(m.name, set()), m.versions) for m in changed}
    changes.update({n: (served[n], set()) for n in gone})
    return Plan(load, unload, changes)


def check_contracts(admin: Admin, disk: dict[str, DiskModel], plan: Plan) -> None:
    """Refuse to swap an ensemble whose inputs/outputs change: old and new steps would be mixed."""
    for name in plan.load:
        model = disk[name]
        if not model.ensemble or not plan.changes[name][0]:
            continue
        served = _signature(admin.config(name))
        if served != _disk_signature(model.config):
            raise RolloutError(f"ensemble {name!r} changes its inputs/outputs/max_batch_size (served {served}, "
                               f"repository {_disk_signature(model.config)}); a rolling swap would mix old and "
                               "new steps: deploy it under a new name, or restart the server (--allow-contract-change "
                               "to swap anyway)")


def _wait_settled(admin: Admin, deadline: float) -> list[str]:
    """Wait until no model is UNLOADING (old versions leave once idle); names still unloading at the deadline."""
    while True:
        busy = sorted({f"{m['name']} v{m.get('version')}" for m in admin.index() if m.get("state") == "UNLOADING"})
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.2)


def rollout(admin: Admin, repo: Path, timeout: float = 600.0, dry_run: bool = False,
            allow_contract_change: bool = False, parallel: int = 4, log=print) -> dict:
    """Make the server serve what `repo` holds; returns a summary (what changed, seconds, leftovers)."""
    start = time.monotonic()
    deadline = start + timeout
    disk = read_repository(repo)
    plan = make_plan(disk, admin.served(),
                     lambda name: admin.config(name).get("platform") == "ensemble")
    log(plan.describe())
    summary = {"loaded": {}, "unloaded": [], "seconds": 0.0, "still_unloading": []}
    if dry_run or (not plan.load and not plan.unload):
        return summary
    if not allow_contract_change:
        check_contracts(admin, disk, plan)

    def load(name):
        t = time.monotonic()
        # reloading a composing model reloads the ensembles over it; loading an ensemble would
        # reload every composing model once more (new stubs for nothing), so skip those already done
        if not (disk[name].ensemble and admin.served().get(name, set()) == disk[name].versions):
            admin.load(name, timeout=max(1.0, deadline - time.monotonic()))
        now = admin.served().get(name, set())
        if not disk[name].versions <= now:
            raise RolloutError(f"after loading {name!r} the server serves {_v(now)}, expected "
                               f"{_v(disk[name].versions)}; see the server log")
        summary["loaded"][name] = {"from": sorted(plan.changes[name][0]), "to": sorted(disk[name].versions),
                                   "seconds": round(time.monotonic() - t, 2)}
        log(f"  {name}: now {_v(disk[name].versions)} ({time.monotonic() - t:.1f} s)")

    # composing models side by side (Triton loads up to --model-load-thread-count, 4, at once),
    # then the ensembles, whose steps are all new by then
    composing = [n for n in plan.load if not disk[n].ensemble]
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(load, composing))
    for name in plan.load:
        if disk[name].ensemble:
            load(name)
    for name in plan.unload:
        admin.unload(name, timeout=max(1.0, deadline - time.monotonic()))
        summary["unloaded"].append(name)
        log(f"  {name}: unloaded")
    summary["still_unloading"] = _wait_settled(admin, deadline)
    summary["seconds"] = round(time.monotonic() - start, 2)
    if summary["still_unloading"]:
        log(f"still draining after {timeout:.0f} s: {', '.join(summary['still_unloading'])}")
    return summary


def reload(admin: Admin, repo: Path, names: list[str], timeout: float = 300.0, log=print) -> dict:
    """Reload models from their files (a new Python stub each), even when nothing changed on disk."""
    disk = read_repository(repo)
    served = admin.served()
    deadline = time.monotonic() + timeout
    took = {}
    for name in names:
        if name not in disk:
            raise RolloutError(f"{name!r} is not in the repository {repo}; models there: {', '.join(sorted(disk))}")
        # Triton reloads only a model whose files look modified: bump the version folders' mtime
        for v in served.get(name, set()) | disk[name].versions:
            folder = Path(repo) / name / str(v)
            if folder.is_dir():
                os.utime(folder)
        t = time.monotonic()
        admin.load(name, timeout=max(1.0, deadline - time.monotonic()))
        took[name] = round(time.monotonic() - t, 2)
        log(f"reloaded {name} ({took[name]:.1f} s)")
    return took


def _model_of_instance(instance: str, names) -> str | None:
    """'bert_onnx_fp32_model_0_0' -> 'bert_onnx_fp32_model' (the longest model name it starts with)."""
    found = [n for n in names if instance == n or instance.startswith(n + "_")]
    return max(found, key=len) if found else None


def heal(admin: Admin, repo: Path, rounds: int = 5, timeout: float = 300.0, log=print) -> dict:
    """Probe every ready ensemble; reload each model whose stub is dead; repeat until all answer."""
    start = time.monotonic()
    disk = read_repository(repo)
    healed, failing = [], {}
    for _ in range(rounds):
        served = admin.served()
        failing = {}
        for name in sorted(n for n in served if n in disk and disk[n].ensemble):
            error = admin.probe(name, admin.config(name))
            if error is not None:
                failing[name] = error
        if not failing:
            break
        dead = set()
        for name, error in failing.items():
            m = _DEAD_STUB.search(error)
            model = _model_of_instance(m.group(1), served) if m else None
            if model is None:
                raise RolloutError(f"ensemble {name!r} fails for another reason than a dead stub: {error}")
            dead.add(model)
        for model in sorted(dead):
            log(f"{model}: Python stub is dead; reloading")
        reload(admin, repo, sorted(dead), timeout=max(1.0, timeout - (time.monotonic() - start)), log=log)
        healed += sorted(dead)
    if failing:
        raise RolloutError(f"still failing after {rounds} rounds: " + "; ".join(f"{k}: {v}" for k, v in failing.items()))
    return {"healed": healed, "seconds": round(time.monotonic() - start, 2)}


# ----------------------------------------------------------------------------------------------
# command line

def _target(args):
    """URL, repository and admin key: flags, else the running server's pidfile/state, else defaults."""
    state_dir = Path(args.state_dir or os.environ.get("TRITON_STATE_DIR") or DEFAULT_STATE_DIR)
    running = TritonServer.from_pidfile(state_dir)
    settings = running.settings if running else ServerSettings.from_env(state_dir=state_dir)
    url = args.url or settings.http_url
    repo = Path(args.model_repository) if args.model_repository else Path(settings.model_repository)
    key = args.admin_key or os.environ.get("TRITON_ADMIN_KEY")
    if not key:
        try:
            key = admin_key(state_dir, create=False)
        except ServerError as e:
            raise RolloutError(f"no admin key for the repository API: {e}") from None
    return Admin(url, key, timeout=args.timeout), repo


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server HTTP address (default: the running server's, else 127.0.0.1:8000)")
    p.add_argument("--model-repository", help="the repository the server reads (default: the running server's)")
    p.add_argument("--state-dir", help="the server's state folder: pidfile and admin key (default .triton)")
    p.add_argument("--admin-key", help="key for the repository API (default $TRITON_ADMIN_KEY or the state folder's)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole operation (default 600)")
    p.add_argument("--dry-run", action="store_true", help="print what would be loaded/unloaded, change nothing")
    p.add_argument("--parallel", type=int, default=4, help="composing models loaded at once (default 4)")
    p.add_argument("--allow-contract-change", action="store_true",
                   help="swap ensembles even if their inputs/outputs change (requests may fail meanwhile)")
    p.add_argument("--heal", action="store_true", help="reload models whose Python stub died")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="with --heal: repeat every SECONDS until Ctrl-C")
    p.add_argument("--reload", action="append", metavar="MODEL", help="reload this model from its files (repeatable)")


def run(args) -> int:
    """`python -m server rollout ...` (server/__main__.py calls add_arguments and run)."""
    admin, repo = _target(args)
    if args.reload:
        reload(admin, repo, args.reload, timeout=args.timeout)
    elif args.heal:
        while True:
            result = heal(admin, repo, timeout=args.timeout)
            if not args.watch:
                print("every ensemble answers" + (f"; reloaded {', '.join(result['healed'])}"
                                                  if result["healed"] else ""))
                break
            time.sleep(args.watch)
    else:
        summary = rollout(admin, repo, timeout=args.timeout, dry_run=args.dry_run,
                          allow_contract_change=args.allow_contract_change, parallel=args.parallel)
        if summary["loaded"] or summary["unloaded"]:
            print(f"rolled out in {summary['seconds']:.1f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.rollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return cli.run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
