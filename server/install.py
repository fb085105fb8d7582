"""Make a real Triton Inference Server (and perf_analyzer) runnable from this repository.

No Docker, no GPU, no system install: the PyPI wheel nvidia-pytriton==0.7.0 ships a complete
Triton 2.51.0 (the release inside nvcr.io/nvidia/tritonserver:24.10-py3) with its Python backend,
and the tritonclient==2.51.0 wheel carries the matching perf_analyzer binary. We copy both into
gitignored folders of the repository:

    .triton/tritonserver/   bin/tritonserver, backends/python/{libtriton_python.so, stub, utils}
    .tools/bin/perf_analyzer
    .tools/libb64/          libb64.so.0d (Debian package libb64-0d), only if the system lacks it
    .tools/prometheus/      usr/bin/prometheus and promtool (Debian package prometheus: static
                            binaries), unless both are on PATH already

Every step is idempotent and writes to a temporary path first, then renames, so an interrupted
install never leaves half a tree behind.
"""

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from contract.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
TRITON_HOME = REPO_ROOT / ".triton" / "tritonserver"
TOOLS_DIR = REPO_ROOT / ".tools"
PERF_ANALYZER = TOOLS_DIR / "bin" / "perf_analyzer"
LIBB64_DIR = TOOLS_DIR / "libb64"
PROMETHEUS_DIR = TOOLS_DIR / "prometheus"
PROMETHEUS_PACKAGE = "prometheus"   # Debian 12's is 2.42; its web UI needs other packages, the API does not

PYTRITON_VERSION = "0.7.0"          # ships Triton 2.51.0
TRITON_VERSION = "2.51.0"
PERF_ANALYZER_WHEEL = "tritonclient==2.51.0"
PERF_ANALYZER_MEMBER = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
MIN_GLIBC = (2, 35)                 # the wheel is manylinux_2_35
MARKER = ".installed.json"          # written last inside a finished install


class InstallError(UserError, RuntimeError):
    """Something the server or perf_analyzer needs is missing; the message says what and how to fix."""


# ----------------------------------------------------------------------------------------------
# where things are

def _package_dir(name):
    """Directory of an installed package without importing it (pytriton's import is heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pytriton_dir():
    d = _package_dir("pytriton")
    if d is None or not (d / "tritonserver" / "bin" / "tritonserver").is_file():
        raise InstallError(
            f"nvidia-pytriton=={PYTRITON_VERSION} is not installed in this interpreter "
            f"({sys.executable}); it provides the Triton server binary. "
            "Install the project's requirements (make setup) and retry.")
    return d


def pytriton_libs_dir():
    """The wheel's bundled shared libraries (libtritonserver, libcudart, ...), renamed by auditwheel."""
    d = pytriton_dir().parent / "nvidia_pytriton.libs"
    if not d.is_dir():
        raise InstallError(f"{d} is missing: the nvidia-pytriton wheel looks incomplete; reinstall it.")
    return d


def cudart_lib_dir():
    """libcudart.so.12 from PyPI nvidia-cuda-runtime-cu12 (perf_analyzer links it even on CPU)."""
    d = _package_dir("nvidia.cuda_runtime")
    if d is None or not (d / "lib" / "libcudart.so.12").is_file():
        raise InstallError(
            "libcudart.so.12 not found: install PyPI nvidia-cuda-runtime-cu12 (in requirements.txt); "
            "perf_analyzer needs it even without a GPU.")
    return d / "lib"


def python_lib_dir():
    """Where this interpreter's libpython lives; the Python-backend stub links libpython3.X.so."""
    return Path(sysconfig.get_config_var("LIBDIR") or "/usr/lib")


def stub_version():
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# ----------------------------------------------------------------------------------------------
# checks with clear errors

