"""Run the embedded Triton Inference Server (installed by server/install.py) as a child process.

    settings = ServerSettings.from_env(model_repository="model_repository")
    with TritonServer(settings) as server:      # start() + wait_ready(); stop() on exit
        ...  # clients talk to server.http_url / server.grpc_url

State lives in a folder (default .triton/): the admin key, logs/tritonserver-<http port>.log and
server.pid, so `python -m server up` in one process and `python -m server down` in another
find the same server. One managed server per state folder.

Security: the server binds 127.0.0.1 unless told otherwise, and the APIs that change the server
(model load/unload, repository index, shared-memory registration, log and trace settings, which
can point at arbitrary files) are restricted: an HTTP request must carry the header
`triton-admin-key: <key>`, a gRPC call the metadata `triton-grpc-protocol-triton-admin-key: <key>`
(admin_headers() gives both). Inference, health, metadata, model config and statistics stay open,
so ordinary clients and perf_analyzer need no key.

Longer than 400 lines on purpose: the settings, the admin key, the pidfile and the child process
are one server's state, read together by `python -m server`, the rollout and the tests.
"""

import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import psutil

from contract.errors import UserError
from contract.files import atomic_write_json
from server import install

REPO_ROOT = install.REPO_ROOT
DEFAULT_STATE_DIR = REPO_ROOT / ".triton"
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"

ADMIN_HEADER = "triton-admin-key"
# Triton checks gRPC restricted-protocol keys under this prefix (seen in 2.51's refusal message)
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER
# API groups needing the admin key (names from `tritonserver --help`, same for HTTP and gRPC)
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
CONTROL_MODES = ("none", "explicit", "poll")


class ServerError(UserError, RuntimeError):
    """The server could not be started, became unhealthy or could not be stopped."""


class PortInUseError(ServerError):
    pass


# ----------------------------------------------------------------------------------------------
# settings

def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ServerError(f"environment variable {name}={value!r} is not an integer port") from None


