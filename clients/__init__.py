"""Clients of the served ensembles: classify (HTTP/gRPC), benchmark, perf_analyzer and locust runs."""
