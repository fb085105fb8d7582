"""Hostile or broken clients against the real embedded Triton (the tiny model's cpu repository).

The classifiers check what a request carries and fail only the request at fault, naming the input,
even when Triton merged it with good ones into one execution; a request over the tokenizer's size
limit is refused before its text is decoded; and hypothesis sends KServe v2 requests built to be
wrong (JSON bodies, the binary-tensor extension with lying headers, gRPC messages with wrong types,
shapes, sizes, encodings, huge and empty values) to the ensembles and straight to every composing
model. Each must be answered as the client's fault (HTTP 4xx, gRPC INVALID_ARGUMENT and its kin)
or succeed, never fail as a server error, and every Python stub must still be alive after it.

One exception is Triton's own: its HTTP front end answers a body its JSON parser rejects (not JSON,
a member of the wrong JSON type, a negative shape, a parameter name holding a NUL) with HTTP 500 and
"failed to parse" / "Unable to parse" / "was not found in the JSON" in the message, before any
model sees it. That is allowed here by message, nothing else is.
The number of cases each fuzz test ran is printed (`pytest tests/test_fuzz.py -s`).
"""
import concurrent.futures as cf
import http.client
import json
import re
import struct
import time
from collections import Counter

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

pytestmark = pytest.mark.server

VOCAB, MAX_LENGTH = 2048, 64                      # the tiny model's (tests/tiny_bert.py)
ENSEMBLES = ("bert_onnx_fp32", "bert_pytorch_fp32")
CLASSIFIERS = ("bert_onnx_fp32_model", "bert_pytorch_fp32_model")
MODELS = ENSEMBLES + CLASSIFIERS + ("tokenizer", "postprocess")
INPUTS = {"text": "BYTES", "input_ids": "INT64", "attention_mask": "INT64", "token_type_ids": "INT64",
          "raw_logits": "FP32"}
TRITON_PARSE_ERROR = re.compile(r"failed to parse the request JSON|Unable to parse|was not found in the JSON", re.I)
CASES = Counter()      # (fuzz test, answer) -> cases
FUZZ = settings(deadline=5000, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def stub_pids(server_pid):
    return sorted(p.pid for p in psutil.Process(server_pid).children())


@pytest.fixture(scope="module")
def served(tiny_served):
    """The shared server, and a check that it is alive with the same Python stubs it started with."""
    server = tiny_served.server
    stubs = stub_pids(server.pid)

    def healthy(what):
        assert server.running(), f"the server died after {what}"
        alive = [p for p in stubs if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == stubs == stub_pids(server.pid), f"a Python stub died after {what}"
    yield tiny_served, healthy
    kinds = sorted({kind for kind, _ in CASES})
    print("\nfuzz cases run: " + "; ".join(
        f"{kind} {sum(n for (k, _), n in CASES.items() if k == kind)} ("
        + ", ".join(f"{answer} {n}" for (k, answer), n in sorted(CASES.items()) if k == kind) + ")" for kind in kinds)
        + f"; {sum(CASES.values())} in all; no server error but Triton's JSON parse refusals (HTTP 500 'Unable to "
        "parse'); every stub alive after each")


def post(url, model, body: bytes, headers=None):
    conn = http.client.HTTPConnection(url, timeout=10)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def assert_client_fault_or_served(status, text, what):
    if status >= 500:   # only Triton's JSON parser may answer 500, and only before any model ran
        assert status == 500 and TRITON_PARSE_ERROR.search(text), f"{what}: HTTP {status} {text[:300]}"
    elif status != 200:
        assert 400 <= status < 500 and '"error"' in text, f"{what}: HTTP {status} {text[:300]}"


def tokens(ids, mask=None, types=None):
    ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64).reshape(ids.shape)
    types = np.zeros_like(ids) if types is None else np.asarray(types, dtype=np.int64).reshape(ids.shape)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def grpc_infer(client, model, arrays):
    import tritonclient.grpc as grpcclient
    inputs = []
    for name, a in arrays.items():
        x = grpcclient.InferInput(name, list(a.shape), "INT64")
        x.set_data_from_numpy(a)
        inputs.append(x)
    return client.infer(model, inputs)


# ---- the classifiers' input checks -----------------------------------------------------------------

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


# ---- fuzzing ---------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False)
           | st.text(max_size=40))
small_shapes = st.lists(st.integers(-2, 70), max_size=4)
huge_shapes = st.lists(st.integers(-2, 70) | st.sampled_from([2**31, 2**40, 2**63 - 1]), max_size=4)
datatypes = st.sampled_from(["BYTES", "INT64", "INT32", "INT8", "UINT64", "FP32", "FP16", "FP64", "BOOL", "x"])


