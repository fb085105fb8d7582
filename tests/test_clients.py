"""clients/classify.py against a real embedded Triton serving a tiny model, and its failure modes."""
import io
import json
import re
import time

import numpy as np
import pytest
import torch

from clients.__main__ import main as cli
from clients.classify import (Classifier, ClientError, InferenceFailed, ServerUnreachable, UnknownModel,
                              is_retryable, normalize_url)
from tiny_bert import SERVED_LABELS as LABELS
from server.testing import free_port

TEXTS = ["i love this great happy day", "the flight was bad worst ever", "good morning sun is out",
         "my flight got cancelled again", "what a wonderful day", "not so good", "awful airline"]


def pytorch_probabilities(checkpoint, texts):
    """The same checkpoint run in-process by our PyTorch model: the reference answer."""
    from training.data import load_tokenizer, tokenize
    from training.model import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
    batch = tokenize(load_tokenizer(checkpoint), texts, max_length=64)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    return logits.numpy(), torch.softmax(logits, -1).numpy()


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["bert_pytorch_fp32", "bert_onnx_fp32"])
def test_classify_matches_pytorch(tiny_served, protocol, model):
    url = tiny_served.http_url if protocol == "http" else tiny_served.grpc_url
    texts = TEXTS * 10                      # 70 texts: more than max_batch_size 64, so two requests
    with Classifier(url, protocol, model=model) as clf:
        assert clf.labels == list(LABELS)  # read from the server (classification extension)
        assert clf.max_batch_size == 64
        predictions = clf.classify(texts)
    logits, probs = pytorch_probabilities(tiny_served.checkpoint, texts)
    assert len(predictions) == len(texts)
    got = np.array([[p.probabilities[n] for n in LABELS] for p in predictions])
    np.testing.assert_allclose(got, probs, atol=1e-4)
    np.testing.assert_allclose(np.array([p.logits for p in predictions]), logits, atol=1e-3)
    clear = np.abs(probs[:, 0] - probs[:, 1]) > 1e-3      # a random tiny model has near-ties
    assert clear.sum() >= 3
    assert [p.label for p, c in zip(predictions, clear) if c] == [LABELS[i] for i, c in zip(probs.argmax(1), clear) if c]
    assert all(p.label == max(p.probabilities, key=p.probabilities.get) for p, c in zip(predictions, clear) if c)


@pytest.mark.server
def test_int8_ensemble_answers_close_to_fp32(tiny_served):
    with Classifier(tiny_served.grpc_url, "grpc", model="bert_onnx_int8") as clf:
        predictions = clf.classify(TEXTS)
    _, probs = pytorch_probabilities(tiny_served.checkpoint, TEXTS)
    got = np.array([[p.probabilities[n] for n in LABELS] for p in predictions])
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert np.abs(got - probs).max() < 0.05


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_model_lists_the_models(tiny_served, protocol):
    url = tiny_served.http_url if protocol == "http" else tiny_served.grpc_url
    clf = Classifier(url, protocol, model="bert_nope_fp32", admin_key=tiny_served.admin_key)
    with pytest.raises(UnknownModel) as e:
        clf.classify(["hello"])
    msg = str(e.value)
    assert "bert_nope_fp32" in msg and url in msg
    for name in ("bert_pytorch_fp32", "bert_onnx_fp32", "bert_onnx_int8", "tokenizer"):
        assert name in msg


@pytest.mark.server
def test_unknown_model_without_admin_key_says_what_is_missing(tiny_served, monkeypatch):
    monkeypatch.setenv("TRITON_ADMIN_KEY", "wrong-key-0123456789abcdef")
    with pytest.raises(UnknownModel, match="admin key"):
        Classifier(tiny_served.http_url, "http", model="bert_nope_fp32").classify(["hello"])


@pytest.mark.server
def test_bad_inputs_are_refused_before_sending(tiny_served):
    clf = Classifier(tiny_served.http_url, "http", model="bert_onnx_fp32")
    with pytest.raises(ClientError, match="list of strings"):
        clf.classify("one string")
    with pytest.raises(ClientError, match="item 1"):
        clf.classify(["ok", 3])
    with pytest.raises(ClientError, match="takes no features"):
        clf.classify(["ok"], features=[[1.0]])
    assert clf.classify([]) == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_gives_up_after_bounded_retries(protocol):
    port = free_port()                      # nothing listens there
    clf = Classifier(f"127.0.0.1:{port}", protocol, retries=2, backoff=0.05, timeout=5)
    start = time.monotonic()
    with pytest.raises(ServerUnreachable) as e:
        clf.classify(["hello"])
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "3 attempts" in msg and "make up" in msg


