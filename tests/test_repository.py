"""build/repository.py on a tiny random BERT: layout, configs, versions, atomic swap, skips.

The tiny checkpoint (a WordPiece tokenizer made with `tokenizers`, a 2-layer BERT saved with our
save_pretrained) is also what tests/test_triton_cpu.py serves with the real Triton server.
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from build import model_configs as mcfg
from build import repository
from build.repository_files import WARMUP_TEXT
from training.model import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))
from tiny_bert import make_tiny_build, make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_build(tmp_path_factory.mktemp("tiny"), int8dyn=True)


def quiet(*_):
    pass


def test_cpu_repository_layout(tiny, tmp_path):
    ckpt, onnx_dir = tiny
    out = tmp_path / "model_repository"
    result = repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)

    assert result.version == 1 and result.skipped == {}
    assert result.ensembles == ["bert_pytorch_fp32", "bert_onnx_fp32", "bert_onnx_int8", "bert_onnx_int8dyn"]
    # the cpu classifiers post-process their own logits: no shared postprocess model on cpu
    expected = {"tokenizer", *result.ensembles, *(f"{e}_model" for e in result.ensembles)}
    assert {p.name for p in out.iterdir() if p.is_dir()} == expected
    for name in expected:                       # every config parses back and names its folder
        config = mcfg.parse_config((out / name / "config.pbtxt").read_text())
        assert config.name == name and config.max_batch_size == 64
        assert (out / name / "1").is_dir()
        if any(o.label_filename for o in config.output):
            assert (out / name / "labels.txt").read_text().split() == ["negative", "positive"]
        for file, (dtype, dims) in mcfg.warmup_files(config).items():
            data = (out / name / "warmup" / file).read_bytes()
            if dtype == mcfg.mc.TYPE_INT64:
                assert len(data) == 8 * dims[0]
    # every Python-backend version folder stands alone: model.py and a copy of the contract package
    contract = sorted(p.name for p in (repository.ROOT / "contract").glob("*.py"))
    for name in ("tokenizer", "bert_pytorch_fp32_model", "bert_onnx_fp32_model", "bert_onnx_int8_model",
                 "bert_onnx_int8dyn_model"):
        assert (out / name / "1" / "model.py").is_file(), name
        assert sorted(p.name for p in (out / name / "1" / "contract").glob("*.py")) == contract, name
        assert (out / name / "1" / "__pycache__").is_dir(), name    # compiled by the build, not by the server
    v = out / "bert_pytorch_fp32_model" / "1"
    assert (v / "checkpoint" / "model.safetensors").is_file()
    assert sorted(p.name for p in (v / "training").glob("*.py")) == ["__init__.py", "config.py", "dropout.py", "model.py"]
    assert (out / "bert_onnx_int8_model" / "1" / "model.onnx").is_file()
    ops = {n.op_type for n in onnx.load(str(out / "bert_onnx_int8dyn_model" / "1" / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops      # the dynamically quantized graph
    assert (out / "tokenizer" / "1" / "tokenizer.json").is_file()
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["version"] == 1 and manifest["target"] == "cpu" and manifest["skipped"] == {}


def test_cpu_classifiers_post_process_themselves(tiny, tmp_path):
    """Two steps per cpu ensemble (tokenizer -> classifier): the classifier returns logits,
    probabilities and label itself; --postprocess-model gives the GPU's three steps instead."""
    ckpt, onnx_dir = tiny
    out = tmp_path / "repo"
    repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    for ensemble in ("bert_pytorch_fp32", "bert_onnx_fp32"):
        ens = mcfg.parse_config((out / ensemble / "config.pbtxt").read_text())
        steps = ens.ensemble_scheduling.step
        assert [s.model_name for s in steps] == ["tokenizer", f"{ensemble}_model"]
        assert dict(steps[1].output_map) == {n: n for n in ("logits", "probabilities", "label")}
        model = mcfg.parse_config((out / f"{ensemble}_model" / "config.pbtxt").read_text())
        assert [(o.name, o.label_filename) for o in model.output] == [
            ("logits", "labels.txt"), ("probabilities", "labels.txt"), ("label", "")]
        assert model.parameters["postprocess"].string_value == "true"
        assert (out / f"{ensemble}_model" / "labels.txt").read_text().split() == ["negative", "positive"]
    before = tmp_path / "before"
    result = repository.build_repository("cpu", ckpt, before, onnx_dir=onnx_dir, log=quiet, postprocess_model=True)
    assert (before / "postprocess" / "config.pbtxt").is_file()
    for ensemble in result.ensembles:
        ens = mcfg.parse_config((before / ensemble / "config.pbtxt").read_text())
        assert [s.model_name for s in ens.ensemble_scheduling.step][1:] == [f"{ensemble}_model", "postprocess"]
        model = mcfg.parse_config((before / f"{ensemble}_model" / "config.pbtxt").read_text())
        assert [o.name for o in model.output] == ["logits"] and model.parameters["postprocess"].string_value == "false"
    with pytest.raises(mcfg.ServingSpecError, match="only Python-backend classifiers post-process"):
        mcfg.classifier_config(mcfg.ServingSpec(labels=("a", "b")), "m", "tensorrt_plan", postprocess=True)