def check_platform():
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise InstallError(
            f"the embedded Triton runs on Linux x86_64 only (this is {sys.platform} {platform.machine()}); "
            "use the Docker setup (docker compose) elsewhere.")
    libc, version = platform.libc_ver()
    if libc != "glibc":
        raise InstallError(f"the Triton binary needs glibc >= {'.'.join(map(str, MIN_GLIBC))}; "
                           f"this system's C library is {libc or 'unknown'}.")
    have = tuple(int(x) for x in version.split(".")[:2])
    if have < MIN_GLIBC:
        raise InstallError(f"the Triton binary needs glibc >= {'.'.join(map(str, MIN_GLIBC))} "
                           f"(manylinux_2_35 wheel); this system has glibc {version}. "
                           "Use a newer distribution (Debian 12, Ubuntu 22.04+) or docker compose.")


def _check_stub_available(stubs_dir):
    stub = stubs_dir / stub_version() / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in stubs_dir.iterdir() if p.is_dir())
        raise InstallError(
            f"Python {stub_version()} is not supported by the Triton Python backend in "
            f"nvidia-pytriton=={PYTRITON_VERSION} (stubs exist for {', '.join(have)}); "
            "create the venv with one of those versions.")
    return stub


def _missing_libs(binary, env):
    """Names ldd cannot resolve for `binary` under `env` (empty list when all load)."""
    if shutil.which("ldd") is None:
        return []
    out = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True)
    return [line.split("=>")[0].strip() for line in out.stdout.splitlines() if "not found" in line]


# ----------------------------------------------------------------------------------------------
# atomic directory replace

def _replace_dir(tmp, final):
    """Move a finished tmp tree into place; an old tree is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _install_lock():
    """Serialise concurrent installs (two `make` targets, a test session) on one file lock."""
    import fcntl
    path = REPO_ROOT / ".triton" / "install.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_marker(d):
    try:
        return json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# tritonserver

def _triton_marker():
    return {"triton": TRITON_VERSION, "pytriton": PYTRITON_VERSION, "python": stub_version(),
            "source": str(pytriton_dir())}


def triton_installed():
    return _read_marker(TRITON_HOME) == _triton_marker()


def install_triton(force=False, log=print):
    """Copy tritonserver from the pytriton wheel into .triton/tritonserver with this Python's stub."""
    check_platform()
    src = pytriton_dir() / "tritonserver"
    stub = _check_stub_available(src / "python_backend_stubs")
    if triton_installed() and not force:
        log(f"tritonserver: already installed in {TRITON_HOME}")
        return TRITON_HOME
    TRITON_HOME.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tritonserver.tmp-", dir=TRITON_HOME.parent))
    try:
        tree = tmp / "tree"
        # the other Python versions' stubs are dead weight; __pycache__ would pin the wheel's Python
        shutil.copytree(src, tree, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        shutil.copy2(stub, tree / "backends" / "python" / "triton_python_backend_stub")
        (tree / MARKER).write_text(json.dumps(_triton_marker(), indent=1) + "\n")
        _replace_dir(tree, TRITON_HOME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, LD_LIBRARY_PATH=triton_ld_library_path())
    for binary in (TRITON_HOME / "bin" / "tritonserver",
                   TRITON_HOME / "backends" / "python" / "triton_python_backend_stub"):
        missing = _missing_libs(binary, env)
        if missing:
            raise InstallError(f"{binary} cannot load {', '.join(missing)}; "
                               f"(for libpython: install the shared libpython{stub_version()} of your Python)")
    log(f"tritonserver: Triton {TRITON_VERSION} installed in {TRITON_HOME} (Python {stub_version()} stub)")
    return TRITON_HOME


def tritonserver_path():
    exe = TRITON_HOME / "bin" / "tritonserver"
    if not triton_installed():
        raise InstallError(f"Triton is not installed in {TRITON_HOME} (or was installed for another "
                           "Python/wheel): run `python -m server install` (make install-server).")
    return exe


def triton_ld_library_path():
    """LD_LIBRARY_PATH for tritonserver and its Python stub (the copied binaries lost their RPATH)."""
    parts = [str(pytriton_libs_dir()), str(python_lib_dir())]
    if os.environ.get("LD_LIBRARY_PATH"):
        parts.append(os.environ["LD_LIBRARY_PATH"])
    return os.pathsep.join(parts)


# ----------------------------------------------------------------------------------------------
# perf_analyzer and its libraries

def _system_has_libb64():
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True)
    return out.returncode == 0 and "libb64.so.0d" in out.stdout


