"""python -m server install | serve | up | down | status | probe | admin-key | monitor | rollout | rollback

    install     copy Triton out of the nvidia-pytriton wheel into .triton/, perf_analyzer and
                Prometheus into .tools/
    serve       run Triton in the foreground until Ctrl-C / SIGTERM (it dies with this command)
    up          start Triton in the background; returns once it is ready (or fails with its log tail);
                `up --watch SECONDS` then stays to probe it and heal dead Python stubs (server/heal.py)
    down        stop the background server (and the Prometheus `monitor` started) and wait until
                its ports are free
    monitor     start Prometheus (127.0.0.1:9090) scraping the background server with the rules of
                deploy/monitoring/, and print what the recording rules compute
    status      pid, ports, readiness and models of the background server (exit 0 ready, 1 not, 3 none)
    probe       one real text through every ready ensemble (exit 1 naming each that fails: a dead
                Python stub leaves its model READY, so readiness alone misses it)
    admin-key   print the key for the restricted APIs (header `triton-admin-key`)
    rollout     load a rebuilt repository into a running server (explicit mode) with no failed
                requests; a failed load rolls back by itself; `rollout --heal` reloads dead stubs
    rollback    the repository and the running server return to the previous build
    drill       rehearse a rollout, a rollback or a killed stub under live traffic (figures)

Ports and paths come from flags, else TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT /
TRITON_HOST / TRITON_MODEL_REPOSITORY / TRITON_MODEL_CONTROL_MODE / TRITON_STATE_DIR, else defaults
(127.0.0.1, 8000/8001/8002, model_repository/, .triton/).
"""

import json
import os
import signal
import sys
import urllib.request

from contract import cli
from contract import metrics as model_metrics
from server import install, monitor
from server import probe as probing
from server.embedded import (ADMIN_HEADER, CONTROL_MODES, ServerError, ServerSettings, TritonServer,
                             admin_key, log_tail, read_pidfile)


def _settings(args, **overrides):
    return ServerSettings.from_env(
        model_repository=args.model_repository, host=args.host, http_port=args.http_port,
        grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode, load_models=args.load_model or None,
        repository_poll_secs=args.repository_poll_secs, exit_timeout_secs=args.exit_timeout_secs,
        log_verbose=args.log_verbose, state_dir=args.state_dir, **overrides)


def _print_endpoints(server):
    print(f"Triton ready (pid {server.pid}): http {server.http_url}  grpc {server.grpc_url}  "
          f"metrics {server.metrics_url}\n  log {server.log_path}")


def cmd_install(args):
    install.install(force=args.force, perf_analyzer=not args.no_perf_analyzer,
                    prometheus=not args.no_prometheus)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_serve(args):
    install.install_triton()
    server = TritonServer(_settings(args, die_with_parent=True))
    # SIGTERM (e.g. from `make` or a container runtime) takes the same clean path as Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        server.wait_ready(args.timeout)
        _print_endpoints(server)
        print("Ctrl-C to stop", flush=True)
        code = server.wait()          # returns when someone else stops it (`python -m server down`)
        server.stop()
        if code != 0:
            print(f"tritonserver exited with code {code}; log tail:\n{log_tail(server.log_path)}",
                  file=sys.stderr)
            return 1
        print("tritonserver stopped")
        return 0
    except KeyboardInterrupt:
        print("stopping Triton ...", flush=True)
        server.stop()
        return 0
    except BaseException:
        server.stop()
        raise


def cmd_up(args):
    install.install_triton()
    settings = _settings(args)
    running = TritonServer.from_pidfile(settings.state_dir)
    if running is not None:
        if not running.ready():
            raise ServerError(f"a server from {settings.state_dir} is running (pid {running.pid}) but is not "
                              f"ready; see {running.log_path} or `python -m server down`")
        print("already up")
        server = running
    else:
        server = TritonServer(settings).start()
        try:
            server.wait_ready(args.timeout)
        except BaseException:
            server.stop()
            raise
    _print_endpoints(server)
    if args.watch:
        return _watch(server, args.watch)
    return 0


