"""Overload against the real embedded Triton: an open loop far past capacity is shed, not queued.

The repository is build/repository.py's for a small random BERT (6 layers of 256 on texts of
60-110 tokens, slow enough that one Python process can offer it three times what it answers), with
the default queue settings (a 1 s queue timeout, the max_queue_size backstop). Beside it, a model that sleeps
through each execution with a queue of one shows Triton's other refusal (a full queue) and is what
the client's retries are tested against.
"""
import argparse
import random
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from tiny_bert import WORDS, export_fp32, make_tokenizer

pytestmark = pytest.mark.server

ENSEMBLE = "bert_onnx_fp32"
BUSY = "busy_probe"                     # sleeps 0.2 s per request, queue of 1: refuses the third at once
BUSY_MODEL_PY = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("echo", pb_utils.get_input_tensor_by_name(r, "text")
                                                            .as_numpy())]) for r in requests]
'''


def write_busy_probe(repo):
    from contract import pbtxt
    mc = pbtxt.messages()
    c = mc.ModelConfig(name=BUSY, backend="python", max_batch_size=1)
    c.input.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    c.output.add(name="echo", data_type=mc.TYPE_STRING, dims=[1])
    c.dynamic_batching.default_queue_policy.max_queue_size = 1
    c.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    e = mc.ModelConfig(name=f"{BUSY}_ensemble", platform="ensemble", max_batch_size=1)
    e.input.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    e.output.add(name="echo", data_type=mc.TYPE_STRING, dims=[1])
    step = e.ensemble_scheduling.step.add(model_name=BUSY, model_version=-1)
    step.input_map["text"], step.output_map["echo"] = "text", "echo"
    for config, files in ((c, {"model.py": BUSY_MODEL_PY}), (e, {})):
        (repo / config.name / "1").mkdir(parents=True)
        for name, text in files.items():
            (repo / config.name / "1" / name).write_text(text)
        (repo / config.name / pbtxt.CONFIG_FILE).write_text(pbtxt.to_text(config))


@pytest.fixture(scope="module")
def slow_served(tmp_path_factory):
    from build.repository import build_repository
    from server.testing import running_server
    from training.config import BertConfig
    from training.model import BertForSequenceClassification

    tmp = tmp_path_factory.mktemp("overload")
    # slow enough that the open loop, which shares the 2 cores, can offer 3x its capacity
    config = BertConfig(vocab_size=2048, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                        intermediate_size=1536, max_position_embeddings=128, id2label={0: "negative", 1: "positive"},
                        problem_type="single_label_classification")
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(
        tmp / "checkpoint", tokenizer_from=make_tokenizer(tmp / "tokenizer", size=2048))
    export_fp32(tmp / "checkpoint", tmp / "onnx")
    repo = tmp / "repository"
    build_repository("cpu", tmp / "checkpoint", repo, onnx_dir=tmp / "onnx", max_batch_size=16, log=lambda *_: None)
    for name in ("bert_pytorch_fp32", "bert_pytorch_fp32_model", "bert_onnx_int8", "bert_onnx_int8_model"):
        shutil.rmtree(repo / name, ignore_errors=True)        # only the ensemble under test
    write_busy_probe(repo)
    rng = random.Random(0)
    texts = tmp / "texts.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 110))) for _ in range(64)))
    with running_server(repo, tmp / "state") as server:
        yield server, texts


def test_an_open_loop_at_three_times_capacity_is_answered_or_refused_never_queued_without_bound(slow_served, tmp_path):
    from clients.overload import add_arguments, overload

    server, texts = slow_served
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--url", server.grpc_url, "--model", ENSEMBLE, "--texts", str(texts), "--factor", "3",
                         "--seconds", "2.4", "--rounds", "2", "--capacity-seconds", "1", "--concurrency", "32",
                         "--after-seconds", "0.5", "--deadline", "5", "--bin-seconds", "0.25", "--out", str(tmp_path)])
    doc = overload(args, log=lambda *_: None)
    o, cap = doc["overload"], doc["capacity"]["rate"]
    print(f"\ncapacity {cap:.0f}/s; offered {o['offered_rate']:.0f}/s (asked {o['asked_rate']:.0f}); answered "
          f"{o['answered_rate']:.0f}/s; {o['ok']} answered, {o['busy']} refused of {o['requests']}; p99 "
          f"{o['latency_ms']['p99']} ms (bound {doc['bound_ms']:.0f}); generator {o['generator_cpu_cores']:.2f} cores; "
          f"memory {doc['memory']['warm']['total_mib']:.0f} -> "
          + " -> ".join(f"{m['total_mib']:.0f}" for m in doc["memory"]["rounds"]) + " MiB")
    # the generator really offered well past capacity, for long enough that a queue would grow for seconds
    assert o["offered_rate"] > 2.5 * cap, "the load generator could not offer 3x capacity: make the model slower"
    assert {c["check"]: c["held"] for c in doc["checks"]} == {c["check"]: True for c in doc["checks"]}
    assert o["ok"] > 0 and o["busy"] > 0 and o["error"] == o["wrong"] == o["deadline"] == 0
    assert all("Request timeout expired" in m or "Exceeds maximum queue size" in m for m in o["busy_messages"])
    assert o["latency_ms"]["max"] < 1000 * args.deadline
    assert doc["stubs"]["before"] and doc["stubs"]["before"] == doc["stubs"]["after"]
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "overload.png").stat().st_size > 10_000


def _text_input(tc, text=b"hello"):
    x = tc.InferInput("text", [1, 1], "BYTES")
    x.set_data_from_numpy(np.array([[text]], dtype=np.object_))
    return [x]


def _burst(send, n=4):
    """n requests at once -> their outcomes: "ok" or the raised exception."""
    out = [None] * n

    def one(i):
        try:
            send()
            out[i] = "ok"
        except Exception as e:
            out[i] = e
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_refuses_a_full_queue_and_a_timed_out_request_as_unavailable(slow_served, protocol):
    """The statuses docs/reliability.md names: HTTP 503 / gRPC UNAVAILABLE, directly and through an ensemble."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server, _ = slow_served
    tc = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    status = "503" if protocol == "http" else "StatusCode.UNAVAILABLE"
    for model in (BUSY, f"{BUSY}_ensemble"):      # one runs, one waits, the rest find the queue full
        outcomes = _burst(lambda: tc.InferenceServerClient(url).infer(model, _text_input(tc)))
        refused = [e for e in outcomes if e != "ok"]
        assert 1 <= outcomes.count("ok") <= 2 and refused
        assert all(e.status() == status and "Exceeds maximum queue size" in e.message() for e in refused)
        assert all(f"in ensemble '{model}'" in e.message() for e in refused) == model.endswith("ensemble")
    # a request may ask for a shorter queue timeout than the model's (allow_timeout_override): 1 us expires
    # before the batcher looks, so the ensemble's first step refuses it, the same way
    client = tc.InferenceServerClient(url)
    with pytest.raises(tc.InferenceServerException) as e:
        client.infer(ENSEMBLE, _text_input(tc), timeout=1)
    assert e.value.status() == status and "Request timeout expired" in e.value.message()
    assert client.infer(ENSEMBLE, _text_input(tc)).as_numpy("label").shape == (1, 1)


def test_the_client_retries_refusals_then_says_the_server_is_busy(slow_served):
    from clients.client import Classifier, ServerBusy
    import tritonclient.http as httpclient

    server, _ = slow_served
    stop = threading.Event()

    def keep_busy():       # two clients back to back: one request running, one queued, the queue full
        client = httpclient.InferenceServerClient(server.http_url)
        while not stop.is_set():
            try:
                client.infer(BUSY, _text_input(httpclient))
            except httpclient.InferenceServerException:
                pass
    hogs = [threading.Thread(target=keep_busy) for _ in range(3)]
    [t.start() for t in hogs]
    try:
        time.sleep(0.3)
        clf = Classifier(server.http_url, "http", model=BUSY, retries=2, backoff=0.05, retry_time=5)
        raw = httpclient.InferenceServerClient(server.http_url)
        start = time.monotonic()
        with pytest.raises(ServerBusy) as e:
            for _ in range(20):    # refused three times in a row at some point: the hogs keep the queue full
                clf._call(f"inference on {BUSY!r}", raw.infer, BUSY, _text_input(httpclient))
        msg = str(e.value)
        print(f"\n{msg}")
        assert "busy" in msg and "3 times" in msg and server.http_url in msg and "Exceeds maximum queue size" in msg
        assert time.monotonic() - start < 20
    finally:
        stop.set()
        [t.join() for t in hogs]
    # refused once or twice, then let through: the caller sees the answer, not the refusals
    clf = Classifier(server.http_url, "http", model=BUSY, retries=6, backoff=0.2, retry_time=10)
    outcomes = _burst(lambda: clf._call("busy", httpclient.InferenceServerClient(server.http_url).infer, BUSY,
                                        _text_input(httpclient)), n=3)
    assert outcomes == ["ok"] * 3
