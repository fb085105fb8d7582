"""Training on several processes: torchrun + DistributedDataParallel with gloo on this CPU.

Real torchrun jobs of `python -m training fit` on the tiny BERT and toy CSV of test_trainer.py
(dropout off, one thread per process), compared with one process given the same global batch:
2 processes x batch 8 and 1 process x batch 16 end with the same weights, evaluate to the same
metrics, only rank 0 writes, and an interrupted 2-process run resumes to the uninterrupted weights
(with 2 processes, or with 1 at the same global batch).

Run as a script, this file is the torchrun worker (see `worker`): it runs the training CLI in each
process, optionally records any write rank 1 makes under the run folder (Python audit hooks) or
sends itself SIGTERM at one optimizer step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from test_trainer import tiny_checkpoint, toy_rows, write_csv  # noqa: E402
from training import distributed, trainer  # noqa: E402
from training.__main__ import main as cli  # noqa: E402
from training.data import load_split  # noqa: E402
from training.launch import Context  # noqa: E402
from training.model import BertForSequenceClassification  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           OMP_NUM_THREADS="1")
COMMON = ["--epochs", "3", "--lr", "5e-3", "--max-length", "32", "--no-progress"]
# The attention key bias adds the same q.b to every score of a query row, which softmax ignores: its
# exact gradient is 0, so what it gets is rounding noise, and AdamW scales noise up to lr-sized steps.
# It never changes an output (the logits are compared too), so weights are compared without it.
UNIDENTIFIABLE = ".attention.self.key.bias"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The in-process run uses one thread, as each torchrun worker does: same kernels, same sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, minilm_path) -> dict:
    d = tmp_path_factory.mktemp("ddp")
    ckpt = tiny_checkpoint(d / "checkpoint", minilm_path)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same maths on 1 or 2 processes
    (ckpt / "config.json").write_text(json.dumps(config))
    return {"model": ckpt, "data": write_csv(d / "toy.csv", ["text", "label"], toy_rows(160))}


def fit_args(assets, out: Path, batch: int, *extra: str) -> list[str]:
    return ["fit", "--data", str(assets["data"]), "--model", str(assets["model"]), "--batch-size", str(batch),
            "--out", str(out), *COMMON, *extra]


def torchrun(nproc: int, spec: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N tests/test_distributed.py SPEC` (the worker below)."""
    spec_file = Path(spec["argv"][spec["argv"].index("--out") + 1]).with_suffix(".spec.json")
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           __file__, str(spec_file)]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoint" / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a if not k.endswith(UNIDENTIFIABLE))


def logits(out: Path, texts: list[str]) -> torch.Tensor:
    from training.data import load_tokenizer, tokenize
    model = BertForSequenceClassification.from_pretrained(out / "checkpoint").eval()
    with torch.no_grad():
        return model(**tokenize(load_tokenizer(out / "checkpoint"), texts, 32)).logits


# ---- the worker torchrun starts --------------------------------------------------------------
def worker(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    rank = int(os.environ["RANK"])
    out = Path(spec["argv"][spec["argv"].index("--out") + 1]).resolve()
    writes: list[str] = []
    if spec.get("audit"):  # on every rank: rank 0's record shows the hook sees the writes
        def audit(event, args):
            if event == "open" and args[0] is not None and (
                    (args[1] and set(str(args[1])) & set("wax+")) or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR)):
                path = args[0]
            elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree"):
                path = args[0]
            else:
                return
            if isinstance(path, (str, bytes, os.PathLike)) and str(Path(os.fsdecode(path)).resolve()).startswith(str(out)):
                writes.append(f"{event} {os.fsdecode(path)}")
        sys.addaudithook(audit)
    at = spec.get("sigterm_at_step")
    if at and rank == spec.get("sigterm_rank", 0):  # a real SIGTERM, to this rank only, at a known step
        from training.loop import TrainStep
        step, calls = TrainStep.__call__, [0]

        def counted(self, micro):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(self, micro)
        TrainStep.__call__ = counted
    rc = cli(spec["argv"])
    if spec.get("audit"):
        Path(f"{spec_file}.rank{rank}.writes").write_text(json.dumps(writes))
    return rc


# ---- the work split --------------------------------------------------------------------------
@pytest.mark.parametrize("n,world,micro", [(16, 2, 8), (13, 2, 4), (5, 3, 8), (1, 2, 8), (16, 1, 8)])
def test_shards_cover_the_global_batch_with_weights_that_keep_its_mean(n, world, micro):
    batch = np.arange(100, 100 + n)
    loss = np.random.default_rng(n).random(200)  # one per-text loss each
    seen, total = [], 0.0
    for rank in range(world):
        parts = distributed.shard(batch, Context(rank=rank, world_size=world), micro)
        assert parts and all(0 < len(p) <= micro for p, _ in parts)
        seen += [int(i) for p, w in parts if w for i in p]
        # DDP averages the ranks' gradients: sum over ranks of the weighted micro-batch means / world
        total += sum(w * loss[p].mean() for p, w in parts) / world
    assert sorted(seen) == batch.tolist()
    assert total == pytest.approx(loss[batch].mean(), rel=1e-12)


