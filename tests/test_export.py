"""ONNX exports (fp32, fp16, int8 QDQ, int8 quantized dynamically) of a tiny trained BERT, checked in
ONNX Runtime against PyTorch on held-out texts; a corrupted artifact is rejected; the `onnx` stage is
atomic; the build report names the CPU's instruction sets next to each graph."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from build_fixtures import make_run

from build.__main__ import main
from build.artifacts import Encoder, load_examples
from build.export_onnx import build_onnx
from build.quantize import QuantizeSettings, quantize
from build.verify import ParityError, compare, onnx_logits, verify_artifacts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"))
    parts = load_examples(run / "split.json")
    quantize(run / "checkpoint", parts["train"], parts["val"], run / "quantized",
             QuantizeSettings(calib_texts=96, sensitivity_texts=24, qat_steps=2, qat_lr=1e-5, max_length=32),
             log=lambda *_: None)
    return run


@pytest.fixture(scope="module")
def built(run):
    test = load_examples(run / "split.json", parts=["test"])["test"]
    results = build_onnx(run / "checkpoint", run / "onnx", test, ("fp32", "fp16", "int8", "int8dyn"), run / "quantized",
                         max_length=32, log=lambda *_: None)
    return run / "onnx", {r.precision: r for r in results}


def test_every_precision_passes_parity_on_held_out_texts(built):
    out, results = built
    assert results["fp32"].max_abs_dlogit <= 1e-4 and results["fp32"].agreement == 1.0
    assert results["fp16"].max_abs_dlogit <= 1e-2
    assert results["int8"].recovery >= 0.99 and results["int8dyn"].recovery >= 0.99
    for name in ("model_fp32.onnx", "model_fp16.onnx", "model_int8.onnx", "model_int8dyn.onnx", "build_report.json",
                 "build_report.md", "config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]     # no export source left behind
    report = (out / "build_report.md").read_text()
    assert "## Parity against PyTorch fp32" in report and "### Sensitivity" in report
    doc = json.loads((out / "build_report.json").read_text())
    assert doc["parity"][0]["passed"] is True


def test_build_report_names_the_instruction_sets_next_to_each_graph(built):
    from contract.cpu import cpu_info, describe, gemm_instructions, read_cpuinfo
    out, results = built
    flags = read_cpuinfo()[1]
    doc = json.loads((out / "build_report.json").read_text())
    assert doc["info"]["cpu"] == describe(cpu_info())
    assert doc["info"]["int8dyn"].endswith(f"reduce_range: {not (flags & {'avx512_vnni', 'avx_vnni', 'amx_int8'})}")
    rows = {r["precision"]: r for r in doc["parity"]}
    assert rows["int8dyn"]["graph"].startswith("INT8 dynamic") and rows["int8"]["graph"].startswith("INT8 QDQ")
    for precision, r in rows.items():
        assert r["instructions"] == gemm_instructions(precision, flags) != ""
    report = (out / "build_report.md").read_text()
    assert "| matmuls on this CPU |" in report and f"| {rows['int8dyn']['instructions']} |" in report


def test_graphs_have_the_contract_signature(built):
    out, _ = built
    for precision in ("fp32", "fp16", "int8", "int8dyn"):
        g = onnx.load(str(out / f"model_{precision}.onnx"))
        assert g.opset_import[0].version >= 17
        assert [i.name for i in g.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
        assert [o.name for o in g.graph.output] == ["logits"]
        assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp16 keeps fp32 I/O
        dims = g.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param  # dynamic batch and sequence
    fp16 = onnx.load(str(out / "model_fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)


def test_int8dyn_graph_quantizes_the_dense_weights_per_channel(built):
    out, _ = built
    g = onnx.load(str(out / "model_int8dyn.onnx"))
    ops = Counter(n.op_type for n in g.graph.node)
    # 2 layers x (q, k, v, attention output, ffn in, ffn out) + pooler + classifier; attention products stay float
    assert ops["MatMulInteger"] == 14 and ops["MatMul"] == 4 and ops["DynamicQuantizeLinear"] > 0
    scales = {i.name: numpy_helper.to_array(i) for i in g.graph.initializer if i.name.endswith("_scale")}
    assert any(a.ndim == 1 and a.size > 1 for a in scales.values())          # one scale per output channel
    assert [i.name for i in g.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]


def test_int8_graph_has_qdq_pairs_and_runs_in_onnxruntime(run, built):
    out, _ = built
    ops = Counter(n.op_type for n in onnx.load(str(out / "model_int8.onnx")).graph.node)
    # 14 Linears (input + weight) and 5 LayerNorm inputs; what the sensitivity analysis kept in float has none
    kept = json.loads((run / "quantized" / "quantize.json").read_text())["kept_float_quantizers"]
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 33 - kept > 0
    test = load_examples(run / "split.json", parts=["test"])["test"]
    logits = onnx_logits(out / "model_int8.onnx", test, Encoder(run / "checkpoint", 32))
    assert logits.shape == (len(test), 2) and np.isfinite(logits).all()


def _perturb_classifier(src, dst, factor=1.5):
    g = onnx.load(str(src))
    for init in g.graph.initializer:
        if "classifier" in init.name and "weight" in init.name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
            break
    else:
        raise AssertionError("no classifier weight initializer")
    onnx.save(g, str(dst))


def test_verify_rejects_a_corrupted_artifact(run, built, tmp_path):
    out, _ = built
    bad = tmp_path / "model_fp32.onnx"
    _perturb_classifier(out / "model_fp32.onnx", bad)
    test = load_examples(run / "split.json", parts=["test"])["test"]
    [r] = verify_artifacts(run / "checkpoint", {"fp32": bad}, test, 32, log=lambda *_: None)
    assert not r.passed and r.reason.startswith("max |dlogit|") and r.max_abs_dlogit > 1e-4
    assert "> 0.0001" in r.reason


def test_int8_recovery_floor_and_shape_mismatch():
    ref = np.array([[2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, 2.0]])
    labels = [0, 1, 0, 1]
    flipped = ref.copy()
    flipped[0] = [-1.0, 1.0]  # one of four texts now wrong: 75% recovery
    r = compare("int8", "model_int8.onnx", flipped, ref, labels)
    assert not r.passed and r.reason == "accuracy recovery 75.00% < 99%" and r.agreement == 0.75
    assert compare("int8", "m.onnx", ref + 0.3, ref, labels).passed
    r = compare("fp32", "m.onnx", ref[:, :1], ref, labels)
    assert not r.passed and "shape" in r.reason


def test_failed_build_leaves_the_previous_output_intact(run, built, tmp_path, monkeypatch):
    out, _ = built
    before = (out / "model_fp32.onnx").read_bytes()
    import build.export_onnx as ex

    real = ex.export_variants

    def corrupting(*args, **kwargs):  # the export "goes wrong": its fp32 file has altered weights
        paths, settings = real(*args, **kwargs)
        _perturb_classifier(paths["fp32"], paths["fp32"])
        return paths, settings

    monkeypatch.setattr(ex, "export_variants", corrupting)
    test = load_examples(run / "split.json", parts=["test"])["test"]
    with pytest.raises(ParityError, match=r"model_fp32.onnx rejected: max \|dlogit\| .* against PyTorch fp32"):
        build_onnx(run / "checkpoint", out, test, ("fp32",), max_length=32, log=lambda *_: None)
    assert (out / "model_fp32.onnx").read_bytes() == before
    assert "FAIL" in (out.parent / "onnx.rejected" / "build_report.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".onnx.tmp")]


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["onnx", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing'}: not a checkpoint folder (no config.json)"
    assert not (tmp_path / "o").exists()


def test_cli_builds_fp32_from_the_run_folder(run, tmp_path, capsys):
    rc = main(["onnx", "--checkpoint", str(run / "checkpoint"), "--precisions", "fp32", "--out", str(tmp_path / "o"),
               "--max-length", "32", "--test-texts", "12"])
    assert rc == 0 and (tmp_path / "o" / "model_fp32.onnx").exists()
    report = json.loads((tmp_path / "o" / "build_report.json").read_text())
    assert report["parity"][0]["texts"] == 12 and report["parity"][0]["passed"]
