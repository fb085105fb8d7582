"""build/model_configs.py: every config of both targets is a valid ModelConfig that round-trips."""
import pytest

from build import model_configs as mcfg
from build.model_configs import ServingSpec, mc

SPEC = ServingSpec(labels=("negative", "positive"))
TABULAR = ServingSpec(labels=("open", "closed", "off-topic"), num_features=4)


def all_configs(spec):
    configs = [mcfg.tokenizer_config(spec), mcfg.postprocess_config(spec),
               mcfg.postprocess_config(spec, mc.TYPE_FP16, "postprocess_fp16")]
    for runtime in mcfg.RUNTIMES:
        name = f"bert_{runtime}_model"
        configs.append(mcfg.classifier_config(spec, name, runtime))
        configs.append(mcfg.ensemble_config(spec, f"bert_{runtime}", name))
    return configs


@pytest.mark.parametrize("spec", [SPEC, TABULAR], ids=["text", "tabular"])
def test_every_config_round_trips_and_batches(spec, tmp_path):
    for config in all_configs(spec):
        path = mcfg.write_config(config, tmp_path / config.name)
        parsed = mcfg.parse_config(path.read_text())
        assert parsed == config and parsed.name == config.name
        assert parsed.max_batch_size > 0
        assert parsed.version_policy.latest.num_versions == 1
        if parsed.platform == "ensemble":   # Triton rejects these on ensembles
            assert not parsed.HasField("dynamic_batching")
            assert not parsed.instance_group and not parsed.model_warmup
        else:
            assert parsed.HasField("dynamic_batching")
            assert parsed.dynamic_batching.max_queue_delay_microseconds == spec.queue_delay_us
            policy = parsed.dynamic_batching.default_queue_policy      # every composing model sheds load
            assert policy.max_queue_size == spec.max_queue_size == mcfg.DEFAULT_MAX_QUEUE_SIZE
            assert policy.default_timeout_microseconds == spec.queue_timeout_us == 1_000_000
            assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override
            assert len(parsed.instance_group) == 1 and parsed.model_warmup


def test_gpu_runtimes_run_on_the_gpu_and_cpu_runtimes_in_python():
    for key, rt in mcfg.RUNTIMES.items():
        c = mcfg.classifier_config(SPEC, "m", key)
        assert c.instance_group[0].kind == (mcfg.GPU if rt.platform else mcfg.CPU)
        assert (c.backend, c.platform) == (rt.backend, rt.platform)
        if rt.platform:
            assert c.default_model_filename == rt.model_file
        else:
            assert c.parameters["model_file"].string_value == rt.model_file
            assert c.parameters["threads"].string_value == "0"
        # Python models pad requests together, so the batcher may merge texts of different lengths
        assert [i.allow_ragged_batch for i in c.input if i.name in mcfg.TEXT_INPUTS] == [not rt.platform] * 3
    ort_cpu = mcfg.classifier_config(SPEC, "m", "python_onnxruntime")
    assert ort_cpu.parameters["allow_spinning"].string_value == "false"
    assert mcfg.tokenizer_config(SPEC).instance_group[0].kind == mcfg.CPU