def test_warmup_text_is_a_serialized_bytes_tensor(tiny, tmp_path):
    ckpt, onnx_dir = tiny
    out = tmp_path / "repo"
    repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    data = (out / "tokenizer" / "warmup" / "text").read_bytes()
    (n,) = struct.unpack("<I", data[:4])
    assert n == len(data) - 4 and data[4:].decode() == WARMUP_TEXT
    # the classifier's warmup names no vocabulary entry but the pad id: valid for any build's model
    warm = {n: np.frombuffer((out / "bert_onnx_fp32_model" / "warmup" / n).read_bytes(), "<i8")
            for n in mcfg.TEXT_INPUTS}
    assert warm["input_ids"].tolist() == [0] * 32 and warm["attention_mask"].tolist() == [1] * 32


def test_rebuild_bumps_version_keeps_readme_and_is_atomic(tiny, tmp_path, monkeypatch):
    ckpt, onnx_dir = tiny
    out = tmp_path / "model_repository"
    out.mkdir()
    (out / "README.md").write_text("tracked readme\n")
    repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    r2 = repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    r3 = repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    assert (r2.version, r2.previous, r3.version, r3.previous) == (2, 1, 3, 2)
    # v3 is served, v2 (the replaced build) is kept unserved with its model-folder files, v1 is gone
    assert sorted(p.name for p in (out / "tokenizer").iterdir() if p.name.isdigit()) == ["2", "3"]
    for name in ("tokenizer", "bert_onnx_fp32", "bert_onnx_fp32_model"):
        config = mcfg.parse_config((out / name / "config.pbtxt").read_text())
        assert list(config.version_policy.specific.versions) == [3]
        kept = mcfg.parse_config((out / name / "2" / ".model_files" / "config.pbtxt").read_text())
        assert list(kept.version_policy.specific.versions) == [2]
    steps = mcfg.parse_config((out / "bert_onnx_fp32" / "config.pbtxt").read_text()).ensemble_scheduling.step
    assert [s.model_version for s in steps] == [3, 3]   # its own build only (cpu: tokenizer, classifier)
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["previous"] == 2 and manifest["previous_build"]["version"] == 2
    assert (out / "README.md").read_text() == "tracked readme\n"
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")
    monkeypatch.setattr(repository, "copy_source", boom)   # fails in the middle of the build
    with pytest.raises(RuntimeError, match="simulated"):
        repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert not list(tmp_path.glob(".model_repository.*"))   # no temp tree left behind


def test_a_repository_without_kept_versions_can_still_be_rolled_back_after_one_build(tiny, tmp_path):
    """A repository written before builds kept versions ("latest" everywhere): the next build keeps
    its version with the model-folder files it served, named explicitly, so a rollback returns to it."""
    from contract.repository_versions import current_version, plan_rollback, write_rollback

    ckpt, onnx_dir = tiny
    out = tmp_path / "model_repository"
    repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    for config_path in out.glob("*/config.pbtxt"):          # make it look like the old layout
        config = mcfg.parse_config(config_path.read_text())
        config.version_policy.Clear()
        config.version_policy.latest.num_versions = 1
        for step in config.ensemble_scheduling.step:
            step.model_version = -1
        config_path.write_text(mcfg.to_text(config))
        shutil.rmtree(config_path.parent / "1" / ".model_files")
    assert repository.build_repository("cpu", ckpt, out, onnx_dir=onnx_dir, log=quiet).previous == 1
    back = write_rollback(plan_rollback(out))
    assert (back.from_version, back.to_version, back.dropped) == (2, 1, {}) and current_version(out) == 1
    steps = mcfg.parse_config((out / "bert_onnx_fp32" / "config.pbtxt").read_text()).ensemble_scheduling.step
    assert [s.model_version for s in steps] == [1, 1]


def test_missing_artifacts_are_skipped_and_listed(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "checkpoint")
    result = repository.build_repository("cpu", ckpt, tmp_path / "repo", log=quiet)
    assert result.ensembles == ["bert_pytorch_fp32"]
    assert set(result.skipped) == {"bert_onnx_fp32", "bert_onnx_int8", "bert_onnx_int8dyn"}
    assert result.skipped["bert_onnx_int8"] == "model_int8.onnx: no --onnx-dir given"
    result = repository.build_repository("cpu", ckpt, tmp_path / "repo", onnx_dir=tmp_path, log=quiet)
    assert result.skipped["bert_onnx_int8"].startswith(f"model_int8.onnx not found in {tmp_path}, ")
    assert not (tmp_path / "repo" / "bert_onnx_int8").exists()