@st.composite
def json_tensors(draw):
    datatype = draw(datatypes)
    # Huge dimensions only on BYTES tensors here: Triton 2.51's HTTP JSON parser allocates a numeric
    # tensor's whole shape before checking it and aborts the server when that fails
    # (test_a_huge_numeric_json_shape_kills_triton_2_51); gRPC and the binary extension check the shape
    # first, and get huge shapes of every type below.
    tensor = {"name": draw(st.sampled_from([*INPUTS, "features", "logits", ""])), "datatype": datatype,
              "shape": draw(huge_shapes if datatype == "BYTES" else small_shapes),
              "data": draw(st.lists(scalars | st.lists(scalars, max_size=3), max_size=8) | scalars)}
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_size", "x"]), scalars, max_size=2))
    return tensor


@st.composite
def json_bodies(draw):
    """A KServe v2 inference body, loosely shaped: names, types, shapes and data drawn apart."""
    body = draw(st.fixed_dictionaries({"inputs": st.lists(json_tensors(), max_size=4)}, optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12)}), max_size=3),
        "id": scalars, "parameters": st.dictionaries(st.text(max_size=8), scalars, max_size=3)}))
    return json.dumps(body).encode()


@st.composite
def model_shaped(draw, model):
    """Inputs with the names and types `model` takes, then wrong in shape, size or value: the requests
    that get past Triton's own checks to our Python models."""
    names = model_inputs(model)
    # no empty batch for the classifiers: a request of batch size 0 on their ragged inputs is never
    # answered (test_an_empty_batch_to_a_classifier_is_never_answered)
    rows = draw(st.integers(1 if model in CLASSIFIERS else 0, 3))
    width = draw(st.sampled_from([0, 1, 3, MAX_LENGTH, MAX_LENGTH + 1, 300]))
    inputs = []
    for name in names:
        dtype = INPUTS[name]
        if name == "text":
            values = draw(st.lists(st.text(max_size=60) | st.sampled_from(["", " " * 5000, "\x00\ud7ff\ufffd",
                                                                           "word " * 2000]),
                                   min_size=rows, max_size=rows))
            shape = [rows, 1]
        else:
            w = 2 if name == "raw_logits" else draw(st.sampled_from([width, width, max(0, width - 1)]))
            element = (st.floats(width=32) if dtype == "FP32" else
                       st.integers(-3, 3) if name != "input_ids" else st.integers(-1, VOCAB + 1))
            values = draw(st.lists(element, min_size=rows * w, max_size=rows * w))
            shape = [rows, w]
            if dtype == "FP32":
                values = [v if np.isfinite(v) else 0.0 for v in values]   # JSON has no NaN: see grpc_requests
        inputs.append({"name": name, "shape": shape, "datatype": dtype, "data": values})
    return json.dumps({"inputs": inputs}).encode()