def libb64_dir():
    """Folder holding our own libb64.so.0d, or None when the system provides it."""
    for d in LIBB64_DIR.glob("usr/lib/*"):
        if (d / "libb64.so.0d").exists():
            return d
    return None


def _apt_download(package, dest, log, wanted="libb64.so.0d (needed by perf_analyzer)"):
    """The .deb of `package` downloaded into dest (nothing installed); `wanted` names it in errors."""
    def download():
        return subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
    if shutil.which("apt-get") is None:
        raise InstallError(f"{wanted} is missing and apt-get is not available to fetch the Debian "
                           f"package {package}; install {package} with your package manager.")
    out = download()
    if out.returncode != 0:
        log(f"{package}: apt-get download failed, running apt-get update once")
        upd = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        out = download()
        if out.returncode != 0:
            raise InstallError(f"could not download the Debian package {package} for {wanted}: "
                               f"{out.stderr.strip() or upd.stderr.strip()}")
    debs = list(Path(dest).glob(f"{package}_*.deb"))
    if not debs:
        raise InstallError(f"apt-get download {package} produced no .deb in {dest}")
    return debs[0]


def install_libb64(force=False, log=print):
    if not force and (libb64_dir() is not None or _system_has_libb64()):
        log("libb64: libb64.so.0d available")
        return
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="libb64.tmp-", dir=TOOLS_DIR) as tmp:
        tree = Path(tmp) / "tree"
        try:
            deb = _apt_download("libb64-0d", tmp, log)
            subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
            source = deb.name
        except (InstallError, subprocess.CalledProcessError, FileNotFoundError) as e:
            # offline or not Debian: the pytriton wheel bundles the same library under an
            # auditwheel-mangled name; the loader finds it by file name, so a renamed copy serves
            bundled = sorted(pytriton_libs_dir().glob("libb64-*.so.0d"))
            if not bundled:
                raise InstallError(f"libb64.so.0d (for perf_analyzer) not found: {e}") from e
            log(f"libb64: no Debian package ({str(e).splitlines()[0][:120]}); "
                f"using the copy bundled in nvidia-pytriton")
            dest = tree / "usr" / "lib" / "x86_64-linux-gnu"
            dest.mkdir(parents=True)
            shutil.copy2(bundled[0], dest / "libb64.so.0d")
            source = bundled[0].name
        _replace_dir(tree, LIBB64_DIR)
    if libb64_dir() is None:
        raise InstallError(f"{source} did not provide usr/lib/*/libb64.so.0d")
    log(f"libb64: {source} -> {LIBB64_DIR}")


