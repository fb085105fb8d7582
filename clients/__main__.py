"""python -m clients classify | benchmark | perf | load | overload | capacity | request-cost | op-profile

    classify    texts (arguments, --file, or '-' for stdin) -> label and probabilities
    benchmark   per-ensemble samples/s, latency, accuracy on the test split -> reports/benchmark.{md,json,png}
    perf        NVIDIA perf_analyzer over a concurrency range -> reports/perf/<model>.csv
    load        bounded headless locust run on the HTTP endpoint -> reports/load/
    overload    open-loop arrivals at 3x capacity: answered or refused as busy, p99, memory -> reports/overload/
    capacity    replicas for a request rate and p99, from reports/benchmark.json
    request-cost  one text at a time through one ensemble on one or more servers, side by side
    op-profile  where a served ONNX graph's time goes, by operator type (in-process, ONNX Runtime's profiler)

The clients need no torch and none of the training/ or build/ modules: requirements-client.txt installs
what they need.
"""
import sys

from contract.cli import Command, main as run_cli

COMMANDS = {
    "classify": Command("classify texts on the running server", "clients.classify", run="main"),
    "benchmark": Command("per-backend throughput/latency/accuracy table", "clients.benchmark", run="main"),
    "perf": Command("perf_analyzer over a concurrency range", "clients.perf", run="main"),
    "load": Command("headless locust run against the HTTP endpoint", "clients.load", run="main"),
    "overload": Command("open-loop load past capacity: the server sheds it", "clients.overload", run="main"),
    "capacity": Command("replicas needed for a request rate and p99 (Kubernetes)", "clients.capacity", run="main"),
    "request-cost": Command("one text at a time through one ensemble on several servers, with Triton's breakdown",
                            "clients.request_cost", run="main"),
    "op-profile": Command("where a served ONNX graph's time goes, by operator type", "clients.op_profile", run="main"),
}


def main(argv=None):
    return run_cli("python -m clients", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
