"""Roll a rebuilt model repository out to a running Triton, or back to the previous build, without
failing a request.

    python -m server rollout                   # serve what the repository holds now
    python -m server rollout --dry-run         # only print the plan
    python -m server rollback                  # the repository and the server return to the previous build
    python -m server rollout --heal [--watch 10]    # reload models whose Python stub died (server/heal.py)

The server must run with `--model-control-mode explicit` (and `--load-model '*'` to load everything
at start): `python -m server up --model-control-mode explicit --load-model '*'`. In the default
mode `none` Triton refuses every load, and the only way to another build is a restart.

The repository (contract/repository_versions.py): every model of build N has version folder N,
its config serves exactly N and every ensemble step names N; the build it replaced, P, stays on
disk unserved. So an ensemble never pairs one build's tokenizer with another's classifier: it
can only call its own build's versions. A swap from P to N keeps that true at every instant:

  1. overlap   each composing model (tokenizer, classifiers, postprocess) is loaded serving P and
               N side by side (its config on disk names both for the moment): Triton loads and
               warms up N, and reloads P in the background (its folder was carried into a new
               tree, which Triton's timestamps see as modified) while the loaded P keeps
               answering. The ensembles still call P.
  2. switch    each ensemble is loaded from its new config, which calls N: new requests go to
               build N, requests in flight finish on build P.
  3. settle    the composing configs are restored to N only: Triton unloads P once its in-flight
               requests are done.
Triton keeps one set of model-folder files per model (config, labels, warmup): P's reload uses
N's, and where they differ (a parameter, say) the plan says so; vocabularies, weights and code
live in the version folders and stay each build's own. An ensemble whose inputs, outputs or
labels change is refused (clients would see the contract change mid-stream): deploy it under a
new name, or restart. Models gone from the repository are unloaded at the end, ensembles first.

A load that fails part-way (a new model that does not load) rolls back by itself: the repository
returns to the previous build, the server is rolled out to it, and the command fails saying so.
`rollback` does the same on request: the repository's v<P> snapshot files go back in place (an
atomic swap), and the server is rolled out to them. It rolls back one build: the build it leaves
stays on disk, unserved, until the next build replaces it.

It rewrites repository files and calls the restricted repository API: it needs a writable
repository and the admin key (server/admin.py)."""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from contract import cli, pbtxt
from contract.files import atomic_write_text
from contract.names import LABEL_FILE
from contract.repository_versions import (SNAPSHOT, RepositoryVersionError, has_snapshot, model_files,
                                          plan_rollback, same_files, selected_versions, version_folders,
                                          write_rollback)
from server.admin import Admin, LoadRefused, RolloutError, add_target_arguments, repository, target

__all__ = ["Admin", "RolloutError", "rollout", "rollback", "read_repository", "make_plan"]


class LoadFailed(RolloutError):
    """A load failed while the rollout was under way (models of both builds may be loaded)."""


class RolledBack(RolloutError):
    """A rollout failed part-way and was rolled back: the server serves the previous build again."""


# ----------------------------------------------------------------------------------------------
# what the repository holds

@dataclass
class DiskModel:
    name: str
    versions: set[int]              # the versions its version policy selects among the folders there
    ensemble: bool
    steps: list[str] = field(default_factory=list)
    config: object = None           # its ModelConfig message
    path: Path | None = None        # its folder


def read_repository(repo: Path) -> dict[str, DiskModel]:
    repo = Path(repo)
    if not repo.is_dir():
        raise RolloutError(f"model repository {repo} does not exist")
    models = {}
    for cfg_path in sorted(repo.glob(f"*/{pbtxt.CONFIG_FILE}")):
        config = pbtxt.read(cfg_path)
        versions = selected_versions(config, version_folders(cfg_path.parent))
        name = config.name or cfg_path.parent.name
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        models[name] = DiskModel(name, versions, config.platform == "ensemble", steps, config, cfg_path.parent)
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
# the plan