def install_perf_analyzer(force=False, log=print):
    """Extract perf_analyzer from the tritonclient 2.51.0 wheel (only the binary, not its numpy<2 pins)."""
    if PERF_ANALYZER.is_file() and not force:
        log(f"perf_analyzer: already in {PERF_ANALYZER}")
    else:
        PERF_ANALYZER.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="perf_analyzer.tmp-", dir=TOOLS_DIR) as tmp:
            log(f"perf_analyzer: downloading {PERF_ANALYZER_WHEEL} (binary only)")
            out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                  PERF_ANALYZER_WHEEL, "-d", tmp], capture_output=True, text=True)
            wheels = list(Path(tmp).glob("tritonclient-2.51.0-*.whl"))
            if out.returncode != 0 or not wheels:
                raise InstallError(f"pip could not download {PERF_ANALYZER_WHEEL}: "
                                   f"{out.stderr.strip()[-800:] or 'no wheel found'}")
            with zipfile.ZipFile(wheels[0]) as zf:
                if PERF_ANALYZER_MEMBER not in zf.namelist():
                    raise InstallError(f"{wheels[0].name} has no {PERF_ANALYZER_MEMBER}")
                part = Path(tmp) / "perf_analyzer"
                part.write_bytes(zf.read(PERF_ANALYZER_MEMBER))
            part.chmod(0o755)
            os.replace(part, PERF_ANALYZER)   # same filesystem: atomic
        log(f"perf_analyzer: installed {PERF_ANALYZER}")
    install_libb64(force=force, log=log)
    missing = _missing_libs(PERF_ANALYZER, perf_analyzer_env())
    if missing:
        raise InstallError(f"perf_analyzer cannot load {', '.join(missing)} "
                           f"(LD_LIBRARY_PATH={perf_analyzer_env()['LD_LIBRARY_PATH']})")


def perf_analyzer_path():
    """Path to the installed perf_analyzer; run it with env=perf_analyzer_env()."""
    if not PERF_ANALYZER.is_file():
        raise InstallError(f"perf_analyzer is not installed ({PERF_ANALYZER}): "
                           "run `python -m server install` (make install-server).")
    return PERF_ANALYZER


def perf_analyzer_env(base=None):
    """Environment for running perf_analyzer: libb64 and libcudart on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    parts = [str(p) for p in (libb64_dir(), cudart_lib_dir()) if p is not None]
    if env.get("LD_LIBRARY_PATH"):
        parts.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
    return env


# ----------------------------------------------------------------------------------------------
# Prometheus (make monitor, the rule tests)

def prometheus_tool(name="prometheus"):
    """Path of `prometheus` or `promtool`: ours under .tools/prometheus, else the one on PATH."""
    ours = PROMETHEUS_DIR / "usr" / "bin" / name
    if ours.is_file():
        return ours
    found = shutil.which(name)
    if found:
        return Path(found)
    raise InstallError(f"{name} not found in {ours.parent} nor on PATH: run `python -m server install` "
                       f"(make setup), which takes Debian's {PROMETHEUS_PACKAGE} package into {PROMETHEUS_DIR}")


def prometheus_version():
    out = subprocess.run([str(prometheus_tool()), "--version"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0] if first else "unknown"


def install_prometheus(force=False, log=print):
    """prometheus + promtool from Debian's package, unpacked with dpkg -x (no system install)."""
    if not force:
        try:
            tools = [prometheus_tool(n) for n in ("prometheus", "promtool")]
            log(f"prometheus: {tools[0]} and {tools[1]} available")
            return tools[0]
        except InstallError:
            pass
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prometheus.tmp-", dir=TOOLS_DIR) as tmp:
        tree = Path(tmp) / "tree"
        deb = _apt_download(PROMETHEUS_PACKAGE, tmp, log, wanted="prometheus and promtool")
        try:
            subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True, capture_output=True, text=True)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            raise InstallError(f"could not unpack {deb.name} with dpkg -x: {getattr(e, 'stderr', '') or e}") from e
        for name in ("prometheus", "promtool"):
            if not (tree / "usr" / "bin" / name).is_file():
                raise InstallError(f"{deb.name} has no usr/bin/{name}")
        _replace_dir(tree, PROMETHEUS_DIR)
    log(f"prometheus: {deb.name} -> {PROMETHEUS_DIR} ({prometheus_version()})")
    return prometheus_tool()


# ----------------------------------------------------------------------------------------------

def install(force=False, perf_analyzer=True, prometheus=True, log=print):
    """Everything `python -m server install` does; safe to run again (skips what is in place)."""
    with _install_lock():
        install_triton(force=force, log=log)
        if perf_analyzer:
            install_perf_analyzer(force=force, log=log)
        if prometheus:
            install_prometheus(force=force, log=log)
