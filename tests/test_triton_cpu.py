"""The cpu repository served by the REAL embedded Triton server (from the nvidia-pytriton wheel).

A tiny random BERT is built into a repository by build/repository.py; the server loads every model,
and each ensemble must answer real texts exactly like our PyTorch model does in-process.
"""
import concurrent.futures as cf
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_bert import make_tiny_build  # noqa: E402

from build import repository  # noqa: E402
from training.model import BertForSequenceClassification  # noqa: E402

pytestmark = pytest.mark.server

TEXTS = [
    "i love this great happy day",
    "",                                                   # just [CLS] [SEP]
    "good morning \U0001F600\U0001F44D sun is out",       # emoji (unknown to the vocabulary)
    b"the flight was \xff\xfe bad \xc3",                   # invalid UTF-8
    "worst airline ever, my flight got cancelled again " * 12,   # longer than max_length: truncated
    "not so",
]


def as_str(t):
    return t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t


def as_bytes(t):
    return t if isinstance(t, bytes) else t.encode("utf-8")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from server.testing import running_server

    tmp = tmp_path_factory.mktemp("triton_cpu")
    ckpt, onnx_dir = make_tiny_build(tmp)
    result = repository.build_repository("cpu", ckpt, tmp / "model_repository", onnx_dir=onnx_dir,
                                         log=lambda *_: None)
    with running_server(result.out, state_dir=tmp / "state") as server:
        yield server, result, ckpt


@pytest.fixture(scope="module")
def reference(served):
    """Our PyTorch model in-process: each text alone, unpadded, tokenized by the same tokenizer.json."""
    from tokenizers import Tokenizer

    _, result, ckpt = served
    model = BertForSequenceClassification.from_pretrained(ckpt).eval()
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok.enable_truncation(json.loads((result.out / "build.json").read_text())["max_length"])

    def logits(texts):
        rows = []
        with torch.no_grad():
            for t in texts:
                e = tok.encode(as_str(t))
                ids = torch.tensor([e.ids])
                rows.append(model(ids, torch.ones_like(ids), torch.zeros_like(ids)).logits[0].numpy())
        return np.stack(rows)
    return logits, model.config.labels


def infer(server, model, texts, outputs=("logits", "probabilities", "label"), class_count=0):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    x.set_data_from_numpy(np.array([as_bytes(t) for t in texts], dtype=np.object_).reshape(-1, 1))
    wanted = [grpcclient.InferRequestedOutput(o, class_count=class_count) for o in outputs]
    result = client.infer(model, [x], outputs=wanted)
    return {o: result.as_numpy(o) for o in outputs}


def test_every_model_is_ready(served):
    import tritonclient.http as httpclient

    server, result, _ = served
    client = httpclient.InferenceServerClient(server.http_url)
    names = result.models + result.ensembles
    # the cpu classifiers post-process their own logits: no separate postprocess model on cpu
    assert {"tokenizer", "bert_pytorch_fp32", "bert_onnx_fp32", "bert_onnx_int8"} <= set(names)
    assert {n: client.is_model_ready(n, str(result.version)) for n in names} == {n: True for n in names}
    meta = client.get_model_metadata("bert_onnx_fp32")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("text", "BYTES", [-1, 1])]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == \
        {"logits": [-1, 2], "probabilities": [-1, 2], "label": [-1, 1]}


@pytest.mark.parametrize("ensemble", ["bert_pytorch_fp32", "bert_onnx_fp32"])
def test_fp32_ensembles_match_pytorch(served, reference, ensemble):
    server, _, _ = served
    ref_logits, labels = reference
    expected = ref_logits(TEXTS)
    out = infer(server, ensemble, TEXTS)
    assert out["logits"].shape == (len(TEXTS), 2) and out["label"].shape == (len(TEXTS), 1)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4, rtol=0)
    assert [v.decode() for v in out["label"].ravel()] == [labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    assert len(set(expected.argmax(1))) == 2, "the tiny model should predict both labels on these texts"


def test_int8_ensemble_answers(served, reference):
    server, _, _ = served
    ref_logits, labels = reference
    out = infer(server, "bert_onnx_int8", TEXTS)
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["logits"], ref_logits(TEXTS), atol=0.1)   # int8 is an approximation
    assert all(v.decode() in labels for v in out["label"].ravel())


