"""python -m clients capacity on a small benchmark report in the schema clients/benchmark.py writes."""
import json
import subprocess
import sys

import pytest

from clients.capacity import CapacityError, load_report, plan
from server.install import REPO_ROOT

REPORT = {
    "meta": {"date": "2026-01-01 00:00 UTC", "batch_size": 32,
             "hardware": {"cpu": "Test CPU", "logical_cores": 2, "isa": ["avx2"], "gpus": []}},
    "rows": [
        {"model": "slow", "samples_per_s": 100.0, "p99_ms": 400.0},
        {"model": "fast", "samples_per_s": 320.0, "p99_ms": 120.0},
        {"model": "-", "samples_per_s": 999.0, "p99_ms": 1.0},          # the in-process baseline
    ],
    "sweep": {"model": "fast", "levels": [
        {"concurrency": 1, "samples_per_s": 50.0, "p99_ms": 20.0},
        {"concurrency": 4, "samples_per_s": 150.0, "p99_ms": 60.0},
        {"concurrency": 16, "samples_per_s": 200.0, "p99_ms": 150.0},
    ]},
}


@pytest.fixture
def report(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(REPORT))
    return path


def test_single_texts_use_the_best_sweep_level_within_the_p99(report):
    p = plan(load_report(report), report, target_rps=420, p99_ms=100)
    assert p["mu"] == 150.0 and p["how"] == "single-text requests at concurrency 4"
    assert p["replicas"] == 4 and p["with_spare"] == 5            # ceil(420 / (0.7 x 150)) = 4
    assert p["hpa_target_us"] == pytest.approx(0.7 / (2 * 150 * 0.3) * 1e6)
    relaxed = plan(load_report(report), report, target_rps=420, p99_ms=200)
    assert relaxed["mu"] == 200.0 and relaxed["replicas"] == 3


def test_batched_requests_use_the_fastest_row_within_the_p99(report):
    p = plan(load_report(report), report, target_rps=1000, p99_ms=200, texts_per_request=32)
    assert p["model"] == "fast" and p["replicas"] == 5            # ceil(1000 / 224)
    # the queue target is per request of 32 texts: 10 requests/s
    assert p["hpa_target_us"] == pytest.approx(0.7 / (2 * 10 * 0.3) * 1e6)


@pytest.mark.parametrize("kwargs, message", [
    ({"p99_ms": 10}, "cannot be met by adding replicas: one replica's best p99 for single texts is 20.0 ms"),
    ({"p99_ms": 100, "texts_per_request": 8}, "measured requests of 32 texts, not 8"),
    ({"p99_ms": 100, "model": "slow"}, "the sweep ran on fast, not slow"),
    ({"p99_ms": 100, "utilisation": 1.0}, "must be between 0 and 1"),
])
def test_impossible_or_mismatched_plans_say_why(report, kwargs, message):
    with pytest.raises(CapacityError, match=message):
        plan(load_report(report), report, target_rps=100, **kwargs)


def test_a_report_without_a_field_names_the_file_and_field(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"meta": {}, "rows": []}))
    with pytest.raises(CapacityError, match=f"{path}: no field 'sweep'"):
        plan(load_report(path), path, target_rps=100, p99_ms=100)
    with pytest.raises(CapacityError, match="run `make benchmark`"):
        load_report(tmp_path / "missing.json")


def test_the_command_prints_the_plan_and_its_assumptions(report):
    out = subprocess.run([sys.executable, "-m", "clients", "capacity", "--target-rps", "420", "--p99-ms", "100",
                          "--report", str(report)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "= 4; 5 with one spare" in out.stdout and "Test CPU, 2 cores" in out.stdout
    assert 'averageValue "7778"' in out.stdout and "assumes:" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "clients", "capacity", "--target-rps", "1", "--p99-ms", "1",
                          "--report", str(report)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert bad.returncode == 2 and "cannot be met" in bad.stderr
