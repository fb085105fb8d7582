"""python -m clients op-profile: ONNX Runtime's operator profile of a served graph, summed by type."""
import collections
import json

import pytest

from clients.__main__ import main as cli
from clients.client import ClientError
from clients.op_profile import GEMM_OPS, summarize


def test_summary_shares_add_up_and_count_matrix_products():
    times = collections.Counter({"MatMulIntegerToFloat": 600, "BiasGelu": 300, "Add": 60, "Softmax": 40})
    doc = summarize(times, top=2)
    assert [r["op"] for r in doc["rows"]] == ["MatMulIntegerToFloat", "BiasGelu", "(others)"]
    assert sum(r["share"] for r in doc["rows"]) == pytest.approx(1.0)
    assert doc["gemm_share"] == pytest.approx(0.6) and doc["total_ms"] == pytest.approx(1.0)
    with pytest.raises(ClientError, match="no operator timings"):
        summarize(collections.Counter())


@pytest.mark.server
@pytest.mark.parametrize("ensemble", ["bert_onnx_fp32", "bert_onnx_int8dyn"])
def test_profile_of_a_served_graph(tiny_served, tmp_path, capsys, ensemble):
    out = tmp_path / "profile.json"
    rc = cli(["op-profile", "--model", ensemble, "--repository", str(tiny_served.repository), "--texts",
              str(tiny_served.texts_csv), "--limit", "24", "--batch", "8", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["texts"] == 24 and doc["model"] == ensemble and doc["total_ms"] > 0
    ops = {r["op"] for r in doc["rows"]}
    assert ops & GEMM_OPS, ops                       # the encoder's matrix products were timed
    assert 0 < doc["gemm_share"] < 1
    assert f"# Operator time: {ensemble}" in capsys.readouterr().out


def test_a_repository_without_the_graph_is_named(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\nanother\n")
    assert cli(["op-profile", "--repository", str(tmp_path), "--texts", str(texts)]) == 2
    assert f"{tmp_path}: bert_onnx_int8 has no ONNX classifier" in capsys.readouterr().err
