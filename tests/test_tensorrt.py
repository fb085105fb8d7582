"""TensorRT plans: the exact build command and profiles (checked anywhere), the refusal without
TensorRT (checked where it is absent), and a real build (only where TensorRT runs)."""
from __future__ import annotations

import json

import pytest

from build.__main__ import main
from build.tensorrt import (Profile, TensorRTUnavailable, build_engines, find_backend, precision_flags,
                            trtexec_command)


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
    assert not (tmp_path / "engines").exists()


@pytest.mark.skipif(find_backend() is not None, reason="TensorRT is installed here")
def test_without_tensorrt_the_stage_says_so_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        build_engines(tmp_path, tmp_path / "engines")
    assert main(["engines", "--onnx", str(tmp_path), "--out", str(tmp_path / "engines")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed") and "nothing was written" in err
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
    build_onnx(run / "checkpoint", run / "onnx", parts["test"], ("fp32", "int8"), run / "quantized", max_length=32)
    built = build_engines(run / "onnx", run / "engines", profile=Profile(max_batch=8, opt_batch=4, max_seq=32, opt_seq=16))
    assert set(built) == {"fp16", "int8"} and all(p.stat().st_size > 0 for p in built.values())
    assert json.loads((run / "engines" / "engines.json").read_text())["profile"]["max_batch"] == 8
