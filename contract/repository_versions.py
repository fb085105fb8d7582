"""How a model repository keeps two builds on disk and serves one: the layout the build writes and
the server's rollout and rollback read.

    <model>/config.pbtxt           version_policy { specific { versions: [N] } }: only build N is served
    <model>/<N>/                   this build's version folder
    <model>/<N>/.model_files/      a snapshot of this build's model-folder files (config.pbtxt,
                                   labels.txt, warmup/): what a rollback to N puts back
    <model>/<P>/                   the previous build's version folder, carried over unchanged

Every model of one build has the same version number N, and every ensemble's steps name version N
of their models, so an ensemble never combines two builds' models, whatever else is loaded.

Triton shares a model's folder files (config.pbtxt, labels.txt, warmup/) among its versions, and
reloads a loaded version whose folder looks modified, judging by the later of mtime and ctime (so
no copy, not even a hard link, passes for unchanged). A version carried into a new tree is
therefore reloaded once when the next rollout loads the new one beside it: in the background,
while the loaded instance keeps answering, under the new tree's model-folder files. The build
keeps that harmless: warmup samples valid for any vocabulary, and each version folder's Python
compiled at build time (a stub importing model.py would otherwise write __pycache__ into the
folder it serves, its interpreter ignoring PYTHONDONTWRITEBYTECODE, and every later poll would
reload that version once more).

The swap: a build (or rollback) writes a whole new tree beside the repository and exchanges the
two folders atomically (renameat2 RENAME_EXCHANGE where Linux offers it). A server must therefore
read the repository through its path, never through a handle on the old folder: docker compose
mounts the folder above it for that reason.
"""
from __future__ import annotations

import ctypes
import datetime
import filecmp
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from contract import pbtxt
from contract.errors import UserError
from contract.files import atomic_write_json, atomic_write_text

SNAPSHOT = ".model_files"       # inside a version folder: its build's model-folder files
BUILD_FILE = "build.json"       # top of the repository: what the served build is made of
README = "README.md"            # top of the repository: tracked in git, carried through every swap
_SKIP = ("__pycache__",)        # not a model-folder file


class RepositoryVersionError(UserError, RuntimeError):
    """The repository's versions do not allow what was asked (no previous build, mixed builds)."""


# ---- reading ------------------------------------------------------------------------------------