@dataclass
class Plan:
    load: list[str]                  # in order: composing models, then ensembles
    unload: list[str]                # served but gone from the repository: ensembles first
    changes: dict[str, tuple]        # model -> (served versions, versions on disk)
    shared_changes: dict[str, list[str]] = field(default_factory=dict)   # model -> files P reloads under

    def describe(self) -> str:
        if not self.load and not self.unload:
            return "nothing to roll out: the server already serves every model at the repository's versions"
        lines = [f"load {m}: {_v(self.changes[m][0])} -> {_v(self.changes[m][1])}" for m in self.load]
        lines += [f"unload {m}: {_v(self.changes[m][0])} (no longer in the repository)" for m in self.unload]
        lines += [f"note {m}: {_v(self.changes[m][0])} reloads under the new build's {', '.join(files)} while both "
                  "are loaded (Triton keeps one set of model-folder files per model)"
                  for m, files in self.shared_changes.items()]
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
    plan = Plan(load, unload, changes)
    for m in changed:
        if not m.ensemble and len(served.get(m.name, ())) == 1:
            files = _shared_changes(m, next(iter(served[m.name])))
            if files:
                plan.shared_changes[m.name] = files
    return plan


def _without_version_choice(config):
    config = type(config).FromString(config.SerializeToString())
    config.ClearField("version_policy")
    config.ClearField("instance_group")        # Triton updates instance counts in place too
    return config


def _shared_changes(model: DiskModel, served_version: int) -> list[str]:
    """The model-folder files of the served version (its snapshot) that differ from the repository's now."""
    snapshot = model.path / str(served_version) / SNAPSHOT
    if not has_snapshot(model.path, served_version):
        return []
    differ = []
    for path in model_files(model.path):
        old = snapshot / path.name
        if path.name == pbtxt.CONFIG_FILE:
            if _without_version_choice(pbtxt.read(old)) != _without_version_choice(model.config):
                differ.append(path.name)
        elif not old.exists() or not same_files(path, old):
            differ.append(path.name)
    return differ


def check_contracts(admin: Admin, disk: dict[str, DiskModel], plan: Plan) -> None:
    """Refuse to swap an ensemble whose inputs/outputs/labels change: clients would see both mid-stream."""
    for name in plan.load:
        model = disk[name]
        served_versions = plan.changes[name][0]
        if not model.ensemble or not served_versions:
            continue
        served = _signature(admin.config(name))
        change = None
        if served != _disk_signature(model.config):
            change = f"its inputs/outputs/max_batch_size (served {served}, repository {_disk_signature(model.config)})"
        else:
            for v in served_versions:
                old, new = model.path / str(v) / SNAPSHOT / LABEL_FILE, model.path / LABEL_FILE
                if old.is_file() and new.is_file() and old.read_text() != new.read_text():
                    change = f"its labels ({LABEL_FILE}: {old.read_text().split()} -> {new.read_text().split()})"
        if change:
            raise RolloutError(f"ensemble {name!r} changes {change}; a rolling swap would answer in both contracts: "
                               "deploy it under a new name, or restart the server (--allow-contract-change to "
                               "swap anyway)")


# ----------------------------------------------------------------------------------------------
# the execution

def _wait_settled(admin: Admin, deadline: float) -> list[str]:
    """Wait until no model is UNLOADING (old versions leave once idle); names still unloading at the deadline."""
    while True:
        busy = sorted({f"{m['name']} v{m.get('version')}" for m in admin.index() if m.get("state") == "UNLOADING"})
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.2)


def _overlap_text(model: DiskModel, keep: set[int]) -> str:
    config = type(model.config).FromString(model.config.SerializeToString())
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(sorted(keep | model.versions))
    return pbtxt.to_text(config)


