"""The few Triton HTTP endpoints a rollout, a rollback and healing need (repository index, load,
unload, model config), each call with a timeout, and where a command finds the server and its key.

Load, unload and the index are restricted APIs: they need the admin key (the running server's
.triton/admin_key, $TRITON_ADMIN_KEY or --admin-key); inference and configs need none.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from contract.errors import UserError
from server.embedded import ADMIN_HEADER, DEFAULT_STATE_DIR, ServerError, ServerSettings, TritonServer, admin_key

_REFUSED = "not allowed if polling is enabled"     # Triton's words for load/unload in modes none and poll


class RolloutError(UserError, RuntimeError):
    """A rollout, rollback or heal cannot go on; the message says why and what to do."""


class LoadRefused(RolloutError):
    """The server runs in model-control mode none (or poll): it loads nothing on request."""


class Admin:
    def __init__(self, url: str, key: str | None, timeout: float = 300.0):
        self.url = re.sub(r"^https?://", "", url).rstrip("/")
        self.base = "http://" + self.url
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
            raise LoadRefused(f"the server at {self.base} refuses to {action} models: it runs with "
                              "--model-control-mode none (or poll). Restart it to serve the repository's "
                              "files (`make down up`), or run it in explicit mode: "
                              "`python -m server up --model-control-mode explicit --load-model '*'`")
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


# ----------------------------------------------------------------------------------------------
# where a command finds the server

def add_target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server HTTP address (default: the running server's, else 127.0.0.1:8000)")
    p.add_argument("--model-repository", help="the repository the server reads (default: the running server's)")
    p.add_argument("--state-dir", help="the server's state folder: pidfile and admin key (default .triton)")
    p.add_argument("--admin-key", help="key for the repository API (default $TRITON_ADMIN_KEY or the state folder's)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole operation (default 600)")


def _settings(args) -> tuple[Path, ServerSettings]:
    state_dir = Path(args.state_dir or os.environ.get("TRITON_STATE_DIR") or DEFAULT_STATE_DIR)
    running = TritonServer.from_pidfile(state_dir)
    return state_dir, running.settings if running else ServerSettings.from_env(state_dir=state_dir)


def repository(args) -> Path:
    """--model-repository, else the running server's, else the default (model_repository/)."""
    return Path(args.model_repository) if args.model_repository else Path(_settings(args)[1].model_repository)


def target(args) -> tuple[Admin, Path]:
    """URL, repository and admin key: flags, else the running server's pidfile/state, else defaults."""
    state_dir, settings = _settings(args)
    url = args.url or settings.http_url
    repo = repository(args)
    key = args.admin_key or os.environ.get("TRITON_ADMIN_KEY")
    if not key:
        try:
            key = admin_key(state_dir, create=False)
        except ServerError as e:
            raise RolloutError(f"no admin key for the repository API: {e}") from None
    return Admin(url, key, timeout=args.timeout), repo