def test_ensemble_contract():
    c = mcfg.ensemble_config(TABULAR, "bert_onnx_fp32", "bert_onnx_fp32_model")
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == \
        [("text", mc.TYPE_STRING, [1]), ("features", mc.TYPE_FP32, [4])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [
        ("logits", mc.TYPE_FP32, [3]), ("probabilities", mc.TYPE_FP32, [3]), ("label", mc.TYPE_STRING, [1])]
    assert [o.label_filename for o in c.output] == ["labels.txt", "labels.txt", ""]
    steps = c.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tokenizer", "bert_onnx_fp32_model", "postprocess"]
    assert dict(steps[1].input_map)["features"] == "features"
    assert dict(steps[1].output_map) == {"logits": "raw_logits"}
    # every tensor a step reads is an ensemble input or an earlier step's output
    available = {i.name for i in c.input}
    for s in steps:
        assert set(s.input_map.values()) <= available, s.model_name
        available |= set(s.output_map.values())
    assert {o.name for o in c.output} <= available


def test_classifier_io_and_warmup_shapes():
    spec = ServingSpec(labels=("a", "b"), max_length=16, warmup_length=32, warmup_batch=4)
    c = mcfg.classifier_config(spec, "bert_trt_fp16_model", "tensorrt_plan")
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == \
        [(n, mc.TYPE_INT64, [-1]) for n in mcfg.TEXT_INPUTS]
    assert c.output[0].name == "logits" and c.output[0].label_filename == "labels.txt"
    (sample,) = c.model_warmup
    assert sample.batch_size == 4
    assert {k: list(v.dims) for k, v in sample.inputs.items()} == {n: [16] for n in mcfg.TEXT_INPUTS}
    assert mcfg.warmup_files(c) == {n: (mc.TYPE_INT64, [16]) for n in mcfg.TEXT_INPUTS}
    tok = mcfg.tokenizer_config(spec)
    assert mcfg.warmup_files(tok) == {"text": (mc.TYPE_STRING, [1])}
    assert tok.parameters["max_length"].string_value == "16"


def test_multi_label_postprocess_parameters():
    spec = ServingSpec(labels=("toxic", "insult", "threat"), multi_label=True, thresholds=(0.5, 0.3, 0.7))
    c = mcfg.postprocess_config(spec)
    assert c.parameters["multi_label"].string_value == "true"
    assert [float(t) for t in c.parameters["thresholds"].string_value.split(",")] == [0.5, 0.3, 0.7]
    assert c.input[0].name == "raw_logits" and list(c.input[0].dims) == [3]


def test_spec_and_parse_errors_are_clear():
    with pytest.raises(ValueError, match="max_batch_size must be > 0"):
        ServingSpec(labels=("a",), max_batch_size=0)
    with pytest.raises(ValueError, match="2 thresholds for 3 labels"):
        ServingSpec(labels=("a", "b", "c"), thresholds=(0.5, 0.5))
    with pytest.raises(ValueError, match="bad.pbtxt: not a valid Triton ModelConfig"):
        mcfg.parse_config('name: "x"\nmax_batch_sise: 8\n', "bad.pbtxt")


def test_queue_bounds_are_settable_and_checked():
    spec = ServingSpec(labels=("a", "b"), max_batch_size=16, max_queue_size=16, queue_timeout_us=250_000)
    policy = mcfg.classifier_config(spec, "m", "python_onnxruntime").dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (16, 250_000)
    unbounded = ServingSpec(labels=("a", "b"), max_queue_size=0, queue_timeout_us=0)
    policy = mcfg.tokenizer_config(unbounded).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (0, 0)
    with pytest.raises(ValueError, match="max_queue_size 8 must be 0 .unbounded. or at least max_batch_size 64"):
        ServingSpec(labels=("a",), max_queue_size=8)
    with pytest.raises(ValueError, match="must be >= 0"):
        ServingSpec(labels=("a",), queue_timeout_us=-1)


def test_served_models_get_what_their_input_checks_need():
    spec = ServingSpec(labels=("a", "b"), max_length=32, vocab_size=2048, type_vocab_size=2)
    params = mcfg.classifier_config(spec, "m", "python_onnxruntime").parameters
    assert {k: params[k].string_value for k in ("vocab_size", "type_vocab_size", "max_length")} == \
        {"vocab_size": "2048", "type_vocab_size": "2", "max_length": "32"}
    tok = mcfg.tokenizer_config(spec).parameters
    # a full request of texts kept whole (64 x 64 characters per token x 32 tokens, 4 UTF-8 bytes each)
    assert tok["max_request_bytes"].string_value == str(64 * 64 * 32 * 4)
    assert mcfg.tokenizer_config(ServingSpec(labels=("a",), max_request_bytes=1000)).parameters[
        "max_request_bytes"].string_value == "1000"