def test_gpu_repository_without_gpu(tiny, tmp_path):
    """GPU configs are built and parsed here: TorchScript traced on CPU, no plans -> TRT skipped."""
    ckpt, onnx_dir = tiny
    out = tmp_path / "gpu_repo"
    result = repository.build_repository("gpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    assert {"bert_pytorch_fp32", "bert_pytorch_fp16"} <= set(result.ensembles)
    assert set(result.skipped) >= {"bert_trt_fp16", "bert_trt_int8", "bert_onnx_fp16"}
    config = mcfg.parse_config((out / "bert_pytorch_fp32_model" / "config.pbtxt").read_text())
    assert config.platform == "pytorch_libtorch" and config.instance_group[0].kind == mcfg.GPU
    assert mcfg.parse_config((out / "tokenizer" / "config.pbtxt").read_text()).instance_group[0].kind == mcfg.CPU
    # the traced model follows its inputs' device: no device frozen at trace time
    traced = torch.jit.load(str(out / "bert_pytorch_fp32_model" / "1" / "model.pt"))
    assert 'device=torch.device("cpu")' not in traced.model.bert.embeddings.code
    x = torch.tensor([[2, 50, 51, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]]), torch.zeros(1, 5, dtype=torch.long)
    eager = BertForSequenceClassification.from_pretrained(ckpt).eval()
    with torch.no_grad():
        assert torch.allclose(traced(*x), eager(*x).logits, atol=1e-5)


def with_fp16_logits(src: Path, dst: Path) -> Path:
    """The fp32 graph with its logits cast to float16, as an fp16 export with fp16 outputs has."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    out = model.graph.output[0]
    for node in model.graph.node:
        node.output[:] = ["logits_fp32" if o == "logits" else o for o in node.output]
    model.graph.node.append(helper.make_node("Cast", ["logits_fp32"], ["logits"], to=onnx.TensorProto.FLOAT16))
    out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def test_gpu_fp16_onnx_gets_an_fp16_postprocess(tiny, tmp_path):
    ckpt, onnx_dir = tiny
    fp16_dir = tmp_path / "fp16"
    with_fp16_logits(onnx_dir / "onnx" / "model_fp32.onnx", fp16_dir / "model_fp16.onnx")
    out = tmp_path / "repo"
    repository.build_repository("gpu", ckpt, out, onnx_dir=fp16_dir, log=quiet)
    model_cfg = mcfg.parse_config((out / "bert_onnx_fp16_model" / "config.pbtxt").read_text())
    assert model_cfg.platform == "onnxruntime_onnx" and model_cfg.output[0].data_type == mcfg.mc.TYPE_FP16
    ens = mcfg.parse_config((out / "bert_onnx_fp16" / "config.pbtxt").read_text())
    assert ens.ensemble_scheduling.step[2].model_name == "postprocess_fp16"
    post = mcfg.parse_config((out / "postprocess_fp16" / "config.pbtxt").read_text())
    assert post.input[0].data_type == mcfg.mc.TYPE_FP16 and post.output[0].data_type == mcfg.mc.TYPE_FP32


def test_bad_inputs_name_the_problem(tiny, tmp_path):
    ckpt, onnx_dir = tiny
    with pytest.raises(repository.RepositoryError, match="max_position_embeddings 64"):
        repository.build_repository("cpu", ckpt, tmp_path / "r", max_length=512, log=quiet)
    with pytest.raises(repository.RepositoryError, match="--onnx-dir .*no such folder"):
        repository.build_repository("cpu", ckpt, tmp_path / "r", onnx_dir=tmp_path / "nope", log=quiet)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(repository.RepositoryError, match="no tokenizer.json"):
        repository.build_repository("cpu", no_tok, tmp_path / "r", log=quiet)
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "tokenizer.json").write_text((ckpt / "tokenizer.json").read_text())
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta", "num_labels": 2}))
    with pytest.raises(repository.RepositoryError, match="roberta.*BERT only"):
        repository.build_repository("cpu", roberta, tmp_path / "r", log=quiet)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (broken / name).write_text((ckpt / name).read_text())
    with pytest.raises(repository.RepositoryError, match="no model.safetensors"):
        repository.build_repository("cpu", broken, tmp_path / "r", log=quiet)
    assert not (tmp_path / "r").exists()


def test_cli_builds_a_repository(tiny, tmp_path, capsys):
    ckpt, onnx_dir = tiny
    out = tmp_path / "cli_repo"
    with pytest.raises(SystemExit) as done:
        # as `make repository` calls it before any `make engines`: the plan folder does not exist yet
        repository.main(["--target", "cpu", "--checkpoint", str(ckpt), "--onnx-dir", str(onnx_dir),
                         "--plan-dir", str(tmp_path / "engines"), "--out", str(out), "--max-length", "32",
                         "--sort-chunk-rows", "4"])
    assert done.value.code == 0 and "bert_onnx_int8" in capsys.readouterr().out
    params = mcfg.parse_config((out / "tokenizer" / "config.pbtxt").read_text()).parameters
    assert params["max_length"].string_value == "32"
    for model in ("bert_onnx_fp32_model", "bert_pytorch_fp32_model"):
        params = mcfg.parse_config((out / model / "config.pbtxt").read_text()).parameters
        assert params["sort_chunk_rows"].string_value == "4"


def test_cli_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        repository.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "r")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no tokenizer.json" in err and err.count("\n") == 1


def test_tabular_multi_label_repository(tmp_path):
    ckpt, onnx_dir = make_tiny_build(tmp_path, int8=False, labels=("toxic", "insult", "threat"),
                                     multi_label=True, num_features=3, thresholds=(0.5, 0.4, 0.6))
    out = tmp_path / "repo"
    result = repository.build_repository("gpu", ckpt, out, onnx_dir=onnx_dir, log=quiet)
    assert "bert_pytorch_fp32" in result.ensembles
    ens = mcfg.parse_config((out / "bert_pytorch_fp32" / "config.pbtxt").read_text())
    assert [i.name for i in ens.input] == ["text", "features"]
    post = mcfg.parse_config((out / "postprocess" / "config.pbtxt").read_text())
    assert post.parameters["multi_label"].string_value == "true"
    assert post.parameters["thresholds"].string_value == "0.5,0.4,0.6"
    model = mcfg.parse_config((out / "bert_pytorch_fp32_model" / "config.pbtxt").read_text())
    assert [(i.name, list(i.dims)) for i in model.input][-1] == ("features", [3])
    warm = np.frombuffer((out / "bert_pytorch_fp32_model" / "warmup" / "features").read_bytes(), "<f4")
    assert warm.tolist() == [10.0, 10.0, 10.0]    # the training means: a typical raw row


def test_tensorrt_plans_are_configured_when_present(tiny, tmp_path):
    """No TensorRT here: plan files stand in for trtexec output; their profile record is checked."""
    ckpt, onnx_dir = tiny
    engines = tmp_path / "engines"
    engines.mkdir()
    for p in ("fp16", "int8"):
        (engines / f"model_{p}.plan").write_bytes(b"plan bytes")
    (engines / "engines.json").write_text(json.dumps({"profile": {"max_batch": 64, "max_seq": 128}}))
    result = repository.build_repository("gpu", ckpt, tmp_path / "repo", onnx_dir=onnx_dir,
                                         plan_dir=tmp_path, log=quiet)
    assert {"bert_trt_fp16", "bert_trt_int8"} <= set(result.ensembles)
    config = mcfg.parse_config((tmp_path / "repo" / "bert_trt_int8_model" / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert (tmp_path / "repo" / "bert_trt_int8_model" / "1" / "model.plan").read_bytes() == b"plan bytes"

    (engines / "engines.json").write_text(json.dumps({"profile": {"max_batch": 32, "max_seq": 128}}))
    result = repository.build_repository("gpu", ckpt, tmp_path / "repo", onnx_dir=onnx_dir,
                                         plan_dir=tmp_path, log=quiet)
    assert "bert_trt_fp16" not in result.ensembles
    assert "batches up to 32 < --max-batch-size 64" in result.skipped["bert_trt_fp16"]


def test_a_cpu_classifier_reads_its_labels_beside_its_config(tmp_path):
    from contract.params import ClassifierParams
    from contract.postprocess import PostprocessError, classifier_postprocess
    assert classifier_postprocess(tmp_path, ClassifierParams()) is None          # not asked to post-process
    with pytest.raises(PostprocessError, match=r"labels.txt: cannot read the label names"):
        classifier_postprocess(tmp_path, ClassifierParams(postprocess=True))
    (tmp_path / "labels.txt").write_text("toxic\ninsult\n")
    post = classifier_postprocess(tmp_path, ClassifierParams(postprocess=True, multi_label=True, thresholds=(0.5, 0.2)))
    assert post.labels == ("toxic", "insult") and post.multi_label and post.thresholds == (0.5, 0.2)
    tensors, names = post.tensors(np.array([[3.0, -1.0], [-3.0, -3.0]], dtype=np.float32))
    assert names == ["toxic,insult", ""] and tensors["label"].tolist() == [[b"toxic,insult"], [b""]]
    with pytest.raises(PostprocessError, match="1 thresholds for 2 labels"):
        classifier_postprocess(tmp_path, ClassifierParams(postprocess=True, thresholds=(0.5,)))