def version_folders(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


def selected_versions(config, folders) -> set[int]:
    """The versions a config's version_policy selects among the version folders present (as Triton does)."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    folders = sorted(folders)
    if kind == "all":
        return set(folders)
    if kind == "specific":
        return set(folders) & set(policy.specific.versions)
    n = policy.latest.num_versions if kind == "latest" else 1      # Triton's default: latest 1
    return set(folders[-max(1, n):])


def served_version(model_dir: Path) -> int | None:
    """The one version the model's config serves, or None (none, or several)."""
    versions = selected_versions(pbtxt.read(model_dir), version_folders(model_dir))
    return next(iter(versions)) if len(versions) == 1 else None


def model_dirs(repo: Path) -> list[Path]:
    return sorted(p.parent for p in Path(repo).glob(f"*/{pbtxt.CONFIG_FILE}"))


def model_files(model_dir: Path) -> list[Path]:
    """The model folder's own files (config.pbtxt, labels.txt, warmup/): everything but version folders."""
    return sorted(p for p in Path(model_dir).iterdir() if not p.name.isdigit() and p.name not in _SKIP)


def has_snapshot(model_dir: Path, version: int) -> bool:
    return (Path(model_dir) / str(version) / SNAPSHOT / pbtxt.CONFIG_FILE).is_file()


# ---- copying ------------------------------------------------------------------------------------

def copy_tree(src: Path, dst: Path, link: bool = True) -> None:
    """Copy a file or folder; with `link`, files are hard links where the filesystem allows (version
    folders are never modified once written, and a checkpoint need not be stored twice)."""
    src, dst = Path(src), Path(dst)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_file():
        try:
            if not link:
                raise OSError
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    else:
        dst.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            copy_tree(child, dst / child.name, link)


def same_files(a: Path, b: Path) -> bool:
    """Equal content: a file's bytes, a folder's names and files (recursively)."""
    if a.is_dir() != b.is_dir():
        return False
    if not a.is_dir():
        return filecmp.cmp(a, b, shallow=False)
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(same_files(a / n, b / n) for n in names)


# ---- snapshots, carrying the previous build, rollback -------------------------------------------

def snapshot_model_files(model_dir: Path, version: int, source: Path | None = None) -> Path:
    """Copy the model folder's files (of `source`, default model_dir itself) into <version>/.model_files/."""
    target = Path(model_dir) / str(version) / SNAPSHOT
    target.mkdir(parents=True)
    for path in model_files(source or model_dir):
        copy_tree(path, target / path.name, link=False)   # the model folder's files change later
    return target


def carry_version(old_model_dir: Path, new_model_dir: Path, version: int) -> None:
    """The previous build's version folder into the new tree, with a snapshot (a repository written
    before snapshots existed gets one from the old model folder's files, which are that version's,
    as it is the one served)."""
    old_model_dir, new_model_dir = Path(old_model_dir), Path(new_model_dir)
    copy_tree(old_model_dir / str(version), new_model_dir / str(version))
    if not has_snapshot(new_model_dir, version):
        shutil.rmtree(new_model_dir / str(version) / SNAPSHOT, ignore_errors=True)
        snapshot = snapshot_model_files(new_model_dir, version, source=old_model_dir)
        # such a repository served "latest" through "latest" steps: name the version, as builds now do
        config = pbtxt.read(snapshot)
        config.version_policy.Clear()
        config.version_policy.specific.versions.append(version)
        for step in config.ensemble_scheduling.step:
            step.model_version = version
        atomic_write_text(snapshot / pbtxt.CONFIG_FILE, pbtxt.to_text(config))


def retain_previous(old_repo: Path, new_tree: Path, new_version: int) -> int | None:
    """Carry the version the old repository serves into the new tree, for every model both have;
    returns that version (None when there is none to keep)."""
    old_repo, new_tree = Path(old_repo), Path(new_tree)
    kept = set()
    for new_dir in model_dirs(new_tree):
        old_dir = old_repo / new_dir.name
        if not (old_dir / pbtxt.CONFIG_FILE).is_file():
            continue
        previous = served_version(old_dir)
        if previous is None or previous == new_version or not (old_dir / str(previous)).is_dir():
            continue
        carry_version(old_dir, new_dir, previous)
        kept.add(previous)
    if len(kept) > 1:
        raise RepositoryVersionError(f"{old_repo} serves several versions at once ({sorted(kept)}): "
                                     "finish its rollout (python -m server rollout) before building")
    return next(iter(kept), None)


@dataclass
class Rollback:
    repo: Path
    from_version: int
    to_version: int
    models: list[str] = field(default_factory=list)      # served at to_version once swapped in
    dropped: dict[str, str] = field(default_factory=dict)  # model -> why it cannot go back

    def describe(self) -> str:
        lines = [f"{self.repo}: v{self.from_version} -> v{self.to_version} "
                 f"({len(self.models)} models: {', '.join(self.models)})"]
        lines += [f"  {name} leaves the repository: {why}" for name, why in self.dropped.items()]
        return "\n".join(lines)


def current_version(repo: Path) -> int:
    """The one version every model of the repository serves."""
    served = {d.name: served_version(d) for d in model_dirs(repo)}
    if not served:
        raise RepositoryVersionError(f"{repo} holds no model (no */config.pbtxt)")
    versions = set(served.values())
    if None in versions or len(versions) != 1:
        raise RepositoryVersionError(f"{repo} does not serve one version: " +
                                     ", ".join(f"{m} {v if v is not None else '-'}" for m, v in served.items()))
    return versions.pop()


def plan_rollback(repo: Path) -> Rollback:
    """Which version a rollback returns to (the highest kept below the served one) and with which models."""
    repo = Path(repo)
    current = current_version(repo)
    dirs = {d.name: d for d in model_dirs(repo)}
    older = sorted({v for d in dirs.values() for v in version_folders(d) if v < current and has_snapshot(d, v)})
    if not older:
        raise RepositoryVersionError(f"{repo} keeps no version older than v{current} with its model files: "
                                     "nothing to roll back to (each build keeps the one it replaces)")
    target = older[-1]
    plan = Rollback(repo, current, target)
    for name, d in dirs.items():
        if not has_snapshot(d, target):
            plan.dropped[name] = f"it has no v{target}"
    # an ensemble goes back only if every model it calls does
    configs = {name: pbtxt.read(d / str(target) / SNAPSHOT) for name, d in dirs.items() if name not in plan.dropped}
    changed = True
    while changed:
        changed = False
        for name, config in configs.items():
            missing = [s.model_name for s in config.ensemble_scheduling.step if s.model_name not in configs]
            if name not in plan.dropped and missing:
                plan.dropped[name] = f"its step(s) {', '.join(missing)} cannot go back to v{target}"
                changed = True
        configs = {n: c for n, c in configs.items() if n not in plan.dropped}
    plan.models = sorted(configs)
    if not plan.models:
        raise RepositoryVersionError(f"{repo}: no model can go back to v{target}")
    return plan


def write_rollback(plan: Rollback) -> Rollback:
    """Swap in the tree that serves plan.to_version: each model's v<to> snapshot files back in its
    folder, both version folders kept (the server still serves v<from> until it is rolled out)."""
    repo = plan.repo
    remove_stale_temps(repo)
    tmp = building_dir(repo)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in plan.models:
            for v in (plan.to_version, plan.from_version):
                if (repo / name / str(v)).is_dir():
                    copy_tree(repo / name / str(v), tmp / name / str(v))
            snapshot = repo / name / str(plan.to_version) / SNAPSHOT
            for path in sorted(snapshot.iterdir()):
                copy_tree(path, tmp / name / path.name, link=False)
        if (repo / README).is_file():
            shutil.copy2(repo / README, tmp / README)
        atomic_write_json(tmp / BUILD_FILE, _rolled_back_manifest(repo, plan))
        swap_tree(tmp, repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return plan


def _rolled_back_manifest(repo: Path, plan: Rollback) -> dict:
    try:
        current = json.loads((repo / BUILD_FILE).read_text())
    except (OSError, ValueError):
        current = {}
    previous = dict(current.get("previous_build") or {"version": plan.to_version})
    previous.update(models=plan.models, rolled_back_from=plan.from_version,
                    rolled_back=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return previous


# ---- the atomic swap ----------------------------------------------------------------------------

def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def swap_tree(tmp: Path, out: Path) -> None:
    """Put the finished tmp tree at `out`; the old tree is removed after readers see the new one."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):        # out is the new tree now, tmp holds the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def building_dir(out: Path) -> Path:
    """This process's temp tree beside `out`."""
    out = Path(out)
    return out.parent / f".{out.name}.building-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path) -> None:
    """Temp trees of builds or rollbacks that were killed (their process is gone)."""
    out = Path(out)
    for d in out.parent.glob(f".{out.name}.building-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