def _execute(admin: Admin, disk: dict[str, DiskModel], plan: Plan, deadline: float, parallel: int, log) -> dict:
    summary = {"loaded": {}, "unloaded": [], "still_unloading": []}
    served = admin.served()
    originals: dict[str, str] = {}          # composing model -> its config text, while it names two builds

    def left():
        return max(1.0, deadline - time.monotonic())

    def load(name, expect):
        t = time.monotonic()
        admin.load(name, timeout=left())
        now = admin.served().get(name, set())
        if not expect <= now:
            raise RolloutError(f"after loading {name!r} the server serves {_v(now)}, expected {_v(expect)}; "
                               "see the server log")
        return time.monotonic() - t

    def overlap(name):
        model = disk[name]
        keep = {v for v in served.get(name, set()) - model.versions if (model.path / str(v)).is_dir()}
        if keep:
            config_path = model.path / pbtxt.CONFIG_FILE
            originals[name] = config_path.read_text()
            atomic_write_text(config_path, _overlap_text(model, keep))
        seconds = load(name, model.versions | keep)
        summary["loaded"][name] = {"from": sorted(plan.changes[name][0]), "to": sorted(model.versions),
                                   "seconds": round(seconds, 2)}
        log(f"  {name}: {_v(model.versions | keep)} loaded ({seconds:.1f} s)")

    def settle(name):
        atomic_write_text(disk[name].path / pbtxt.CONFIG_FILE, originals.pop(name))
        load(name, disk[name].versions)
        log(f"  {name}: {_v(disk[name].versions)} only")

    composing = [n for n in plan.load if not disk[n].ensemble]
    try:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            list(pool.map(overlap, composing))
        for name in plan.load:
            if disk[name].ensemble:
                seconds = load(name, disk[name].versions)
                summary["loaded"][name] = {"from": sorted(plan.changes[name][0]),
                                           "to": sorted(disk[name].versions), "seconds": round(seconds, 2)}
                log(f"  {name}: now calls {_v(disk[name].versions)} ({seconds:.1f} s)")
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            list(pool.map(settle, list(originals)))
    finally:
        for name, text in originals.items():      # never leave a config naming two builds on disk
            atomic_write_text(disk[name].path / pbtxt.CONFIG_FILE, text)
    for name in plan.unload:
        admin.unload(name, timeout=left())
        summary["unloaded"].append(name)
        log(f"  {name}: unloaded")
    summary["still_unloading"] = _wait_settled(admin, deadline)
    return summary


def _rollout_once(admin: Admin, repo: Path, timeout: float, dry_run: bool, allow_contract_change: bool,
                  parallel: int, log) -> dict:
    start = time.monotonic()
    disk = read_repository(repo)
    plan = make_plan(disk, admin.served(), lambda name: admin.config(name).get("platform") == "ensemble")
    log(plan.describe())
    summary = {"loaded": {}, "unloaded": [], "seconds": 0.0, "still_unloading": []}
    if dry_run or (not plan.load and not plan.unload):
        return summary
    if not allow_contract_change:
        check_contracts(admin, disk, plan)
    try:
        summary.update(_execute(admin, disk, plan, start + timeout, parallel, log))
    except LoadRefused:
        raise
    except RolloutError as e:
        raise LoadFailed(str(e)) from None
    summary["seconds"] = round(time.monotonic() - start, 2)
    if summary["still_unloading"]:
        log(f"still draining after {timeout:.0f} s: {', '.join(summary['still_unloading'])}")
    return summary