# ---- torchrun jobs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_process_run(assets, tmp_path_factory):
    """torchrun, 2 processes x batch 8, full fine-tuning, rank 1's writes recorded."""
    out = tmp_path_factory.mktemp("two") / "run"
    job = torchrun(2, {"argv": fit_args(assets, out, 8, "--report-to", "tensorboard"), "audit": True})
    assert job.returncode == 0, job.stderr[-3000:]
    return out, job


def test_two_processes_train_like_one_and_only_rank_0_writes(assets, two_process_run, tmp_path):
    out2, job = two_process_run
    out1 = tmp_path / "one"
    assert cli(fit_args(assets, out1, 16)) == 0
    assert max_difference(weights(out1), weights(out2)) < 1e-5
    texts = [t for t, _ in toy_rows(32, seed=7)]
    assert torch.allclose(logits(out1, texts), logits(out2, texts), atol=1e-5)
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (out1, out2))
    assert (m2["processes"], m2["global_batch"], m1["global_batch"]) == (2, 16, 16)
    assert m2["test"]["accuracy"] == m1["test"]["accuracy"] >= 0.9  # it learned, the same on both

    # only rank 0 wrote: rank 1 opened nothing for writing under the run folder, rank 0 did
    spec = out2.with_suffix(".spec.json")
    assert json.loads(Path(f"{spec}.rank1.writes").read_text()) == []
    assert any("metrics.json" in w for w in json.loads(Path(f"{spec}.rank0.writes").read_text()))
    assert len(list((out2 / "tensorboard").iterdir())) == 1  # one tracker's event file
    assert job.stdout.count(f"{out2}: best epoch") == 1  # one summary line, from rank 0
    assert job.stderr.count("epoch 0: train loss") == 1


def test_distributed_evaluation_equals_one_process_exactly(assets, two_process_run):
    out2, _ = two_process_run
    m2 = json.loads((out2 / "metrics.json").read_text())
    _, parts = load_split(out2 / "split.json")  # the texts the run was scored on
    model = BertForSequenceClassification.from_pretrained(out2 / "checkpoint")
    one = trainer.Trainer(model, parts, trainer.TrainConfig(max_length=32, progress=False), out2 / "eval")
    for split in ("val", "test"):  # the same numbers, not a mean of per-rank means
        assert one.evaluate(split) == m2[split]


def test_lora_on_two_processes_trains_like_one(assets, tmp_path):
    lora = ["--lora-r", "4", "--lora-alpha", "8", "--lora-layers", "last1", "--lr", "1e-2"]
    out2, out1 = tmp_path / "two", tmp_path / "one"
    job = torchrun(2, {"argv": fit_args(assets, out2, 8, *lora)})
    assert job.returncode == 0, job.stderr[-3000:]
    assert "unused" not in job.stderr.lower()
    assert cli(fit_args(assets, out1, 16, *lora)) == 0
    a, b = weights(out1), weights(out2)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # LoRA leaves the key bias frozen
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (out1, out2))
    assert m1["trainable_parameters"] == m2["trainable_parameters"] < m2["total_parameters"]
    assert (out2 / "adapter.safetensors").exists()


def test_gradient_accumulation_keeps_the_global_batch(assets, tmp_path):
    assert cli(fit_args(assets, tmp_path / "accum", 8, "--grad-accum", "2", "--epochs", "1")) == 0
    assert cli(fit_args(assets, tmp_path / "whole", 16, "--epochs", "1")) == 0
    assert max_difference(weights(tmp_path / "accum"), weights(tmp_path / "whole")) < 1e-5


def test_an_interrupted_two_process_run_resumes_to_the_same_weights(assets, two_process_run, tmp_path, caplog):
    reference, _ = two_process_run
    out = tmp_path / "run"
    argv = fit_args(assets, out, 8, "--report-to", "tensorboard")
    # SIGTERM to rank 1 alone at the 12th optimizer step of 24 (inside epoch 2): every rank stops there
    job = torchrun(2, {"argv": argv, "sigterm_at_step": 12, "sigterm_rank": 1})
    assert job.returncode != 0 and "rerun with --resume" in job.stderr
    # the workers stopped with the interruption's status (torchrun then reports its own traceback);
    # a worker still exiting when torchrun saw the first one end may be reported as its SIGTERM (-15)
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", job.stderr)
    assert "130" in codes and set(codes) <= {"130", "-15"}, codes
    assert f'File "{ROOT / "training"}' not in job.stderr
    state = torch.load(out / trainer.STATE_FILE, map_location="cpu", weights_only=True)
    assert (state["progress"]["epoch"], state["progress"]["step"]) == (1, 4)  # 8 steps an epoch
    assert len(state["rng"]) == 2 and state["fingerprint"]["global_batch"] == 16
    assert not (out / "checkpoint").exists() and not (out / "metrics.json").exists()
    shutil.copytree(out, tmp_path / "on-one")

    job = torchrun(2, {"argv": argv + ["--resume"]})  # the same process count: the same weights
    assert job.returncode == 0, job.stderr[-3000:]
    assert f"resuming {out} at epoch 2, step 4" in job.stderr
    a, b = weights(reference), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / trainer.STATE_FILE).exists()

    # another process count: the same step, the same global batch (1 x batch 8 x 2), and it says so
    on_one = tmp_path / "on-one"
    with caplog.at_level("INFO", logger="training"):
        assert cli(fit_args(assets, on_one, 8, "--resume")) == 0
    err = caplog.text
    assert "saved by 2 process(es), this run has 1: the global batch stays 16 (1 x batch <= 8 x grad-accum 2)" in err
    assert "at epoch 2, step 4" in err
    assert json.loads((on_one / "metrics.json").read_text())["global_batch"] == 16
    assert max_difference(weights(reference), weights(on_one)) < 1e-5


