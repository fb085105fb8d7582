"""python -m clients classify | benchmark | perf | load

    classify    texts (arguments, --file, or '-' for stdin) -> label and probabilities
    benchmark   per-ensemble samples/s, latency, accuracy on the test split -> reports/benchmark.{md,json,png}
    perf        NVIDIA perf_analyzer over a concurrency range -> reports/perf/<model>.csv
    load        bounded headless locust run on the HTTP endpoint -> reports/load/
    capacity    replicas for a request rate and p99, from reports/benchmark.json
"""
import argparse
import importlib
import sys

from clients.classify import ClientError

COMMANDS = {
    "classify": ("clients.classify", "classify texts on the running server"),
    "benchmark": ("clients.benchmark", "per-backend throughput/latency/accuracy table"),
    "perf": ("clients.perf", "perf_analyzer over a concurrency range"),
    "load": ("clients.load", "headless locust run against the HTTP endpoint"),
    "capacity": ("clients.capacity", "replicas needed for a request rate and p99 (Kubernetes)"),
}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m clients", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    # import only the chosen command's module (benchmark pulls in torch, load pulls in nothing heavy)
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        if argv and argv[0] == name:
            mod = importlib.import_module(module)
            mod.add_arguments(sp)
            sp.set_defaults(fn=mod.main)
            sp.description = mod.__doc__
            sp.formatter_class = argparse.RawDescriptionHelpFormatter
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
