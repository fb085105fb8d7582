"""The benchmark's in-process baseline: what the served bert_onnx_fp32 ensemble runs, without Triton.

Everything is read from the model repository on disk, so the baseline runs exactly what the server
runs: the tokenizer's tokenizer.json and parameters (contract.encoder: same ids, same padding), the
ONNX file and the classifier's session settings, threads and length-sorted chunks
(contract.onnx_session, contract.batching), and the post-process's labels and thresholds
(contract.postprocess: the classifier's own on cpu, the shared postprocess model's in the GPU's
shape). The ratio of the ensemble's samples/s to this one's is what serving costs. Every ONNX
ensemble has one (find_in_repository(repo, ensemble)): the benchmark's cost of one request
compares each with its own.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from contract import batching, pbtxt
from contract.encoder import TextEncoder
from contract.names import (LABEL_FILE, LOGITS, POSTPROCESS_MODEL, TOKENIZER_FILE, TOKENIZER_MODEL,
                            composing_model)
from contract.params import ClassifierParams, PostprocessParams, TokenizerParams
from contract.postprocess import Postprocess, read_labels
from contract.repository_versions import served_version

BASELINE_ENSEMBLE = "bert_onnx_fp32"


@dataclasses.dataclass
class ServedFiles:
    """What a served ensemble runs, found in the repository on disk (None: not there)."""
    onnx: Path | None = None
    classifier: ClassifierParams = ClassifierParams()
    tokenizer_json: Path | None = None
    tokenizer: TokenizerParams = TokenizerParams()
    postprocess: PostprocessParams = PostprocessParams()
    labels: list[str] | None = None          # the post-process's labels.txt
    config: Path | None = None               # a checkpoint config.json (for the FLOP count)


def latest_version(model_dir: Path) -> Path | None:
    """The version folder the model's config serves: a repository also keeps the previous build's,
    and after a rollback the served one is not the highest (contract/repository_versions.py)."""
    if not (model_dir / pbtxt.CONFIG_FILE).is_file():
        return None
    version = served_version(model_dir)
    return model_dir / str(version) if version is not None else None


def _params(model_dir: Path, kind):
    return kind.from_model_config(pbtxt.read(model_dir))


def find_in_repository(repo: str | Path, ensemble: str = BASELINE_ENSEMBLE) -> ServedFiles:
    """The ONNX file and classifier parameters of `ensemble`, the tokenizer's tokenizer.json and
    parameters, the post-process's labels and parameters, and a checkpoint config.json: the
    PyTorch model's copy, else the checkpoint build.json names."""
    repo, found = Path(repo), ServedFiles()
    model_dir = repo / composing_model(ensemble)
    version = latest_version(model_dir)
    # a Python-backend ONNX Runtime classifier: native backends (GPU) have no in-process twin here
    if version is not None and pbtxt.read(model_dir).backend == "python":
        found.classifier = _params(model_dir, ClassifierParams)
        if (version / found.classifier.model_file).is_file() and found.classifier.model_file.endswith(".onnx"):
            found.onnx = version / found.classifier.model_file
    version = latest_version(repo / TOKENIZER_MODEL)
    if version is not None and (version / TOKENIZER_FILE).is_file():
        found.tokenizer_json = version / TOKENIZER_FILE
        found.tokenizer = _params(repo / TOKENIZER_MODEL, TokenizerParams)
    # the post-process: the classifier's own (cpu), else the shared postprocess model's (gpu shape)
    post_dir = model_dir if found.classifier.postprocess else repo / POSTPROCESS_MODEL
    if (post_dir / pbtxt.CONFIG_FILE).is_file():
        found.postprocess = (PostprocessParams(found.classifier.multi_label, found.classifier.thresholds)
                             if found.classifier.postprocess else _params(post_dir, PostprocessParams))
        labels = post_dir / LABEL_FILE
        found.labels = read_labels(labels) if labels.is_file() else None
    for model_dir in sorted(repo.glob(composing_model("*"))):
        version = latest_version(model_dir)
        if version is not None and (version / "checkpoint" / "config.json").is_file():
            found.config = version / "checkpoint" / "config.json"
            break
    if found.config is None and (repo / "build.json").is_file():
        ckpt = Path(json.loads((repo / "build.json").read_text()).get("checkpoint", ""))
        if (ckpt / "config.json").is_file():
            found.config = ckpt / "config.json"
    return found


class InProcessOnnx:
    """Texts -> (logits, probabilities, labels) as the served ensemble computes them, in this process."""

    def __init__(self, served: ServedFiles, labels: list[str] | None = None, chunk_rows: int | None = None,
                 profile_prefix: str | None = None):
        """labels: when the repository has no labels.txt for the post-process; chunk_rows: other
        chunks than the served classifier's; profile_prefix: record ONNX Runtime's operator profile."""
        from contract.onnx_session import open_session

        self.encoder = TextEncoder.from_params(served.tokenizer_json, served.tokenizer)
        self.post = Postprocess.from_params(served.labels or labels, served.postprocess)
        self.chunk_rows = served.classifier.sort_chunk_rows if chunk_rows is None else chunk_rows
        threads = served.classifier.threads or os.cpu_count() or 1
        self.workers, intra_op = batching.plan_threads(threads, self.chunk_rows)
        self.session = open_session(served.onnx, intra_op, served.classifier.allow_spinning, profile_prefix)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.onnx_path, self.max_length = served.onnx, served.tokenizer.max_length

    def logits(self, texts):
        feed = {k: v for k, v in self.encoder(texts).items() if k in self.inputs}
        return batching.run_sorted_chunks(lambda b: self.session.run([LOGITS], b)[0], feed, self.chunk_rows,
                                          self.workers)

    def infer(self, texts):
        return self.post(self.logits(texts))
