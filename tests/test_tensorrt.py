"""TensorRT plans: the exact build command and profiles (checked anywhere), the refusal of packed
graphs and the refusal without TensorRT (checked here, before anything is written), the plans'
parity section of the build report, the CUDA runtime binding, and a real build and verification
(only where TensorRT runs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from build.__main__ import main
from build.tensorrt import (TIMING_CACHE, PlanError, Profile, TensorRTUnavailable, build_engines, find_backend,
                            packing_ops, precision_flags, trtexec_command)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A tiny BERT exported packed and padded: onnx folders as the `onnx` stage lays them out."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_repository import make_tiny_checkpoint

    from build.export_onnx import export_onnx
    from training.model import BertForSequenceClassification

    tmp = tmp_path_factory.mktemp("graphs")
    model = BertForSequenceClassification.from_pretrained(make_tiny_checkpoint(tmp / "checkpoint")).eval()
    folders = {}
    for kind in ("packed", "padded"):
        folders[kind] = tmp / kind
        export_onnx(model, folders[kind] / "model_fp32.onnx", packed=kind == "packed")
        shutil.copy2(folders[kind] / "model_fp32.onnx", folders[kind] / "model_int8.onnx")  # a name for the int8 source
    return folders


def _shapes(cmd, flag):
    [arg] = [a for a in cmd if a.startswith(f"--{flag}=")]
    return dict(s.split(":") for s in arg.split("=", 1)[1].split(","))


def test_trtexec_command_has_the_profiles_and_precision_flags():
    p = Profile(max_batch=64, opt_batch=32, min_seq=8, opt_seq=48, max_seq=128)
    cmd = trtexec_command("o/model_int8.onnx", "e/model_int8.plan", "int8", p)
    assert cmd[:3] == ["trtexec", "--onnx=o/model_int8.onnx", "--saveEngine=e/model_int8.plan"]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    assert _shapes(cmd, "minShapes") == dict.fromkeys(names, "1x8")
    assert _shapes(cmd, "optShapes") == dict.fromkeys(names, "32x48")
    assert _shapes(cmd, "maxShapes") == dict.fromkeys(names, "64x128")
    assert "--int8" in cmd and "--fp16" in cmd  # INT8 where the Q/DQ nodes say, fp16 elsewhere
    fp16 = trtexec_command("o/model_fp32.onnx", "e/model_fp16.plan", "fp16", p)
    assert "--fp16" in fp16 and "--int8" not in fp16
    assert "--skipInference" in fp16 and "--memPoolSize=workspace:4096M" in fp16
    assert not any(a.startswith("--timingCacheFile") for a in fp16)
    cached = trtexec_command("o/model_fp32.onnx", "e/model_fp16.plan", "fp16", p, timing_cache="b/trt.cache")
    assert cached[-1] == "--timingCacheFile=b/trt.cache"


def test_tabular_models_get_a_features_profile():
    cmd = trtexec_command("m.onnx", "m.plan", "fp16", Profile(), tabular_features=5)
    assert _shapes(cmd, "minShapes")["features"] == "1x5"
    assert _shapes(cmd, "maxShapes")["features"] == "64x5"


def test_profile_and_precision_are_validated():
    with pytest.raises(ValueError, match="opt_batch"):
        Profile(max_batch=8, opt_batch=16)
    with pytest.raises(ValueError, match="min_seq"):
        Profile(min_seq=64, opt_seq=32)
    with pytest.raises(ValueError, match="unknown engine precision"):
        precision_flags("int4")


def test_cli_prints_the_commands_without_tensorrt(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"num_tabular_features": 0}))
    assert main(["engines", "--onnx", str(tmp_path), "--out", str(tmp_path / "engines"), "--print-commands",
                 "--max-batch", "16", "--opt-batch", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "model_fp32.onnx" in lines[0] and "model_int8.onnx" in lines[1]
    assert "--maxShapes=input_ids:16x128" in lines[1]
    # one timing cache beside the plan folder, shared by every plan: a rebuild reuses the tuning
    assert all(line.endswith(f"--timingCacheFile={tmp_path / TIMING_CACHE}") for line in lines)
    assert not (tmp_path / "engines").exists()


def test_packing_ops_are_read_from_the_graph_bytes(graphs):
    assert packing_ops(graphs["packed"] / "model_fp32.onnx") == ["NonZero", "CumSum"]
    assert packing_ops(graphs["padded"] / "model_fp32.onnx") == []
    # a pattern cut by a block boundary is still found
    assert packing_ops(graphs["packed"] / "model_fp32.onnx", block=7) == ["NonZero", "CumSum"]


def test_a_packed_graph_is_refused_before_anything_is_built(graphs, tmp_path, capsys):
    out = tmp_path / "engines"
    with pytest.raises(PlanError, match=r"packed graph \(CumSum, NonZero\).*ONNX_ARGS=--padded.*--allow-packed"):
        build_engines(graphs["packed"], out, ("fp16",))
    assert main(["engines", "--onnx", str(graphs["packed"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model_fp32.onnx" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / TIMING_CACHE).exists()


@pytest.mark.skipif(find_backend() is not None, reason="TensorRT is installed here")
def test_without_tensorrt_the_stage_says_so_and_writes_nothing(graphs, tmp_path, capsys):
    for folder, allow in ((graphs["padded"], False), (graphs["packed"], True)):   # past the input checks
        with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
            build_engines(folder, tmp_path / "engines", allow_packed=allow)
    assert main(["engines", "--onnx", str(graphs["padded"]), "--out", str(tmp_path / "engines")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed") and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="--padded"):
        build_engines(tmp_path, tmp_path / "engines")


@pytest.mark.skipif(find_backend() is not None, reason="TensorRT is installed here")
def test_plan_verification_without_tensorrt_says_so_and_exits_0(graphs, tmp_path, capsys):
    assert main(["verify-plans", "--onnx", str(graphs["padded"]), "--engines", str(tmp_path / "engines")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan verification skipped: TensorRT is not installed here") and out.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tensorrt
def test_builds_fp16_and_int8_plans(tmp_path):
    from build_fixtures import make_run

    from build.artifacts import load_examples
    from build.export_onnx import build_onnx
    from build.quantize import QuantizeSettings, quantize

    run = make_run(tmp_path / "run")
    parts = load_examples(run / "split.json")
    quantize(run / "checkpoint", parts["train"], parts["val"], run / "quantized",
             QuantizeSettings(calib_texts=64, sensitivity_texts=16, qat_steps=0, max_length=32))
    build_onnx(run / "checkpoint", run / "onnx", parts["test"], ("fp32", "int8"), run / "quantized", max_length=32,
               packed=False)
    profile = Profile(max_batch=32, opt_batch=4, max_seq=32, opt_seq=16)
    built = build_engines(run / "onnx", run / "engines", profile=profile)
    assert set(built) == {"fp16", "int8"} and all(p.stat().st_size > 0 for p in built.values())
    record = json.loads((run / "engines" / "engines.json").read_text())
    assert record["profile"]["max_batch"] == 32 and (run / TIMING_CACHE).stat().st_size > 0
    # checked on the held-out texts with the ONNX gates, into the same build report
    assert record["verification"] == {"verified": True, "parity": {"fp16": "PASS", "int8": "PASS"}}
    report = json.loads((run / "onnx" / "build_report.json").read_text())
    assert [p["precision"] for p in report["plans"]] == ["fp16", "int8"]
    assert main(["verify-plans", "--onnx", str(run / "onnx"), "--engines", str(run / "engines")]) == 0