@dataclass
class ServerSettings:
    model_repository: Path = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"          # 0.0.0.0 exposes the server to the network: opt in explicitly
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: str = "none"  # none: load all at start | explicit: API/--load-model | poll
    load_models: tuple = ()           # explicit mode: models to load at start ("*" = all)
    repository_poll_secs: int = 5
    exit_timeout_secs: int = 3        # in-flight work a SIGTERM waits for (Triton's default is 30)
    # A model that fails to load at start: True (Triton's default) stops the server at once, so
    # `make up`, the demo and the tests fail within seconds with the log tail naming the model.
    # The GPU container runs False (docker-compose.yml, docs/gpu.md): the other models keep serving
    # and readiness stays false, since there an exit becomes a restart loop. TRITON_EXIT_ON_ERROR.
    exit_on_error: bool = True
    log_verbose: int = 0
    state_dir: Path = DEFAULT_STATE_DIR
    extra_args: tuple = field(default=())
    # The server gets SIGTERM when the process that started it dies, even by SIGKILL (Linux
    # PR_SET_PDEATHSIG), and Triton's shutdown ends its Python stubs: no orphans after a test run
    # or `serve` is killed. Off for `up`, whose server outlives the command by design. The kernel
    # ties it to the starting *thread*: start such a server from a thread that lives as long as it.
    die_with_parent: bool = False

    @classmethod
    def from_env(cls, **overrides):
        """Defaults, then TRITON_* environment variables, then explicit (non-None) overrides."""
        s = cls(
            model_repository=Path(os.environ.get("TRITON_MODEL_REPOSITORY") or DEFAULT_REPOSITORY),
            host=os.environ.get("TRITON_HOST") or "127.0.0.1",
            http_port=_env_int("TRITON_HTTP_PORT", 8000),
            grpc_port=_env_int("TRITON_GRPC_PORT", 8001),
            metrics_port=_env_int("TRITON_METRICS_PORT", 8002),
            model_control_mode=os.environ.get("TRITON_MODEL_CONTROL_MODE") or "none",
            state_dir=Path(os.environ.get("TRITON_STATE_DIR") or DEFAULT_STATE_DIR),
            exit_on_error=os.environ.get("TRITON_EXIT_ON_ERROR", "true").strip().lower() not in ("false", "0", "no"),
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for k in ("model_repository", "state_dir"):
            if k in overrides:
                overrides[k] = Path(overrides[k])
        if "load_models" in overrides:
            overrides["load_models"] = tuple(overrides["load_models"])
        return replace(s, **overrides)

    def validate(self):
        if self.model_control_mode not in CONTROL_MODES:
            raise ServerError(f"model control mode {self.model_control_mode!r} is not one of {CONTROL_MODES}")
        if self.load_models and self.model_control_mode != "explicit":
            raise ServerError("--load-model only applies with model control mode 'explicit' "
                              f"(got {self.model_control_mode!r})")
        if "*" in self.load_models and len(self.load_models) > 1:
            raise ServerError("--load-model '*' must be the only --load-model")
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ServerError(f"{name} port {port} is not in 1..65535")
        if len(set(ports.values())) != 3:
            raise ServerError(f"the http, grpc and metrics ports must differ: {ports}")
        repo = Path(self.model_repository)
        if not repo.is_dir():
            raise ServerError(f"model repository {repo} does not exist "
                              "(build one with `make repository`, or pass --model-repository)")

    @property
    def client_host(self):
        """Where a local client connects: a wildcard bind is reachable on loopback."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)

    @property
    def http_url(self):   # tritonclient style, no scheme
        return f"{self.client_host}:{self.http_port}"

    @property
    def grpc_url(self):
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def metrics_url(self):
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    @property
    def log_path(self):
        return Path(self.state_dir) / "logs" / f"tritonserver-{self.http_port}.log"

    @property
    def pid_path(self):
        return Path(self.state_dir) / "server.pid"


# ----------------------------------------------------------------------------------------------
# admin key for the restricted APIs

_KEY_RE = re.compile(r"^[A-Za-z0-9._~-]{16,}$")   # no ':' ',' '=': they would break Triton's flag


def admin_key(state_dir=None, create=True):
    """TRITON_ADMIN_KEY if set, else the key saved in <state_dir>/admin_key (created 0600 once)."""
    key = os.environ.get("TRITON_ADMIN_KEY")
    if key:
        if not _KEY_RE.match(key):
            raise ServerError("TRITON_ADMIN_KEY must be at least 16 characters of A-Z a-z 0-9 . _ ~ -")
        return key
    path = Path(state_dir or DEFAULT_STATE_DIR) / "admin_key"
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = path.read_text().strip()
        if not _KEY_RE.match(key):
            raise ServerError(f"{path} does not hold a valid admin key; delete it to generate a new one")
        return key
    if not create:
        raise ServerError(f"no admin key: set TRITON_ADMIN_KEY or start the server once to create {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".admin_key.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    try:
        os.link(tmp, path)        # fails if another process created it meanwhile: then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def admin_headers(state_dir=None, key=None):
    """Headers that unlock the restricted APIs, for tritonclient's `headers=` over HTTP and gRPC alike:
    HTTP reads `triton-admin-key`, gRPC `triton-grpc-protocol-triton-admin-key`; each ignores the other."""
    key = key or admin_key(state_dir, create=False)
    return {ADMIN_HEADER: key, GRPC_ADMIN_HEADER: key}


def restricted_api_args(key, apis=RESTRICTED_APIS):
    """Triton 2.51 syntax, checked against the binary: --http-restricted-api=<api>,<api>:<header>=<value>."""
    spec = f"{','.join(apis)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


# ----------------------------------------------------------------------------------------------
# ports and processes

def port_in_use(host, port):
    """True if something listens on (host, port): we try to bind it as the server would."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: sockets lingering in TIME_WAIT do not block a new server, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _ports(settings):
    return [("HTTP", settings.http_port), ("gRPC", settings.grpc_port), ("metrics", settings.metrics_port)]


def _busy_ports(settings):
    return [(name, port) for name, port in _ports(settings) if port_in_use(settings.host, port)]


def pid_alive(pid):
    """Alive and not a zombie (a zombie is dead; its parent has just not reaped it yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def runs(pid, program: str) -> bool:
    """Process `pid` is alive (not a zombie) and its command line names `program`."""
    try:
        return pid_alive(pid) and any(program in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def log_tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def last_error(path):
    """The log's last error line (Triton starts them with E<date>), else its last line: what a
    one-line error message can quote."""
    lines = [line.strip() for line in log_tail(path, 200).splitlines() if line.strip()]
    errors = [line for line in lines if line[:1] == "E" and line[1:5].isdigit()]
    return (errors or lines or ["(empty log)"])[-1][:300]


def http_ready(url_host_port, timeout=1.0):
    try:
        with urllib.request.urlopen(f"http://{url_host_port}/v2/health/ready", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _check_numpy():
    # the Python-backend stub runs this venv's python3; numpy 2 crashes it on string tensors
    try:
        v = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        raise ServerError("numpy is not installed in this venv; the Python backend needs numpy<2") from None
    if int(v.split(".")[0]) >= 2:
        raise ServerError(f"numpy {v} is installed; Triton 2.51's Python backend needs numpy<2 "
                          "(string inputs crash the stub): pip install 'numpy<2'")


# ----------------------------------------------------------------------------------------------

class TritonServer:
    def __init__(self, settings=None, **overrides):
        self.settings = replace(settings, **overrides) if settings else ServerSettings.from_env(**overrides)
        self._proc = None
        self.pid = None

    # convenience passthroughs for clients
    http_url = property(lambda self: self.settings.http_url)
    grpc_url = property(lambda self: self.settings.grpc_url)
    metrics_url = property(lambda self: self.settings.metrics_url)
    log_path = property(lambda self: self.settings.log_path)

    def admin_headers(self):
        return admin_headers(key=admin_key(self.settings.state_dir))

    def command(self):
        s = self.settings
        home = install.tritonserver_path().parent.parent
        cmd = [str(home / "bin" / "tritonserver"),
               f"--model-repository={Path(s.model_repository).resolve()}",
               f"--backend-directory={home / 'backends'}",
               f"--cache-directory={home / 'caches'}",
               f"--http-address={s.host}", f"--http-port={s.http_port}",
               f"--grpc-address={s.host}", f"--grpc-port={s.grpc_port}",
               f"--metrics-address={s.host}", f"--metrics-port={s.metrics_port}",
               f"--exit-timeout-secs={s.exit_timeout_secs}",
               f"--exit-on-error={str(bool(s.exit_on_error)).lower()}",
               "--metrics-config=summary_latencies=true",   # p50/p99 for the monitoring rules
               f"--model-control-mode={s.model_control_mode}",
               f"--log-verbose={s.log_verbose}"]
        if s.model_control_mode == "poll":
            cmd.append(f"--repository-poll-secs={s.repository_poll_secs}")
        cmd += [f"--load-model={m}" for m in s.load_models]
        cmd += restricted_api_args(admin_key(s.state_dir))
        return cmd + list(s.extra_args)

    def environment(self):
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = install.triton_ld_library_path()
        # the stub starts the first python3 on PATH: make it this venv's (numpy<2, tokenizers, ...)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("PYTHONHOME", None)
        return env

    # -- pidfile ---------------------------------------------------------------------------------
    def _write_pidfile(self):
        s = self.settings
        info = {"pid": self.pid, "host": s.host, "http_port": s.http_port, "grpc_port": s.grpc_port,
                "metrics_port": s.metrics_port, "model_repository": str(Path(s.model_repository).resolve()),
                "model_control_mode": s.model_control_mode, "load_models": list(s.load_models),
                "exit_on_error": s.exit_on_error, "exit_timeout_secs": s.exit_timeout_secs,
                "log": str(s.log_path), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(s.pid_path, info, indent=1)

    @classmethod
    def from_pidfile(cls, state_dir=None):
        """The server recorded in <state_dir>/server.pid if it still runs, else None."""
        info = read_pidfile(state_dir)
        if info is None:
            return None
        defaults = ServerSettings()
        settings = ServerSettings(model_repository=Path(info["model_repository"]), host=info["host"],
                                  http_port=info["http_port"], grpc_port=info["grpc_port"],
                                  metrics_port=info["metrics_port"],
                                  model_control_mode=info.get("model_control_mode", defaults.model_control_mode),
                                  load_models=tuple(info.get("load_models", ())),
                                  exit_on_error=info.get("exit_on_error", defaults.exit_on_error),
                                  exit_timeout_secs=info.get("exit_timeout_secs", defaults.exit_timeout_secs),
                                  state_dir=Path(state_dir or DEFAULT_STATE_DIR))
        server = cls(settings)
        server.pid = info["pid"]
        return server

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self):
        s = self.settings
        s.validate()
        _check_numpy()
        running = read_pidfile(s.state_dir)
        if running is not None:
            raise ServerError(f"a server from {s.state_dir} is already running (pid {running['pid']}, "
                              f"http port {running['http_port']}): `python -m server down` first")
        busy = _busy_ports(s)
        if busy:
            what = ", ".join(f"{name} port {port}" for name, port in busy)
            raise PortInUseError(
                f"cannot start Triton: {what} on {s.host} already in use (another server? "
                "`python -m server down`, or choose ports with TRITON_HTTP_PORT/TRITON_GRPC_PORT/"
                "TRITON_METRICS_PORT or --http-port/--grpc-port/--metrics-port)")
        cmd = self.command()
        s.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(s.log_path, "w") as log:
            shown = (re.sub(f"{ADMIN_HEADER}=.*", f"{ADMIN_HEADER}=<key>", c) for c in cmd)
            log.write("$ " + " ".join(shown) + "\n")   # the log never holds the key
            log.flush()
            # own session: Ctrl-C in a terminal reaches us, not the server, so we can stop it cleanly;
            # and a final SIGKILL can take the whole group, Python stubs included
            self._proc = subprocess.Popen(cmd, env=self.environment(), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with(os.getpid()) if s.die_with_parent else None)
        self.pid = self._proc.pid
        self._write_pidfile()
        return self

    def wait(self):
        """Block until a server started by this object exits; its exit code."""
        return self._proc.wait()

    def running(self):
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def ready(self):
        """/v2/health/ready answers 200 and the gRPC and metrics ports listen too: Triton opens them
        after HTTP, so a gRPC client right after HTTP readiness could find its port closed."""
        return (self.running() and http_ready(self.http_url)
                and len(_busy_ports(self.settings)) == len(_ports(self.settings)))

    def wait_ready(self, timeout=120.0):
        """Block until ready() (HTTP health and every port); raise with the log tail if the server dies first."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                code = self._proc.returncode if self._proc is not None else "?"
                self._forget()
                raise ServerError(f"tritonserver exited (code {code}) before becoming ready: "
                                  f"{last_error(self.log_path)} (log {self.log_path})\n{log_tail(self.log_path)}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver not ready after {timeout:.0f} s on {self.http_url}: "
                                  f"{last_error(self.log_path)} (log {self.log_path})\n{log_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self, grace=None, port_timeout=15.0):
        """SIGTERM, wait (exit timeout + margin), SIGKILL the group; then wait until the ports are free."""
        if self.pid is None:
            return False
        grace = self.settings.exit_timeout_secs + 15 if grace is None else grace
        if self.running() and (self._proc is not None or runs(self.pid, "tritonserver")):
            os.kill(self.pid, signal.SIGTERM)
            if not self._wait_exit(grace):
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if not self._wait_exit(10):
                    raise ServerError(f"tritonserver pid {self.pid} survived SIGKILL")
        self._forget()
        deadline = time.monotonic() + port_timeout
        while _busy_ports(self.settings):
            if time.monotonic() > deadline:
                busy = ", ".join(f"{n} {p}" for n, p in _busy_ports(self.settings))
                raise ServerError(f"tritonserver stopped but ports are still in use after "
                                  f"{port_timeout:.0f} s: {busy}")
            time.sleep(0.1)
        return True

    def _wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.1)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not pid_alive(self.pid):
                return True
            time.sleep(0.1)
        return False

    def _forget(self):
        info = read_pidfile(self.settings.state_dir, check_alive=False)
        if info is not None and info.get("pid") == self.pid:
            self.settings.pid_path.unlink(missing_ok=True)

    def __enter__(self):
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


def _die_with(parent_pid):
    """preexec_fn: SIGTERM this child when the starting thread's process dies (even if the parent was
    SIGKILLed before prctl ran: then the parent id has changed already)."""
    def arm():
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


def read_pidfile_at(path: Path, program: str | None = None):
    """A JSON pidfile's contents, None if there is none; with `program`, also None (and the file
    removed) unless its process still runs that program, so a crashed one never blocks a start."""
    try:
        info = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ServerError(f"{path} is not a valid pidfile; delete it if no {program or 'process'} "
                          "is running") from None
    if program and not runs(info["pid"], program):
        Path(path).unlink(missing_ok=True)
        return None
    return info


def read_pidfile(state_dir=None, check_alive=True):
    """Contents of <state_dir>/server.pid; with check_alive, None (and the file removed) if stale."""
    return read_pidfile_at(Path(state_dir or DEFAULT_STATE_DIR) / "server.pid", "tritonserver" if check_alive else None)