def test_the_experiment_grid_runs_under_torchrun(tmp_path):
    """Baselines, a full fine-tuning and its distilled student (the teacher's logits computed shared)."""
    from test_experiments import make_base, write_binary

    out = tmp_path / "grid"
    argv = ["experiments", "--model", str(make_base(tmp_path / "base", layers=2)), "--data",
            str(write_binary(tmp_path / "binary.csv")), "--quick", "--limit", "0", "--val-limit", "0",
            "--test-limit", "0", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-progress",
            "--variants", "majority,distilled", "--out", str(out)]
    job = torchrun(2, {"argv": argv, "audit": True})
    assert job.returncode == 0, job.stderr[-3000:]
    assert json.loads(Path(f"{out.with_suffix('.spec.json')}.rank1.writes").read_text()) == []
    report = json.loads((out / "experiments.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["majority", "full", "distilled"]
    assert report["settings"]["processes"] == 2 and "x 2 processes (torchrun)" in (out / "experiments.md").read_text()
    for name in ("full", "distilled"):
        result = json.loads((out / "experiments" / name / "seed42" / "result.json").read_text())
        assert result["settings"]["processes"] == 2 and result["inference_samples_per_second"] > 0
    assert job.stdout.count("# Experiments:") == 1  # the report is printed once, by rank 0


@pytest.mark.gpu
def test_two_gpus_with_nccl_train_like_one(assets, tmp_path):
    """The same comparison on GPUs (NCCL), fp32 so both sides do the same maths."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"NCCL needs one GPU per process; this machine has {torch.cuda.device_count()}")
    gpu = ["--device", "cuda", "--amp", "off"]
    out2, out1 = tmp_path / "two", tmp_path / "one"
    job = torchrun(2, {"argv": fit_args(assets, out2, 8, *gpu)})
    assert job.returncode == 0, job.stderr[-3000:]
    assert "(nccl)" in job.stderr
    assert cli(fit_args(assets, out1, 16, *gpu)) == 0
    # cuBLAS may pick other kernels for a batch of 8 than of 16: a looser bound than on CPU
    assert max_difference(weights(out1), weights(out2)) < 1e-4
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (out1, out2))
    assert m2["test"]["accuracy"] == m1["test"]["accuracy"] and m2["device"] == "cuda:0"


# ---- the Kubernetes training Job ---------------------------------------------------------------
K8S = ROOT / "deploy" / "k8s" / "training"


def test_the_kubernetes_training_job_is_valid_and_consistent():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    import yaml

    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    docs = [d for name in listed for d in yaml.safe_load_all((K8S / name).read_text())]
    for doc in docs:  # against the Kubernetes OpenAPI schema, unknown fields included
        kubernetes_validate.validate(doc, "1.31", strict=True)
    kinds = {d["kind"]: d for d in docs}
    job, service = kinds["Job"], kinds["Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    flags = dict(a.lstrip("-").split("=", 1) for a in args[:args.index("-m")] if "=" in a)
    # one pod per node: --nnodes, completions and parallelism agree; index 0 hosts the rendezvous
    assert int(flags["nnodes"]) == spec["completions"] == spec["parallelism"] and spec["completionMode"] == "Indexed"
    host, port = flags["rdzv-endpoint"].split(":")
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}" and pod["subdomain"] == service["metadata"]["name"]
    assert int(port) == service["spec"]["ports"][0]["port"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    gpus = pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(flags["nproc-per-node"]) == gpus
    # the command after `-m` is one this checkout's CLI accepts, resuming into the shared volume
    import argparse

    from training.__main__ import add_fit_arguments
    words = args[args.index("-m") + 2:]
    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    command = parser.parse_args(words[1:])
    assert words[0] == "fit" and command.resume
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    out_mount, data_mount = (mounts["/" + Path(p).parts[1]] for p in (command.out, command.data))
    assert not out_mount.get("readOnly") and data_mount.get("readOnly")
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = claims[volumes[out_mount["name"]]["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node reads the saved state back
    assert 'ENTRYPOINT ["torchrun"]' in (K8S / "Dockerfile").read_text()


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
