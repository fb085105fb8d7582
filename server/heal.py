"""Find models whose Python stub died and bring them back.

    python -m server up --watch 5              # start the server, then probe it every 5 s and heal it
    python -m server rollout --heal            # explicit mode: reload the models whose stub is dead, once
    python -m server probe                     # only look: exit 1 naming each ensemble that fails

When a Python-backend stub dies (killed, out of memory), Triton 2.51 does not restart it: the
model stays READY and every request through it fails with HTTP 500 "Stub process '<model>_0_0'
is not healthy". Only a request shows it, so the watcher sends one real text through every ready
ensemble (server/probe.py) and reads the dead instance from the error.

What healing does depends on the server's model-control mode:
  explicit   reload the dead model from its files (Triton reloads only a model whose files look
             modified, so its version folders' times are bumped first): the other models keep
             serving and a new stub answers within seconds of the probe that saw the death.
  none/poll  Triton loads nothing on request, so the watcher restarts the server; every model is
             unavailable until the restarted server is ready again (the repository's load time).
A server process that is gone is restarted in either mode. A failure that is not a dead stub (an
ensemble answering errors) is reported and left alone: a restart would not fix it.

Clients that retry (clients/ does, with backoff) ride through the heal.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from contract.errors import UserError
from server import probe as probing
from server.admin import Admin, RolloutError
from server.embedded import TritonServer, admin_key
from server.rollout import read_repository


def reload(admin: Admin, repo: Path, names: list[str], timeout: float = 300.0, log=print) -> dict:
    """Reload models from their files (a new Python stub each), even when nothing changed on disk."""
    disk = read_repository(repo)
    served = admin.served()
    deadline = time.monotonic() + timeout
    took = {}
    for name in names:
        if name not in disk:
            raise RolloutError(f"{name!r} is not in the repository {repo}; models there: {', '.join(sorted(disk))}")
        # Triton reloads only a model whose files look modified: bump the version folders' times
        for v in served.get(name, set()) | disk[name].versions:
            folder = Path(repo) / name / str(v)
            if folder.is_dir():
                os.utime(folder)
        t = time.monotonic()
        admin.load(name, timeout=max(1.0, deadline - time.monotonic()))
        took[name] = round(time.monotonic() - t, 2)
        log(f"reloaded {name} ({took[name]:.1f} s)")
    return took


def model_of_instance(instance: str, names) -> str | None:
    """'bert_onnx_fp32_model_0_0' -> 'bert_onnx_fp32_model' (the longest model name it starts with)."""
    found = [n for n in names if instance == n or instance.startswith(n + "_")]
    return max(found, key=len) if found else None


def dead_models(results, names) -> tuple[set[str], dict[str, str]]:
    """(models whose stub is dead, {ensemble: error} of the failures that are something else)."""
    dead, other = set(), {}
    for r in results:
        if r.status != "failed":
            continue
        model = model_of_instance(r.dead_stub, names) if r.dead_stub else None
        if model:
            dead.add(model)
        else:
            other[r.model] = r.error
    return dead, other


def heal(admin: Admin, repo: Path, rounds: int = 5, timeout: float = 300.0, log=print) -> dict:
    """Probe every ready ensemble; reload each model whose stub is dead; repeat until all answer."""
    start = time.monotonic()
    healed, other = [], {}
    for _ in range(rounds):
        served = admin.served()
        results = probing.probe(admin.url, admin.key, timeout=60, require_ready=False)
        dead, other = dead_models(results, served)
        if not dead and not other:
            break
        if other:
            raise RolloutError("ensemble(s) failing for another reason than a dead stub: " +
                               "; ".join(f"{k}: {v}" for k, v in other.items()))
        for model in sorted(dead):
            log(f"{model}: Python stub is dead; reloading")
        reload(admin, repo, sorted(dead), timeout=max(1.0, timeout - (time.monotonic() - start)), log=log)
        healed += sorted(dead)
    else:
        raise RolloutError(f"still failing after {rounds} rounds of reloads")
    return {"healed": healed, "seconds": round(time.monotonic() - start, 2)}


def heal_loop(admin: Admin, repo: Path, interval: float | None = None, timeout: float = 300.0, log=print) -> None:
    """`rollout --heal [--watch SECONDS]`: heal once, or every `interval` seconds until interrupted."""
    while True:
        result = heal(admin, repo, timeout=timeout, log=log)
        if not interval:
            log("every ensemble answers" + (f"; reloaded {', '.join(result['healed'])}" if result["healed"] else ""))
            return
        time.sleep(interval)


class Watcher:
    """`python -m server up --watch SECONDS`: probe the server every `interval` seconds; reload dead
    stubs (explicit mode) or restart the server (mode none or poll, or a server that is gone)."""

    def __init__(self, server: TritonServer, interval: float = 5.0, probe_timeout: float = 10.0, log=print):
        self.server, self.interval, self.probe_timeout, self.log = server, interval, probe_timeout, log
        self.stop = threading.Event()
        self.events: list[dict] = []       # what was seen and done: time, kind, models, seconds

    def _say(self, kind: str, text: str, **extra) -> None:
        self.events.append({"time": time.time(), "kind": kind, **extra})
        self.log(f"{time.strftime('%H:%M:%S')} {text}")

    def _restart(self, why: str) -> None:
        t = time.monotonic()
        settings = self.server.settings
        self.server.stop()
        log = Path(settings.log_path)
        if log.exists():                      # the new server starts a fresh log; keep the evidence
            log.replace(log.with_name(log.name + ".before-restart"))
        self.server = TritonServer(settings).start()
        self.server.wait_ready(300)
        self._say("restarted", f"{why}: restarted the server (pid {self.server.pid}) in {time.monotonic() - t:.1f} s",
                  seconds=time.monotonic() - t)

    def check(self) -> None:
        """One round: probe, then heal what is dead."""
        if not self.server.running():
            self._restart("the server process is gone")
            return
        key = admin_key(self.server.settings.state_dir, create=False)
        try:
            # not ready is not the watcher's business (a failed version load leaves Triton unready with
            # every model serving); a dead stub is
            results = probing.probe(self.server.http_url, key, timeout=self.probe_timeout, require_ready=False)
        except probing.ProbeError as e:
            self._say("unreachable", f"probe: {e}")
            return
        admin = Admin(self.server.http_url, key)
        dead, other = dead_models(results, admin.served())
        for name, error in other.items():
            self._say("failing", f"{name} fails (not a dead stub; left alone): {error}")
        if not dead:
            return
        self._say("dead", f"dead Python stub: {', '.join(sorted(dead))}", models=sorted(dead))
        if self.server.settings.model_control_mode == "explicit":
            t = time.monotonic()
            reload(admin, Path(self.server.settings.model_repository), sorted(dead), log=lambda *_: None)
            self._say("reloaded", f"reloaded {', '.join(sorted(dead))} in {time.monotonic() - t:.1f} s",
                      seconds=time.monotonic() - t)
        else:
            self._restart(f"mode {self.server.settings.model_control_mode} cannot reload {', '.join(sorted(dead))}")

    def run(self) -> None:
        """Until stop is set (or Ctrl-C in the caller)."""
        self.log(f"watching {self.server.http_url} every {self.interval:g} s "
                 f"(mode {self.server.settings.model_control_mode}); Ctrl-C stops watching, not the server")
        while not self.stop.wait(self.interval):
            try:
                self.check()
            except UserError as e:            # a reload or a restart that failed: say so, try again next round
                self._say("error", f"heal failed: {e}")