def _watch(server, interval):
    from server.heal import Watcher

    watcher = Watcher(server, interval, log=lambda line: print(line, flush=True))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        watcher.run()
    except KeyboardInterrupt:
        print(f"stopped watching; the server keeps running (pid {watcher.server.pid}): `python -m server down`")
    return 0


def cmd_down(args):
    settings = ServerSettings.from_env(state_dir=args.state_dir)
    prometheus = monitor.Prometheus.from_pidfile(settings.state_dir)
    if prometheus is not None:
        prometheus.stop()
        print(f"stopped Prometheus (pid {prometheus.pid}); port {prometheus.port} is free")
    server = TritonServer.from_pidfile(settings.state_dir)
    if server is None:
        print(f"no server running from {settings.state_dir}")
        return 0
    server.stop()
    print(f"stopped Triton (pid {server.pid}); ports {server.settings.http_port}/"
          f"{server.settings.grpc_port}/{server.settings.metrics_port} are free")
    return 0


def cmd_status(args):
    settings = ServerSettings.from_env(state_dir=args.state_dir)
    info = read_pidfile(settings.state_dir)
    if info is None:
        print(f"no server running from {settings.state_dir}")
        return 3
    server = TritonServer.from_pidfile(settings.state_dir)
    ready = server.ready()
    print(f"pid {info['pid']}  started {info['started']}  {'READY' if ready else 'NOT READY'}\n"
          f"  http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}\n"
          f"  repository {info['model_repository']}\n  log {info['log']}")
    if ready:
        req = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}",
                                     method="POST", headers=server.admin_headers())
        with urllib.request.urlopen(req, timeout=5) as r:
            for m in json.load(r):
                print(f"  model {m['name']:<28} {m.get('version', '-'):>3}  {m.get('state', '')}"
                      f"  {m.get('reason', '')}")
    return 0 if ready else 1


def cmd_monitor(args):
    settings = ServerSettings.from_env(state_dir=args.state_dir)
    server = TritonServer.from_pidfile(settings.state_dir)
    if server is None or not server.ready():
        raise ServerError(f"no ready server from {settings.state_dir}: `make up` (python -m server up) first")
    install.install_prometheus()
    prometheus = monitor.Prometheus.from_pidfile(settings.state_dir)
    if prometheus is None:
        port = args.prometheus_port or int(os.environ.get("PROMETHEUS_PORT") or monitor.DEFAULT_PORT)
        target = f"{server.settings.client_host}:{server.settings.metrics_port}"
        prometheus = monitor.Prometheus(settings.state_dir, port).start(monitor.local_config(target))
        try:
            prometheus.wait_ready()
        except BaseException:
            prometheus.stop()
            raise
        print(f"Prometheus {prometheus.url} (pid {prometheus.pid}) scrapes Triton at {target}\n"
              f"  config {prometheus.config_path}\n  log {prometheus.log_path}")
    else:
        print(f"Prometheus already runs: {prometheus.url} (pid {prometheus.pid})")
    if not prometheus.wait_for(f'up{{job="{monitor.TRITON_JOB}"}} == 1', timeout=60):
        raise ServerError(f"Prometheus cannot scrape the server; see {prometheus.url}/api/v1/targets")
    # recording rules need one evaluation after the first scrapes
    prometheus.wait_for(monitor.rules("record")[0]["record"], timeout=60)
    names = prometheus.api("label/__name__/values")
    ours = sorted(set(names) & {n for m in model_metrics.ALL for n in model_metrics.exported_names(m)})
    print(f"series: {sum(n.startswith('nv_') for n in names)} Triton metric names (nv_*), "
          f"our models': {', '.join(ours) or 'none (is the repository built by this checkout?)'}\n")
    print(monitor.summary(prometheus))
    print(f"query it: curl '{prometheus.url}/api/v1/query?query=up'   stop: make down")
    return 0