def test_concurrent_requests_are_batched_and_still_exact(served, reference):
    """Single-text requests of different lengths at once: the dynamic batchers merge them (one pad
    length per tokenizer execution); every answer must still be its own text's."""
    server, _, _ = served
    ref_logits, _ = reference
    texts = [" ".join(["good"] * n) + " morning" for n in (1, 3, 9, 20, 2, 14, 5, 30)]
    with cf.ThreadPoolExecutor(len(texts)) as pool:
        outs = list(pool.map(lambda t: infer(server, "bert_onnx_fp32", [t])["logits"][0], texts))
    np.testing.assert_allclose(np.stack(outs), ref_logits(texts), atol=1e-4, rtol=0)


def test_the_classifier_merges_requests_of_different_lengths(served, reference):
    """Token tensors of different lengths, sent to the classifier at once: its inputs are ragged, so
    the dynamic batcher hands them to one execution (the Python model pads them together) instead of
    one execution per shape; every answer must still be its own text's."""
    import threading

    import tritonclient.grpc as grpcclient

    server, _, _ = served
    ref_logits, _ = reference
    model = "bert_onnx_fp32_model"
    # 4, 12, 18, 25, 33 and 43 tokens: padded to multiples of 8, no two requests share a shape
    texts = [" ".join(["good"] * n) + " morning" for n in (1, 9, 15, 22, 30, 40)]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tokens = []
    for t in texts:   # each text tokenized alone: every request has its own length
        r = client.infer("tokenizer", [_text_input([t])])
        tokens.append({n: r.as_numpy(n) for n in ("input_ids", "attention_mask", "token_type_ids")})
    assert len({a["input_ids"].shape[1] for a in tokens}) == len(texts)

    def counts():
        s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    def burst():
        clients = [grpcclient.InferenceServerClient(server.grpc_url) for _ in texts]
        start, out = threading.Barrier(len(texts)), [None] * len(texts)

        def send(i):
            inputs = []
            for name, a in tokens[i].items():
                x = grpcclient.InferInput(name, list(a.shape), "INT64")
                x.set_data_from_numpy(a)
                inputs.append(x)
            start.wait()
            out[i] = clients[i].infer(model, inputs).as_numpy("logits")[0]
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return np.stack(out)

    merged = False
    for _ in range(5):   # timing decides how many arrive together; without ragged inputs, none ever merge
        before = counts()
        logits = burst()
        after = counts()
        np.testing.assert_allclose(logits, ref_logits(texts), atol=1e-4, rtol=0)
        inferences, executions = after[0] - before[0], after[1] - before[1]
        assert inferences == len(texts)
        if executions < inferences:
            merged = True
            break
    assert merged, "requests of different lengths never shared an execution"


def test_classification_extension_top1_is_the_label(served):
    server, _, _ = served
    out = infer(server, "bert_pytorch_fp32", TEXTS[:3], outputs=("probabilities",), class_count=1)
    plain = infer(server, "bert_pytorch_fp32", TEXTS[:3])
    top = [v.decode().split(":") for v in out["probabilities"].ravel()]   # "score:index:label"
    assert [t[2] for t in top] == [v.decode() for v in plain["label"].ravel()]
    np.testing.assert_allclose([float(t[0]) for t in top], plain["probabilities"].max(1), atol=1e-5)