def rollout(admin: Admin, repo: Path, timeout: float = 600.0, dry_run: bool = False,
            allow_contract_change: bool = False, parallel: int = 4, auto_rollback: bool = True, log=print) -> dict:
    """Make the server serve what `repo` holds; returns a summary (what changed, seconds, leftovers).
    A failed load rolls the repository and the server back to the previous build (RolledBack)."""
    repo = Path(repo)
    try:
        return _rollout_once(admin, repo, timeout, dry_run, allow_contract_change, parallel, log)
    except LoadFailed as failure:
        if not auto_rollback:
            raise
        log(f"rollout failed: {failure}")
        try:
            back = plan_rollback(repo)
        except RepositoryVersionError as e:
            raise RolloutError(f"{failure}\nno rollback possible: {e}") from None
        log(f"rolling back: {back.describe()}")
        write_rollback(back)
        try:
            _rollout_once(admin, repo, timeout, False, True, parallel, log)
        except RolloutError as e:
            raise RolloutError(f"rollout of v{back.from_version} failed ({failure}), and so did the rollback to "
                               f"v{back.to_version}: {e}") from None
        log(f"note: Triton keeps the failed load on record, so with strict readiness (the default) "
            f"/v2/health/ready stays false until v{back.from_version} loads or the server restarts; every model "
            "serves meanwhile")
        raise RolledBack(f"rollout of v{back.from_version} failed and was rolled back: the server and {repo} serve "
                         f"v{back.to_version} again (v{back.from_version} stays on disk, unserved). Cause: {failure}"
                         ) from None


def rollback(admin: Admin | None, repo: Path, timeout: float = 600.0, parallel: int = 4, log=print) -> dict:
    """The repository returns to its previous build (atomic swap), then the server is rolled out to it."""
    plan = plan_rollback(Path(repo))
    log(f"rollback {plan.describe()}")
    write_rollback(plan)
    result = {"from": plan.from_version, "to": plan.to_version, "models": plan.models, "dropped": plan.dropped}
    if admin is not None:
        result.update(_rollout_once(admin, Path(repo), timeout, False, True, parallel, log))
    return result


# ----------------------------------------------------------------------------------------------
# command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print what would be loaded/unloaded, change nothing")
    p.add_argument("--parallel", type=int, default=4, help="composing models loaded at once (default 4)")
    p.add_argument("--allow-contract-change", action="store_true",
                   help="swap ensembles even if their inputs/outputs/labels change")
    p.add_argument("--no-auto-rollback", action="store_true",
                   help="leave a failed rollout where it stopped instead of returning to the previous build")
    p.add_argument("--heal", action="store_true", help="reload models whose Python stub died (server/heal.py)")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="with --heal: repeat every SECONDS until Ctrl-C")
    p.add_argument("--reload", action="append", metavar="MODEL", help="reload this model from its files (repeatable)")


def run(args) -> int:
    """`python -m server rollout ...` (server/__main__.py calls add_arguments and run)."""
    from server import heal

    admin, repo = target(args)
    if args.reload:
        heal.reload(admin, repo, args.reload, timeout=args.timeout)
    elif args.heal:
        heal.heal_loop(admin, repo, interval=args.watch, timeout=args.timeout)
    else:
        summary = rollout(admin, repo, timeout=args.timeout, dry_run=args.dry_run,
                          allow_contract_change=args.allow_contract_change, parallel=args.parallel,
                          auto_rollback=not args.no_auto_rollback)
        if summary["loaded"] or summary["unloaded"]:
            print(f"rolled out in {summary['seconds']:.1f} s")
    return 0


def add_rollback_arguments(p: argparse.ArgumentParser) -> None:
    add_target_arguments(p)
    p.add_argument("--parallel", type=int, default=4, help="composing models loaded at once (default 4)")
    p.add_argument("--repository-only", action="store_true",
                   help="only swap the repository back (no server, or one to restart yourself)")


def run_rollback(args) -> int:
    """`python -m server rollback ...`"""
    admin, repo = (None, repository(args)) if args.repository_only else target(args)
    try:
        result = rollback(admin, repo, timeout=args.timeout, parallel=args.parallel)
    except LoadRefused as e:
        raise RolloutError(f"{repo} is rolled back, but {e}") from None
    where = "the repository" + (" and the server" if admin is not None else "")
    print(f"rolled back: {where} serve v{result['to']} (v{result['from']} stays on disk, unserved)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.rollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return cli.run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