def test_retry_policy():
    from tritonclient.utils import InferenceServerException as E
    assert is_retryable(ConnectionRefusedError(111, "Connection refused"))
    assert is_retryable(E("failed to connect", status="StatusCode.UNAVAILABLE"))
    assert is_retryable(E("Stub process 'm_0_0' is not healthy.", status="400"))
    assert not is_retryable(E("Request for unknown model: 'x' is not found", status="404"))
    assert not is_retryable(E("This protocol is restricted, expecting header 'k'", status="StatusCode.UNAVAILABLE"))
    assert not is_retryable(E("inference request batch-size must be <= 8", status="400"))
    # a busy server's refusals (Triton 2.51: HTTP 503 / gRPC UNAVAILABLE) are retried, and are not "unreachable"
    from clients.errors import is_busy, is_connection_error
    for busy in (E("in ensemble 'm', Request timeout expired", status="StatusCode.UNAVAILABLE"),
                 E("[request id: <id_unknown>] Exceeds maximum queue size", status="503")):
        assert is_retryable(busy) and is_busy(busy) and not is_connection_error(busy)
    assert not is_busy(E("failed to connect", status="StatusCode.UNAVAILABLE"))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_retrying_stops_at_its_total_time_bound(protocol):
    """Many retries allowed, little time: the time bound ends it, with the attempts it made named."""
    port = free_port()
    clf = Classifier(f"127.0.0.1:{port}", protocol, retries=100, backoff=0.05, max_backoff=0.2, retry_time=1.0,
                     timeout=5)
    start = time.monotonic()
    with pytest.raises(ServerUnreachable) as e:
        clf.classify(["hello"])
    assert time.monotonic() - start < 3
    attempts = int(re.search(r"after (\d+) attempts", str(e.value)).group(1))
    assert 3 <= attempts < 101 and f"127.0.0.1:{port}" in str(e.value)


def test_normalize_url():
    assert normalize_url(None, "http") == ("127.0.0.1:8000", False)
    assert normalize_url(None, "grpc") == ("127.0.0.1:8001", False)
    assert normalize_url("http://localhost:9000/", "http") == ("localhost:9000", False)
    assert normalize_url("https://example.org", "http") == ("example.org:8000", True)
    assert normalize_url("grpc://10.0.0.1:7001", "grpc") == ("10.0.0.1:7001", False)
    with pytest.raises(ClientError):
        normalize_url("x", "smtp")


@pytest.mark.server
def test_cli_arguments_file_and_stdin(tiny_served, tmp_path, capsys, monkeypatch):
    url = tiny_served.http_url
    assert cli(["classify", "--url", url, "--json", *TEXTS[:2]]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == TEXTS[:2]
    assert all(set(x["probabilities"]) == set(LABELS) and x["label"] in LABELS for x in lines)

    f = tmp_path / "texts.txt"
    f.write_text("\n".join(TEXTS[:3]) + "\n\n")
    assert cli(["classify", "--url", tiny_served.grpc_url, "--protocol", "grpc", "--file", str(f)]) == 0
    out = capsys.readouterr()
    assert "negative" in out.out and "positive" in out.out and len(out.out.splitlines()) == 2 + 3
    assert "skipped 1 blank line" in out.err

    monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[3] + "\n"))
    assert cli(["classify", "--url", url, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == TEXTS[3]


def test_cli_errors_are_clear(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert cli(["classify", "--file", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli(["classify", "--url", f"127.0.0.1:{free_port()}", "--retries", "0", "hi"]) == 2
    assert "unreachable" in capsys.readouterr().err


@pytest.mark.server
def test_server_failure_is_reported_not_retried_forever(tiny_served):
    # a request Triton rejects (batch above max_batch_size sent directly) fails at once, clearly
    clf = Classifier(tiny_served.http_url, "http", model="bert_onnx_fp32", retries=3)
    start = time.monotonic()
    with pytest.raises(InferenceFailed, match="batch-size must be <= 64"):
        clf.infer(["x"] * 65)
    assert time.monotonic() - start < 5


@pytest.mark.server
def test_dead_stub_is_retried_then_reported_with_the_recovery(tiny_served, tmp_path):
    """A Python stub killed under the server: the client retries with backoff, then says what to do."""
    import shutil

    import psutil

    from server.testing import running_server
    repo = tmp_path / "repo"
    for name in ("tokenizer", "bert_onnx_fp32", "bert_onnx_fp32_model"):   # the cpu classifier post-processes
        shutil.copytree(tiny_served.repository / name, repo / name)
    with running_server(repo, tmp_path / "state", timeout=300) as server:
        clf = Classifier(server.http_url, "http", model="bert_onnx_fp32", retries=2, backoff=0.1)
        assert len(clf.classify(TEXTS[:2])) == 2
        stubs = [p for p in psutil.Process(server.pid).children(recursive=True)
                 if "bert_onnx_fp32_model" in " ".join(p.cmdline())]
        assert len(stubs) == 1
        stubs[0].kill()
        deadline = time.monotonic() + 10          # dead: gone, or a zombie its parent has not reaped yet
        while stubs[0].is_running() and stubs[0].status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(InferenceFailed) as e:
            clf.classify(TEXTS[:2])
        assert time.monotonic() - start < 10
        msg = str(e.value)
        assert "3 attempts" in msg and "not healthy" in msg and "reload the model" in msg and server.http_url in msg