def test_tokenizer_pads_one_execution_to_a_multiple_of_8(served):
    import tritonclient.grpc as grpcclient

    server, result, _ = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    texts = [b"good", b"i love this great happy day the sun is out"]   # 3 and 12 tokens
    x = grpcclient.InferInput("text", [2, 1], "BYTES")
    x.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1))
    r = client.infer("tokenizer", [x])
    ids, mask = r.as_numpy("input_ids"), r.as_numpy("attention_mask")
    assert ids.shape == (2, 16) and mask.sum(1).tolist() == [3, 12]
    long = client.infer("tokenizer", [_text_input(["word " * 500])])
    assert long.as_numpy("input_ids").shape == (1, 64)    # capped at max_length (the tiny model's 64)


def _text_input(texts):
    import tritonclient.grpc as grpcclient

    x = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    x.set_data_from_numpy(np.array([as_bytes(t) for t in texts], dtype=np.object_).reshape(-1, 1))
    return x


def test_a_malformed_request_to_a_model_gets_a_clear_error(served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server, _, _ = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, T in (("input_ids", 6), ("attention_mask", 5), ("token_type_ids", 6)):
        x = grpcclient.InferInput(name, [1, T], "INT64")
        x.set_data_from_numpy(np.ones((1, T), dtype=np.int64))
        inputs.append(x)
    with pytest.raises(InferenceServerException, match="attention_mask has shape"):
        client.infer("bert_onnx_fp32_model", inputs)
    assert client.is_model_ready("bert_onnx_fp32_model")   # the model survived it


# ----------------------------------------------------------------------------------------------
# a multi-label model with tabular features: `features` through the ensemble, labels joined by ","

@pytest.fixture(scope="module")
def served_tabular(tmp_path_factory):
    from server.testing import running_server

    tmp = tmp_path_factory.mktemp("triton_tabular")
    ckpt, onnx_dir = make_tiny_build(tmp, int8=False, labels=("toxic", "insult", "threat"),
                                     multi_label=True, num_features=3, thresholds=(0.5, 0.45, 0.55))
    result = repository.build_repository("cpu", ckpt, tmp / "model_repository", onnx_dir=onnx_dir,
                                         log=lambda *_: None)
    with running_server(result.out, state_dir=tmp / "state") as server:
        yield server, result, ckpt


@pytest.mark.parametrize("ensemble", ["bert_pytorch_fp32", "bert_onnx_fp32"])
def test_tabular_multi_label_ensembles(served_tabular, ensemble):
    import tritonclient.grpc as grpcclient
    from tokenizers import Tokenizer

    server, result, ckpt = served_tabular
    assert sorted(result.ensembles) == ["bert_onnx_fp32", "bert_pytorch_fp32"]
    texts = TEXTS[:4] + ["i love this", "i love this"]
    features = np.array([[10, 10, 10], [0, 3, 40], [-5, 8, 2], [12, 11, 9], [0, 0, 0], [30, -20, 25]],
                        dtype=np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    f = grpcclient.InferInput("features", list(features.shape), "FP32")
    f.set_data_from_numpy(features)
    r = client.infer(ensemble, [_text_input(texts), f])
    logits, probs = r.as_numpy("logits"), r.as_numpy("probabilities")
    got = [v.decode() for v in r.as_numpy("label").ravel()]

    model = BertForSequenceClassification.from_pretrained(ckpt).eval()
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok.enable_truncation(64)
    with torch.no_grad():
        expected = np.concatenate([model(torch.tensor([e.ids]), features=torch.from_numpy(features[i:i + 1])).logits
                                   .numpy() for i, e in enumerate(tok.encode_batch([as_str(t) for t in texts]))])
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-expected)), atol=1e-5)
    thresholds = np.array([0.5, 0.45, 0.55])
    names = ("toxic", "insult", "threat")
    assert got == [",".join(n for n, p, t in zip(names, row, thresholds) if p > t) for row in probs]
    assert logits[4].tolist() != logits[5].tolist()     # same text, other features: features are used
    assert any("," in g for g in got) and len(set(got)) > 2     # joined names, and variety
