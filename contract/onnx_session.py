"""The ONNX Runtime session settings of a served ONNX classifier, in one place.

Used by the Python-backend ONNX Runtime classifier and by the benchmark's in-process baseline and
its GEMM rate, so that the baseline runs the graph exactly as the server does.
"""
import onnxruntime as ort


def open_session(model, intra_op_threads: int = 1, allow_spinning: bool = False,
                 profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session on `model` (a path, or a serialized graph as bytes): one graph at a time, all
    graph optimisations.

    allow_spinning=False: idle intra-op threads sleep instead of spinning, because this process
    shares the cores with the tokenizer, the postprocess model and the server, and spinning threads
    take cycles from them. With one thread there is no pool at all.

    profile_prefix: record ONNX Runtime's per-operator profile (clients/op_profile.py) in a JSON
    file starting with it; never on a served model (every run would append to the file).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(intra_op_threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