def cmd_probe(args):
    settings = ServerSettings.from_env(state_dir=args.state_dir)
    running = TritonServer.from_pidfile(settings.state_dir)
    url = args.url or (running.http_url if running else settings.http_url)
    key = probing.read_key(args.admin_key, args.admin_key_file)
    if not key:
        try:
            key = admin_key(settings.state_dir, create=False)
        except ServerError:
            key = None
    try:
        results = probing.probe(url, key, args.model, args.timeout, require_ready=not args.ignore_readiness)
    except probing.ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return probing.report(results)


def add_probe_arguments(sp):
    add_state_dir(sp)
    probing.add_arguments(sp, default_url="")   # default: the running server's address


def cmd_admin_key(args):
    settings = ServerSettings.from_env(state_dir=args.state_dir)
    print(admin_key(settings.state_dir))
    return 0


def add_state_dir(sp):
    sp.add_argument("--state-dir", help="folder for pidfile, logs and admin key (default .triton)")


def add_install_arguments(sp):
    sp.add_argument("--force", action="store_true", help="reinstall even if present")
    sp.add_argument("--no-perf-analyzer", action="store_true", help="no perf_analyzer (no download)")
    sp.add_argument("--no-prometheus", action="store_true", help="no Prometheus (no Debian package)")


def add_monitor_arguments(sp):
    add_state_dir(sp)
    sp.add_argument("--prometheus-port", type=int, help=f"default $PROMETHEUS_PORT or {monitor.DEFAULT_PORT}")


def add_server_arguments(sp):
    add_state_dir(sp)
    sp.add_argument("--model-repository", help="default $TRITON_MODEL_REPOSITORY or model_repository/")
    sp.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)")
    sp.add_argument("--http-port", type=int)
    sp.add_argument("--grpc-port", type=int)
    sp.add_argument("--metrics-port", type=int)
    sp.add_argument("--model-control-mode", choices=CONTROL_MODES)
    sp.add_argument("--load-model", action="append", metavar="NAME",
                    help="explicit mode: load at start (repeatable, '*' for all)")
    sp.add_argument("--repository-poll-secs", type=int)
    sp.add_argument("--exit-timeout-secs", type=int)
    sp.add_argument("--log-verbose", type=int)
    sp.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")


def add_up_arguments(sp):
    add_server_arguments(sp)
    sp.add_argument("--watch", type=float, metavar="SECONDS",
                    help="stay and probe the server every SECONDS; reload dead Python stubs (explicit mode) or "
                         "restart the server (mode none); Ctrl-C stops watching, not the server")


COMMANDS = {
    "install": cli.Command("install tritonserver and perf_analyzer into the repository",
                           run=cmd_install, add_arguments=add_install_arguments),
    "serve": cli.Command("run in the foreground", run=cmd_serve, add_arguments=add_server_arguments),
    "up": cli.Command("start in the background and wait until ready (--watch: then heal it)", run=cmd_up,
                      add_arguments=add_up_arguments),
    "down": cli.Command("stop the background server", run=cmd_down, add_arguments=add_state_dir),
    "status": cli.Command("show the background server", run=cmd_status, add_arguments=add_state_dir),
    "probe": cli.Command("one real text through every ready ensemble; exit 1 naming each that fails",
                         run=cmd_probe, add_arguments=add_probe_arguments),
    "admin-key": cli.Command(f"print the {ADMIN_HEADER} value", run=cmd_admin_key, add_arguments=add_state_dir),
    "monitor": cli.Command("Prometheus with the repository's rules, scraping the background server",
                           run=cmd_monitor, add_arguments=add_monitor_arguments),
    "rollout": cli.Command("load a rebuilt repository into the running server (explicit mode), no failed "
                           "requests; --heal reloads dead stubs", module="server.rollout"),
    "drill": cli.Command("rehearse a rollout, a rollback or a killed stub under live traffic; print what "
                         "clients saw", module="server.drill"),
    "rollback": cli.Command("the repository and the running server return to the previous build",
                            module="server.rollout", run="run_rollback", add_arguments="add_rollback_arguments"),
}


def main(argv=None):
    return cli.main("python -m server", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
