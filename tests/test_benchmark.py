"""A short bounded benchmark and perf_analyzer run against the real embedded Triton (tiny model).

These check that the reports are complete and the figures are real measurements (positive,
consistent), not how fast anything is: speed figures come from `make benchmark`, never from tests.
"""
import csv
import json
import subprocess

import pytest

from clients.__main__ import main as cli
from clients.baseline import InProcessOnnx, ServedFiles, find_in_repository
from clients.benchmark import describe, graph_of
from tiny_bert import SERVED_ENSEMBLES as ENSEMBLES
from clients.texts import held_out_texts

COLUMNS = ("Framework", "Precision", "Samples/s", "Speedup", "p50 ms", "p95 ms", "p99 ms", "Accuracy", "Recovery",
           "FLOP util.", "Hardware")


@pytest.mark.server
def test_short_benchmark_writes_complete_reports(tiny_served, tmp_path, capsys):
    out = tmp_path / "reports"
    rc = cli(["benchmark", "--url", tiny_served.grpc_url, "--protocol", "grpc",
              "--texts", str(tiny_served.texts_csv), "--label-column", "label", "--limit", "48",
              "--batch-size", "16", "--rounds", "2", "--sweep-levels", "1,4", "--sweep-texts", "8",
              "--matmul-reps", "1", "--request-cost-texts", "6", "--repository", str(tiny_served.repository),
              "--admin-key", tiny_served.admin_key, "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "benchmark.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert set(rows) == set(ENSEMBLES) | {"-"}          # every ensemble + the in-process baseline
    for r in doc["rows"]:
        assert r["samples_per_s"] > 0 and len(r["rounds_samples_per_s"]) == 2
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["requests"] == 3                       # 48 texts / 16 per request
        assert 0.0 <= r["accuracy"] <= 1.0 and r["recovery"] > 0 and r["speedup"] > 0
        assert r["flop_utilisation"] > 0
    assert rows["bert_pytorch_fp32"]["speedup"] == pytest.approx(1.0)
    # ratios are taken within each round (the machine drifts between rounds), then the median
    ref, onnx, base = rows["bert_pytorch_fp32"], rows["bert_onnx_fp32"], rows["-"]
    per_round = [a / b for a, b in zip(onnx["rounds_samples_per_s"], ref["rounds_samples_per_s"])]
    assert onnx["speedup"] == pytest.approx(sum(per_round) / 2)           # median of two rounds
    per_round = [a / b for a, b in zip(onnx["rounds_samples_per_s"], base["rounds_samples_per_s"])]
    assert doc["targets"]["ensemble_vs_in_process"]["value"] == pytest.approx(sum(per_round) / 2)
    assert rows["bert_pytorch_fp32"]["recovery"] == pytest.approx(1.0)
    # fp32 ONNX through Triton and in-process run the same graph on the same texts: same answers
    assert rows["bert_onnx_fp32"]["accuracy"] == rows["-"]["accuracy"]
    meta = doc["meta"]
    assert meta["matmul"]["gflops"] > 0 and meta["flops"]["mean_tokens"] > 2
    assert meta["matmul"]["source"] == "ONNX Runtime MatMul" and meta["matmul"]["threads"] >= 1
    assert len(meta["matmul"]["rounds_gflops"]) == 2       # one rate per round, each round read against it
    int8_rate = meta["matmul_int8"]
    assert int8_rate["source"] == "ONNX Runtime MatMulInteger" and int8_rate["unit"] == "GOP/s"
    assert len(int8_rate["rounds_gflops"]) == 2 and int8_rate["threads"] == meta["matmul"]["threads"]
    # INT8 backends are read against the INT8 rate of their round, every other CPU backend against fp32
    for r in doc["rows"]:
        rate = int8_rate if r["precision"] == "INT8" else meta["matmul"]
        per_round = sorted(x * meta["flops"]["per_sample"] / (g * 1e9)
                           for x, g in zip(r["rounds_samples_per_s"], rate["rounds_gflops"]))
        assert r["gemm_rate"] == rate["dtype"] and r["flop_utilisation"] == pytest.approx(sum(per_round) / 2)
    assert rows["bert_onnx_int8dyn"]["precision"] == "INT8" and rows["bert_onnx_int8dyn"]["graph"].startswith("dyn")
    assert meta["hardware"]["cpu"] and meta["hardware"]["logical_cores"] >= 1
    assert meta["hardware"]["int8_kernel"] and isinstance(meta["hardware"]["instruction_sets"], list)
    # the cost of one request: every backend served, the ONNX ones also in-process, with the breakdown
    cost = {c["model"]: c for c in doc["request_cost"]["rows"]}
    assert set(cost) == set(ENSEMBLES) and doc["request_cost"]["texts"] == 6
    for name, c in cost.items():
        assert 0 < c["served"]["p50_ms"] <= c["served"]["p99_ms"]
        assert [s["model"] for s in c["steps"]] == ["tokenizer", f"{name}_model"]
        assert all(s["requests"] == 6 and s["compute_infer_ms"] > 0 for s in c["steps"])
        assert 0 < c["ensemble_ms"] < c["served_mean_ms"]          # the server's part of what the client saw
        has_twin = name != "bert_pytorch_fp32"
        assert (c["in_process"] is not None) == has_twin
        if has_twin:
            assert c["server_cost_p50_ms"] == pytest.approx(c["served"]["p50_ms"] - c["in_process"]["p50_ms"])
    assert doc["targets"]["request_cost_ms"]["value"] == cost["bert_onnx_fp32"]["server_cost_p50_ms"]
    assert doc["targets"]["request_cost_ms"]["better"] == "lower"
    sweep = doc["sweep"]
    assert [lv["concurrency"] for lv in sweep["levels"]] == [1, 4]
    assert all(lv["samples_per_s"] > 0 and lv["requests"] == 16 for lv in sweep["levels"])
    # each round also sends the sweep's texts in batches; levels are compared within their round
    assert len(sweep["batch_rounds"]) == 2 and all(x > 0 for x in sweep["batch_rounds"])
    for lv in sweep["levels"]:
        assert min(r / b for r, b in zip(lv["rounds"], sweep["batch_rounds"])) <= lv["vs_batch"] \
            <= max(r / b for r, b in zip(lv["rounds"], sweep["batch_rounds"]))
    for key in ("flop_utilisation", "int8_flop_utilisation", "ensemble_vs_in_process", "concurrency_vs_batch",
                "int8_recovery"):
        assert doc["targets"][key]["value"] > 0
    md = (out / "benchmark.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Framework"))
    assert all(c in header for c in COLUMNS)
    assert md.count("| ONNX Runtime |") == 3 and "Concurrency sweep" in md
    assert "## INT8 by instruction set" in md and "| bert_onnx_int8dyn | dynamic (MatMulInteger) |" in md
    assert "## The cost of one request" in md and "| bert_onnx_fp32 | outside the server" in md
    assert f"INT8 GEMM on {meta['hardware']['int8_kernel']}" in md
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp"))                   # no temp files left behind


@pytest.mark.server
def test_benchmark_discovers_only_bert_ensembles(tiny_served):
    from clients.classify import Classifier, discover_ensembles
    clf = Classifier(tiny_served.http_url, "http", admin_key=tiny_served.admin_key)
    assert discover_ensembles(clf) == list(ENSEMBLES)


def _perf_analyzer_runs():
    try:
        from server.install import perf_analyzer_env, perf_analyzer_path
        exe, env = perf_analyzer_path(), perf_analyzer_env()
    except Exception as e:   # not installed, or its libraries missing
        return f"perf_analyzer is not installed ({e})"
    proc = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"perf_analyzer cannot run here: {(proc.stdout + proc.stderr).strip()[-300:]}"
    return None


@pytest.mark.server
def test_short_perf_analyzer_run(tiny_served, tmp_path):
    why = _perf_analyzer_runs()
    if why:
        pytest.skip(why)
    out = tmp_path / "perf"
    rc = cli(["perf", "--url", tiny_served.grpc_url, "--models", "bert_onnx_fp32", "--concurrency", "1,2",
              "--measurement-ms", "500", "--max-trials", "4", "--texts", str(tiny_served.texts_csv),
              "--limit", "32", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "input_data.json").read_text())["data"]
    assert len(data) == 32 and all(isinstance(d["text"][0], str) and d["text"][0] for d in data)
    rows = list(csv.DictReader((out / "bert_onnx_fp32.csv").open()))
    assert [int(r["Concurrency"]) for r in rows] == [1, 2]
    assert all(float(r["Inferences/Second"]) > 0 and int(r["p99 latency"]) > 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == []


def test_held_out_texts_come_from_the_saved_split(tmp_path):
    from contract.data import load_csv
    from contract.split import make_split, save_split
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    ds = load_csv(path)
    split = make_split(ds, seed=0)
    run = tmp_path / "run"
    save_split(run / "split.json", ds, split, seed=0)
    held = held_out_texts(run=run)
    assert held.texts == [ds.texts[i] for i in split["test"]]
    assert held.labels == [ds.label_names[ds.labels[i]] for i in split["test"]]
    assert held.take(2).texts == [t for t in held.texts if t in held.take(2).texts] and len(held.take(2).texts) == 2


def test_held_out_texts_errors_name_the_problem(tmp_path):
    from clients.classify import ClientError
    with pytest.raises(ClientError, match="does not exist"):
        held_out_texts(run=tmp_path / "no-run")
    bad = tmp_path / "t.csv"
    bad.write_text("body,label\nhello,a\n")
    with pytest.raises(ClientError, match="no column 'text'"):
        held_out_texts(texts_file=bad)


def test_repository_lookup_and_names(tmp_path):
    assert describe("bert_onnx_int8") == ("ONNX Runtime", "INT8") == describe("bert_onnx_int8dyn")
    assert graph_of("bert_onnx_int8dyn").startswith("dynamic") and graph_of("bert_onnx_fp32") == ""
    assert describe("bert_trt_fp16") == ("TensorRT", "FP16")
    assert find_in_repository(tmp_path) == ServedFiles()     # nothing there: nothing found


@pytest.mark.server
def test_in_process_baseline_runs_what_the_server_runs(tiny_served):
    import numpy as np
    from clients.classify import Classifier
    found = find_in_repository(tiny_served.repository)
    assert found.onnx.name == "model.onnx" and found.tokenizer_json.name == "tokenizer.json"
    assert found.tokenizer.max_length == 64 and found.config.name == "config.json"
    assert found.labels == ["negative", "positive"] and found.classifier.sort_chunk_rows == 8
    texts = held_out_texts(texts_file=tiny_served.texts_csv).texts[:20]
    whole, chunked = InProcessOnnx(found, chunk_rows=0), InProcessOnnx(found, chunk_rows=3)
    a, b = whole.infer(texts), chunked.infer(texts)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    assert a[2] == b[2] and whole.encoder.lengths(texts) == [len(t.split()) + 2 for t in texts]
    with Classifier(tiny_served.grpc_url, "grpc", model="bert_onnx_fp32") as clf:
        logits, probabilities, labels = clf.infer(texts)
    np.testing.assert_allclose(a[0], logits, atol=1e-4)             # the served ensemble's answers
    np.testing.assert_allclose(a[1], probabilities, atol=1e-5)
    assert a[2] == labels


@pytest.mark.server
def test_request_cost_sends_each_text_to_every_target_in_turn(tiny_served, tmp_path, capsys):
    url = tiny_served.grpc_url.replace("grpc://", "")
    out = tmp_path / "cost.json"
    rc = cli(["request-cost", "--url", f"a={url}", "--model", "bert_onnx_int8dyn", "--repository",
              str(tiny_served.repository), "--texts", str(tiny_served.texts_csv), "--label-column", "label",
              "--limit", "5", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    a, local = doc["rows"]
    assert (a["label"], local["label"]) == ("a", "in-process") and a["texts"] == local["texts"] == 5
    assert [s["model"] for s in a["steps"]] == ["tokenizer", "bert_onnx_int8dyn_model"] and "steps" not in local
    assert a["outside_server_ms"] == pytest.approx(a["mean_ms"] - a["ensemble_ms"])
    text = capsys.readouterr().out
    assert "# One text at a time: bert_onnx_int8dyn" in text and "| a | bert_onnx_int8dyn_model |" in text


def test_gemm_rates_fp32_and_int8():
    from clients.machine import GemmRate
    fp32, int8 = (GemmRate(n=128, reps=2, threads=1, dtype=d).measure() for d in ("fp32", "int8"))
    assert fp32["gflops"] > 0 and int8["gflops"] > 0 and int8["best_gflops"] >= int8["gflops"]
    assert (fp32["source"], int8["source"]) == ("ONNX Runtime MatMul", "ONNX Runtime MatMulInteger")
    assert (fp32["unit"], int8["unit"], int8["n"], int8["threads"]) == ("GFLOP/s", "GOP/s", 128, 1)
    with pytest.raises(ValueError, match="choose from"):
        GemmRate(n=8, dtype="int4")
