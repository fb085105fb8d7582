"""What the tests of hostile or broken clients share: the tiny model's served repository (the
session's tiny_served server), its limits, and a check that the server is alive with the same
Python stubs it started with (import the fixture into a test module to use it)."""
import http.client

import numpy as np
import psutil
import pytest

VOCAB, MAX_LENGTH = 2048, 64                      # the tiny model's (tests/tiny_bert.py)
ENSEMBLES = ("bert_onnx_fp32", "bert_pytorch_fp32")
CLASSIFIERS = ("bert_onnx_fp32_model", "bert_pytorch_fp32_model")
MODELS = ENSEMBLES + CLASSIFIERS + ("tokenizer", "postprocess")
INPUTS = {"text": "BYTES", "input_ids": "INT64", "attention_mask": "INT64", "token_type_ids": "INT64",
          "raw_logits": "FP32"}


def stub_pids(server_pid):
    return sorted(p.pid for p in psutil.Process(server_pid).children())


@pytest.fixture(scope="module")
def served(tiny_served):
    """The shared server, and healthy(what): it is alive with the same Python stubs it started with."""
    server = tiny_served.server
    stubs = stub_pids(server.pid)

    def healthy(what):
        assert server.running(), f"the server died after {what}"
        alive = [p for p in stubs if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == stubs == stub_pids(server.pid), f"a Python stub died after {what}"
    yield tiny_served, healthy


def post(url, model, body: bytes, headers=None, timeout=10):
    """POST body to /v2/models/<model>/infer -> (status, text); raises when no answer comes."""
    conn = http.client.HTTPConnection(url, timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def tokens(ids, mask=None, types=None):
    ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64).reshape(ids.shape)
    types = np.zeros_like(ids) if types is None else np.asarray(types, dtype=np.int64).reshape(ids.shape)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
