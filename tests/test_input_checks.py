"""The classifiers' input checks and the tokenizer's size limit, against the real embedded Triton
(the tiny model's cpu repository): a request that fails a check fails alone, as the client's fault,
naming the input, even when Triton merged it with good ones into one execution; a 20 MB text is
refused before it is decoded. Also pins two defects of Triton 2.51 that tests/test_fuzz.py found
(docs/reliability.md), so that an upgrade that fixes them shows.
"""
import concurrent.futures as cf
import http.client
import json
import time

import numpy as np
import pytest

from hostile import CLASSIFIERS, MAX_LENGTH, VOCAB, post, served, tokens  # noqa: F401  (served: a fixture)

pytestmark = pytest.mark.server


def grpc_infer(client, model, arrays):
    import tritonclient.grpc as grpcclient
    inputs = []
    for name, a in arrays.items():
        x = grpcclient.InferInput(name, list(a.shape), "INT64")
        x.set_data_from_numpy(a)
        inputs.append(x)
    return client.infer(model, inputs)


def test_a_bad_request_fails_alone_among_requests_merged_into_one_execution(served):
    """Good requests and one with an id outside the vocabulary reach a classifier at once: the dynamic
    batcher merges them (Triton's counters show fewer executions than requests), and only the bad one
    fails. Without the check, ONNX Runtime's embedding lookup fails the whole merged batch."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tiny, healthy = served
    model = "bert_onnx_fp32_model"
    good = [tokens([2] + [100 + i] * n + [3]) for i, n in enumerate((3, 8, 12, 5, 20))]
    bad = tokens([2, 50, VOCAB + 7, 3])
    stats = grpcclient.InferenceServerClient(tiny.grpc_url)
    alone = [grpc_infer(stats, model, g).as_numpy("logits")[0] for g in good]    # each on its own, first

    def counts():
        s = stats.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(s.get("execution_count", 0)), int(s["inference_stats"].get("success", {}).get("count", 0)), \
            int(s["inference_stats"].get("fail", {}).get("count", 0))

    merged = False
    for _ in range(5):   # timing decides what arrives together; all must be right every time
        clients = [grpcclient.InferenceServerClient(tiny.grpc_url) for _ in range(len(good) + 1)]
        before = counts()
        with cf.ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(grpc_infer, c, model, a) for c, a in zip(clients, [*good, bad])]
            results = [f.exception() or f.result().as_numpy("logits")[0] for f in futures]
        after = counts()
        np.testing.assert_allclose(np.stack(results[:-1]), np.stack(alone), atol=1e-4)
        err = results[-1]
        assert isinstance(err, InferenceServerException) and err.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"input_ids holds {VOCAB + 7}, outside this model's [0, {VOCAB}) (vocab_size)" in err.message()
        executions, succeeded, failed = (a - b for a, b in zip(after, before))
        assert succeeded + failed == len(good) + 1     # (Triton counts a model's error response as a success)
        if executions < len(good) + 1:
            merged = True
            break
    assert merged, "the bad request never shared an execution with good ones"
    healthy("a merged execution with a bad request")


BAD_INPUTS = {   # what a client sends straight to a classifier -> what the error must say
    "id outside the vocabulary": (tokens([2, VOCAB, 3]), f"input_ids holds {VOCAB}, outside"),
    "negative id": (tokens([2, -5, 3]), "input_ids holds -5"),
    "longer than max_length": (tokens([2] + [100] * MAX_LENGTH + [3]), f"at most {MAX_LENGTH} (max_length)"),
    "mask of 2": (tokens([2, 100, 3], mask=[1, 2, 1]), "attention_mask must be 0 or 1, found 2"),
    "no real token": (tokens([2, 100, 3], mask=[0, 0, 0]), "attention_mask row 0 has no 1"),
    "token type 9": (tokens([2, 100, 3], types=[0, 9, 0]), "token_type_ids holds 9"),
    "shapes disagree": ({**tokens([2, 100, 3]), "attention_mask": np.ones((1, 2), np.int64)},
                        "attention_mask has shape (1, 2) but input_ids has (1, 3)"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", CLASSIFIERS)
def test_each_bad_input_is_refused_as_the_clients_fault_naming_it(served, protocol, model):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    tiny, healthy = served
    tc = httpclient if protocol == "http" else grpcclient
    client = tc.InferenceServerClient(tiny.http_url if protocol == "http" else tiny.grpc_url)
    for what, (arrays, message) in BAD_INPUTS.items():
        inputs = []
        for name, a in arrays.items():
            x = tc.InferInput(name, list(a.shape), "INT64")
            x.set_data_from_numpy(a)
            inputs.append(x)
        with pytest.raises(tc.InferenceServerException) as e:
            client.infer(model, inputs)
        assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), (what, e.value.status())
        assert message in e.value.message() and "request 0 of this batch" in e.value.message(), what
    healthy(f"bad inputs to {model} over {protocol}")


def test_a_request_over_the_size_limit_is_refused_before_decoding(served):
    """A 20 MB text: refused by the tokenizer with the limit named, in far less time than decoding and
    tokenizing it would take; the server serves the next request normally."""
    tiny, healthy = served
    limit = json.loads((tiny.repository / "tokenizer" / "config.pbtxt").read_text().split(
        'key: "max_request_bytes"')[1].split("string_value:")[1].split("}")[0].strip())
    huge = "é" * (10 * 1024 * 1024)                            # 20 MiB of UTF-8
    body = json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [huge]}]},
                      ensure_ascii=False).encode()
    for model in ("bert_onnx_fp32", "tokenizer"):
        start = time.monotonic()
        status, text = post(tiny.http_url, model, body)
        assert status == 400 and "too large" in text and f"{20 * 1024 * 1024:,} bytes" in text, text[:300]
        assert f"over the limit of {int(limit):,} (max_request_bytes); refused before decoding" in text
        assert time.monotonic() - start < 5
    status, text = post(tiny.http_url, "bert_onnx_fp32", json.dumps(
        {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["é" * 4000]}]}).encode())
    assert status == 200 and '"label"' in text           # under the limit: cut to max_text_chars, classified
    healthy("a 20 MB text")


def test_an_empty_batch_to_a_classifier_is_never_answered(served):
    """Pins a defect of Triton 2.51's Python backend (docs/reliability.md): an execution whose requests
    hold no rows at all is released without a response (python_be.cc, "no valid payloads"), so a
    request of batch size 0 on the classifiers' ragged inputs waits until its client gives up. Our
    model never sees it; the server keeps serving."""
    tiny, healthy = served
    body = json.dumps({"inputs": [{"name": n, "shape": [0, 0], "datatype": "INT64", "data": []}
                                  for n in ("input_ids", "attention_mask", "token_type_ids")]}).encode()
    conn = http.client.HTTPConnection(tiny.http_url, timeout=1)
    try:
        conn.request("POST", "/v2/models/bert_onnx_fp32_model/infer", body=body)
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()
    status, text = post(tiny.http_url, "bert_onnx_fp32_model", json.dumps(
        {"inputs": [{"name": n, "shape": [1, 3], "datatype": "INT64", "data": v} for n, v in
                    (("input_ids", [2, 100, 3]), ("attention_mask", [1, 1, 1]), ("token_type_ids", [0, 0, 0]))]}).encode())
    assert status == 200 and '"logits"' in text
    healthy("an empty batch")


NUMBERS_MODEL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""


def test_a_huge_numeric_json_shape_kills_triton_2_51(tmp_path):
    """Pins a defect of Triton 2.51 (docs/reliability.md): its HTTP front end allocates a numeric JSON
    tensor's declared shape before checking it against the model, and a shape of 2^40 elements aborts
    the whole server (std::length_error / bad_alloc). The same tensor over gRPC is refused with
    INVALID_ARGUMENT. When a Triton upgrade makes this test fail, the warning in the docs can go."""
    import grpc
    from contract import pbtxt
    from server.testing import running_server
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    mc = pbtxt.messages()
    config = mc.ModelConfig(name="numbers", backend="python", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[2])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[2])
    (tmp_path / "repo" / "numbers" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "numbers" / "1" / "model.py").write_text(NUMBERS_MODEL_PY)
    (tmp_path / "repo" / "numbers" / pbtxt.CONFIG_FILE).write_text(pbtxt.to_text(config))
    with running_server(tmp_path / "repo", tmp_path / "state") as server:
        request = service_pb2.ModelInferRequest(model_name="numbers")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 2**40])
        request.raw_input_contents.append(b"\0" * 8)
        with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unexpected shape" in e.value.details()
        assert server.running()
        body = {"inputs": [{"name": "x", "shape": [1, 2**40], "datatype": "FP32", "data": [1.0, 2.0]}]}
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            post(server.http_url, "numbers", json.dumps(body).encode())
        deadline = time.monotonic() + 10
        while server.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running(), "Triton survived a 2^40-element JSON tensor: update docs/reliability.md"
