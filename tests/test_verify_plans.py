"""What the TensorRT plans' check stands on, checked here without TensorRT: the held-out reference the
`onnx` stage saves (the texts and PyTorch fp32's logits), the gates and report section the plans
get, and the CUDA runtime binding that feeds a plan (a real round trip where a GPU is present)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from build_fixtures import make_run

from build.artifacts import Encoder, load_examples
from build.export_onnx import build_onnx
from build.plan_runner import CUDART_NAMES, CudaRuntime
from build.reference import read_reference
from build.tensorrt import PlanError
from build.verify import compare, onnx_logits
from build.verify_plans import SECTION, SERVED_DTYPES, dtype_problems, report_plans


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"))
    test = load_examples(run / "split.json", parts=["test"])["test"]
    build_onnx(run / "checkpoint", run / "onnx", test, ("fp32", "fp16"), max_length=32, packed=False,
               log=lambda *_: None)
    return run / "onnx"


def test_the_onnx_stage_saves_its_held_out_reference(onnx_dir):
    examples, reference, meta = read_reference(onnx_dir)
    test = load_examples(onnx_dir.parent / "split.json", parts=["test"])["test"]
    assert examples.texts == test.texts and examples.labels == test.labels
    assert meta == {"max_length": 32, "multi_label": False} and reference.shape == (len(test), 2)
    # the saved logits are PyTorch fp32's: the verified fp32 graph agrees with them to 1e-4
    fp32 = onnx_logits(onnx_dir / "model_fp32.onnx", examples, Encoder(onnx_dir, 32))
    assert np.abs(fp32 - reference).max() <= 1e-4


def test_plan_results_get_their_own_section_of_the_build_report(onnx_dir, tmp_path):
    examples, reference, meta = read_reference(onnx_dir)
    encoder = Encoder(onnx_dir, meta["max_length"])
    engines = tmp_path / "engines"
    good = compare("fp16", onnx_dir / "model_fp16.plan", onnx_logits(onnx_dir / "model_fp16.onnx", examples, encoder),
                   reference, examples.labels)
    bad = compare("int8", onnx_dir / "model_int8.plan", -reference, reference, examples.labels)  # every label flipped
    assert good.passed and not bad.passed and "recovery" in bad.reason
    before = (onnx_dir / "build_report.md").read_text()
    for _ in range(2):            # checked again: the section is replaced, not repeated
        report_plans([good, bad], onnx_dir, onnx_dir, engines)
    md = (onnx_dir / "build_report.md").read_text()
    assert md.startswith(before.rstrip()) and md.count(SECTION) == 1
    section = md.split(SECTION)[1]
    assert f"| fp16 | model_fp16.plan | {len(examples)} |" in section and "| PASS |" in section
    assert "FAIL: accuracy recovery" in section and "int8 accuracy recovery >= 99%" in section
    data = json.loads((onnx_dir / "build_report.json").read_text())
    assert [p["path"] for p in data["plans"]] == [str(engines / "model_fp16.plan"), str(engines / "model_int8.plan")]
    assert [r["precision"] for r in data["parity"]] == ["fp32", "fp16"]      # the ONNX rows are untouched
    assert data["plans_info"]["plans"] == str(engines)


def _cudart_from_the_pip_wheel() -> list[str]:
    import nvidia.cuda_runtime

    return [str(Path(p) / "lib" / "libcudart.so.12") for p in nvidia.cuda_runtime.__path__] + list(CUDART_NAMES)


def test_cuda_runtime_binding_copies_through_the_gpu_or_names_the_cuda_error():
    cuda = CudaRuntime(_cudart_from_the_pip_wheel())
    data = np.arange(12, dtype=np.int64).reshape(3, 4)
    if not torch.cuda.is_available():
        with pytest.raises(PlanError, match=r"cudaMalloc\(96\) failed: CUDA error \d+ \(.+\)"):
            cuda.malloc(data.nbytes)
        return
    ptr = cuda.malloc(data.nbytes)
    try:
        cuda.to_device(ptr, data)
        back = cuda.to_host(np.empty_like(data), ptr)
    finally:
        cuda.free(ptr)
    assert np.array_equal(back, data)


def test_a_missing_cuda_runtime_is_named():
    with pytest.raises(PlanError, match="libcudart.*not loadable here: tried libcudart-missing.so"):
        CudaRuntime(["libcudart-missing.so"])


def test_plan_tensor_types_are_those_the_triton_configs_declare():
    from build import model_configs as mcfg

    spec = mcfg.ServingSpec(labels=("a", "b"), num_features=3)
    names = {mcfg.mc.TYPE_INT64: "int64", mcfg.mc.TYPE_FP32: "float32"}
    assert {n: names[t] for n, t, _ in mcfg.token_inputs(spec)} | {"logits": "float32"} == SERVED_DTYPES
    assert dtype_problems({"input_ids": np.dtype("int64"), "logits": np.dtype("float32")}) == []
    assert dtype_problems({"input_ids": np.dtype("int32"), "logits": np.dtype("float16")}) == [
        "input_ids is int32, the Triton config declares int64", "logits is float16, the Triton config declares float32"]
