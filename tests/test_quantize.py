"""INT8 quantization with modelopt on a tiny trained BERT: quantizers, calibration methods,
sensitivity groups, the saved state, and the stage's errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from build_fixtures import make_run

from build.artifacts import BuildError, Encoder, accuracy, load_examples, load_model, predictions
from build.quantize import QuantizeSettings, load_quantized, qat_finetune, quantize, training_record
from build.quantizers import (CALIB_METHODS, insert_and_calibrate, logits_of, quantizer_groups, quantizers, sensitivity,
                              sensitivity_markdown)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def parts(run):
    return load_examples(run / "split.json")


@pytest.fixture(scope="module")
def encoder(run):
    return Encoder(run / "checkpoint", 32)


# entropy's amax search walks 2048-bin histograms per quantizer; every 8th bin keeps it to seconds
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "entropy" else m
                                    for m in CALIB_METHODS])
def test_calibration_inserts_int8_quantizers_with_ranges(run, parts, encoder, method):
    model = load_model(run / "checkpoint")
    fp32 = logits_of(model, parts["val"], encoder)
    model = insert_and_calibrate(model, parts["train"].sample(64), encoder, method, entropy_stride=8)
    qs = quantizers(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    # every Linear (encoder, pooler, classifier) gets an input and a per-channel weight quantizer
    assert len(linears) == 2 * 6 + 2
    for name in linears:
        w, x = qs[f"{name}.weight_quantizer"], qs[f"{name}.input_quantizer"]
        assert w.num_bits == 8 and w.axis == 0 and x.axis is None
        out_features = model.get_submodule(name).out_features
        assert w.amax.numel() == out_features and torch.isfinite(w.amax).all() and (w.amax > 0).all()
        assert x.amax.numel() == 1 and float(x.amax) > 0
    # ... and LayerNorm inputs are quantized too (INT8_DEFAULT_CFG), embeddings are not
    assert any(n.endswith("LayerNorm.input_quantizer") for n in qs)
    assert not any("word_embeddings" in n for n in qs)
    q = logits_of(model, parts["val"], encoder)
    assert np.abs(q - fp32).max() > 0  # really quantized ...
    agree = (predictions(q, False) == predictions(fp32, False)).mean()
    assert agree >= 0.9, f"{method}: INT8 agrees with fp32 on {agree:.0%} of the texts"  # ... still the same model


def test_percentile_clips_activation_ranges_below_max(run, parts, encoder):
    calib = parts["train"].sample(64)
    by_max = quantizers(insert_and_calibrate(load_model(run / "checkpoint"), calib, encoder, "max"))
    by_pct = quantizers(insert_and_calibrate(load_model(run / "checkpoint"), calib, encoder, "percentile", 99.0))
    inputs = [n for n in by_max if n.endswith("input_quantizer")]
    assert all(float(by_pct[n].amax) <= float(by_max[n].amax) * 1.001 for n in inputs)
    assert any(float(by_pct[n].amax) < float(by_max[n].amax) * 0.99 for n in inputs)


def test_sensitivity_has_a_row_per_group(run, parts, encoder):
    model = load_model(run / "checkpoint")
    fp32 = logits_of(model, parts["val"], encoder)
    model = insert_and_calibrate(model, parts["train"].sample(64), encoder, "max")
    groups = quantizer_groups(model)
    assert list(groups) == ["embeddings", "encoder.layer.0", "encoder.layer.1", "attention.qkv", "attention.output",
                            "ffn.intermediate", "ffn.output (GELU->dense)", "layernorm.inputs", "pooler", "classifier"]
    assert len(groups["attention.qkv"][1]) == 2 * 3 * 2      # 2 layers x q,k,v x (input, weight)
    assert all(n.startswith("bert.encoder.layer.1.") for n in groups["encoder.layer.1"][1])
    base, rows = sensitivity(model, parts["val"], encoder, fp32, log=lambda *_: None)
    assert [r["group"] for r in rows] == list(groups)
    assert base["fp32_accuracy"] == accuracy(predictions(fp32, False), parts["val"].labels)
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["gain"] == pytest.approx(r["accuracy"] - base["accuracy"])
    # afterwards every quantizer is active again
    assert all(q.is_enabled for q in quantizers(model).values())
    table = sensitivity_markdown(base, rows, 0.0025, ["classifier"])
    body = [line for line in table.splitlines() if line.startswith("| ") and "group" not in line]
    assert len(body) == len(groups)
    assert any(line.startswith("| classifier |") and "keep float" in line for line in body)


def test_quantize_stage_saves_a_restorable_model(run, parts, encoder, tmp_path):
    out = tmp_path / "quantized"
    settings = QuantizeSettings(calib_texts=64, sensitivity_texts=24, qat_steps=3, qat_lr=1e-4, qat_batch=8,
                                max_length=32, disable=("classifier",), threshold=1.0)
    logs = []
    report = quantize(run / "checkpoint", parts["train"], parts["val"], out, settings, log=logs.append)
    assert {p.name for p in out.iterdir()} >= {"modelopt_state.pth", "quantize.json", "sensitivity.md",
                                               "config.json", "tokenizer.json"}
    assert report["disabled_groups"] == ["classifier"] and report["qat"]["steps"] == 3
    assert json.loads((out / "quantize.json").read_text())["sensitivity"] == report["sensitivity"]
    restored = load_quantized(out)
    qs = {n: m for n, m in restored.named_modules() if type(m).__name__ == "TensorQuantizer"}
    assert not qs["classifier.input_quantizer"].is_enabled           # kept in float survives the save
    assert qs["bert.pooler.dense.input_quantizer"].is_enabled
    lg = logits_of(restored, parts["test"], encoder)
    assert accuracy(predictions(lg, False), parts["test"].labels) >= 0.9
    assert not any(p.name.startswith(".quantized") for p in tmp_path.iterdir())  # no temp folder left


def test_quantize_rejects_bad_settings(run, parts, tmp_path):
    with pytest.raises(BuildError, match="calibration method 'minmax'"):
        QuantizeSettings(calib_method="minmax")
    with pytest.raises(BuildError, match="no such group"):
        quantize(run / "checkpoint", parts["train"], parts["val"], tmp_path / "q",
                 QuantizeSettings(calib_texts=16, sensitivity_texts=8, qat_steps=0, disable=("attention.softmax",)),
                 log=lambda *_: None)
    assert not (tmp_path / "q").exists()


def test_qat_schedule_comes_from_the_training_run(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    assert training_record(tmp_path / "checkpoint") == {}
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"config": {"lr": 4e-5, "epochs": 3, "batch_size": 32}, "num_train": 1000}))
    rec = training_record(tmp_path / "checkpoint")
    assert rec["learning_rate"] == 4e-5 and rec["steps"] == 3 * 32 and rec["batch_size"] == 32


def test_qat_steps_count_the_global_batch_of_a_multi_process_run(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps(   # torchrun: 4 processes x batch 8
        {"config": {"lr": 4e-5, "epochs": 2, "batch_size": 8}, "global_batch": 32, "num_train": 1000}))
    rec = training_record(tmp_path / "checkpoint")
    assert rec["steps"] == 2 * 32 and rec["batch_size"] == 32


def test_qat_steps_through_the_trainers_loop(run, parts, encoder):
    model = insert_and_calibrate(load_model(run / "checkpoint"), parts["train"].sample(32), encoder, "max")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logs = []
    losses = qat_finetune(model, parts["train"], encoder, steps=4, lr=1e-3, batch_size=8, log=logs.append,
                          show_progress=False)
    assert len(losses) == 4 and all(np.isfinite(losses)) and not model.training
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed and any(n.endswith(".bias") for n in changed)
    assert "QAT: 4 steps" in logs[-1]