@st.composite
def binary_bodies(draw):
    """The binary-tensor extension: a JSON header, then raw tensor bytes; the header's length, the
    declared binary sizes and the BYTES elements' 4-byte length prefixes may all lie."""
    texts = draw(st.lists(st.binary(max_size=30), min_size=1, max_size=3))
    raw = b"".join(struct.pack("<I", (len(t) + draw(st.sampled_from([0, 0, 1, -1, 1000, 2**31]))) % 2**32) + t
                   for t in texts)
    raw = draw(st.sampled_from([raw, raw[:-1], raw + b"\x00", b"", raw * 2]))
    declared = draw(st.sampled_from([len(raw), len(raw) + 1, max(0, len(raw) - 1), 0, 2**40]))
    header = json.dumps({"inputs": [{"name": draw(st.sampled_from(["text", "input_ids"])),
                                     "shape": draw(st.sampled_from([[len(texts), 1], [1, 2**40], [len(texts)]])),
                                     "datatype": draw(st.sampled_from(["BYTES", "INT64"])),
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    length = draw(st.sampled_from([len(header), len(header), len(header) + 3, len(header) - 3, 0, -1, 10**12]))
    return header + raw, {"Inference-Header-Content-Length": str(length)}


@given(body=json_bodies(), model=st.sampled_from(MODELS))
@settings(FUZZ, max_examples=100)
def test_fuzz_json_bodies(served, body, model):
    tiny, healthy = served
    status, text = post(tiny.http_url, model, body)
    CASES["http json", status] += 1
    assert_client_fault_or_served(status, text, f"{model} <- {body[:200]!r}")
    healthy(f"{model} <- {body[:200]!r}")


@given(data=st.data(), model=st.sampled_from(MODELS))
@settings(FUZZ, max_examples=120)
def test_fuzz_bodies_shaped_for_each_model(served, data, model):
    tiny, healthy = served
    body = data.draw(model_shaped(model))
    status, text = post(tiny.http_url, model, body)
    CASES["http shaped", status] += 1
    assert_client_fault_or_served(status, text, f"{model} <- {body[:200]!r}")
    healthy(f"{model} <- {body[:200]!r}")


@given(case=binary_bodies(), model=st.sampled_from(("bert_onnx_fp32", "tokenizer", "bert_onnx_fp32_model")))
@settings(FUZZ, max_examples=60)
def test_fuzz_binary_tensor_bodies(served, case, model):
    tiny, healthy = served
    body, headers = case
    status, text = post(tiny.http_url, model, body, headers)
    CASES["http binary", status] += 1
    assert_client_fault_or_served(status, text, f"{model} <- {headers} {body[:200]!r}")
    healthy(f"{model} <- {headers} {body[:200]!r}")


def model_inputs(model):
    if model in ENSEMBLES or model == "tokenizer":
        return ["text"]
    return ["raw_logits"] if model == "postprocess" else ["input_ids", "attention_mask", "token_type_ids"]


@st.composite
def grpc_requests(draw, model):
    """ModelInferRequest messages. Half are loose (any input name, type, shape, typed contents or
    raw bytes of any length); half carry the inputs `model` takes, of the right type and byte size,
    holding wrong values: NaN and infinity logits, ids outside the vocabulary, invalid UTF-8 and
    lying length prefixes in BYTES."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    if draw(st.booleans()):
        rows = draw(st.integers(1, 3))
        width = draw(st.sampled_from([1, 4, MAX_LENGTH, MAX_LENGTH + 1]))
        for name in model_inputs(model):
            if name == "text":
                texts = draw(st.lists(st.binary(max_size=50) | st.just(b"\xff\xfe" * 20), min_size=rows, max_size=rows))
                raw = b"".join(struct.pack("<I", len(t) + draw(st.sampled_from([0, 0, 0, 3]))) + t for t in texts)
                shape = [rows, 1]
            elif name == "raw_logits":
                raw = np.array(draw(st.lists(st.floats(width=32), min_size=2 * rows, max_size=2 * rows)),
                               np.float32).tobytes()
                shape = [rows, 2]
            else:
                low, high = (-2, VOCAB + 2) if name == "input_ids" else (-1, 3)
                raw = np.array(draw(st.lists(st.integers(low, high), min_size=rows * width, max_size=rows * width)),
                               np.int64).tobytes()
                shape = [rows, width]
            request.inputs.add(name=name, datatype=INPUTS[name], shape=shape)
            request.raw_input_contents.append(raw)
        return request
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([*INPUTS, "features", "zzz"]))
        tensor = request.inputs.add(name=name, datatype=draw(st.sampled_from([INPUTS.get(name, "FP32"), "BYTES",
                                                                               "INT64", "FP32", "BOOL", "nope"])))
        dims = draw(st.lists(st.integers(-1, 70) | st.just(2**40), max_size=3))
        if model in CLASSIFIERS and dims and dims[0] == 0:
            dims[0] = 1       # see model_shaped: an empty batch to a classifier is never answered
        tensor.shape.extend(dims)
        how = draw(st.sampled_from(["raw", "int64", "fp32", "bytes", "none"]))
        if how == "raw":
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif how == "int64":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=8)))
        elif how == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        elif how == "bytes":
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=40), max_size=4)))
    return request


@given(data=st.data(), model=st.sampled_from(MODELS))
@settings(FUZZ, max_examples=120)
def test_fuzz_grpc_requests(served, data, model):
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    tiny, healthy = served
    request = data.draw(grpc_requests(model))
    with grpc.insecure_channel(tiny.grpc_url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
    CASES["grpc", code.name] += 1
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.UNIMPLEMENTED), f"{model} <- {request}: {code} {details}"
    healthy(f"{model} <- {request}")


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


def test_after_the_fuzzing_every_ensemble_still_classifies(served):
    from clients.client import Classifier

    tiny, healthy = served
    for ensemble in ENSEMBLES:
        with Classifier(tiny.grpc_url, "grpc", model=ensemble) as clf:
            assert [p.label in ("negative", "positive") for p in clf.classify(["good morning", ""])] == [True, True]
    healthy("the last classification")
