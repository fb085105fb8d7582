"""Triton Python-backend model `postprocess`: raw logits -> logits, probabilities, label.

Shared by every ensemble of the repository, so the CPU Python models and the GPU native
backends (TensorRT, ONNX Runtime, libtorch) all end in the same code. Label names come from
labels.txt beside config.pbtxt (the same file Triton's classification extension reads).
Parameters: multi_label ("true"/"false"), thresholds (comma-separated, one per label).

Single-label: probabilities = softmax, label = name of the argmax.
Multi-label: probabilities = sigmoid, label = every name whose probability is above its
threshold, joined by "," ("" when none is).
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # contract_metrics.py beside this file
import contract_metrics  # noqa: E402


def softmax(x):
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])
        self.labels = [line.strip() for line in (model_dir / "labels.txt").read_text().splitlines()
                       if line.strip()]
        self.multi_label = params.get("multi_label", "false").lower() == "true"
        thresholds = [float(t) for t in params.get("thresholds", "").split(",") if t.strip()]
        self.thresholds = np.array(thresholds or [0.5] * len(self.labels), dtype=np.float32)
        if len(self.thresholds) != len(self.labels):
            raise pb_utils.TritonModelException(
                f"{len(self.thresholds)} thresholds for {len(self.labels)} labels in {model_dir}")
        self.metrics = contract_metrics.ModelMetrics(pb_utils, args, contract_metrics.POSTPROCESS, self.labels)

    def label_names(self, probabilities):
        if not self.multi_label:
            return [self.labels[j] for j in probabilities.argmax(axis=1)]
        above = probabilities > self.thresholds
        return [",".join(self.labels[j] for j in np.flatnonzero(row)) for row in above]

    def execute(self, requests):
        responses = []
        for i, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "raw_logits").as_numpy()
            if raw.ndim != 2 or raw.shape[1] != len(self.labels):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"postprocess: request {i}: raw_logits shape {raw.shape}, expected (n, {len(self.labels)})")))
                continue
            logits = raw.astype(np.float32)
            probabilities = sigmoid(logits) if self.multi_label else softmax(logits.astype(np.float64))
            predicted = self.label_names(probabilities)
            self.metrics.predicted(predicted)
            names = np.array([[n.encode()] for n in predicted], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("logits", logits),
                pb_utils.Tensor("probabilities", probabilities.astype(np.float32)),
                pb_utils.Tensor("label", names.reshape(-1, 1)),
            ]))
        return responses
