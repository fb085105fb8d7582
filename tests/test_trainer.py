"""training/trainer.py and the `python -m training fit` CLI, on a tiny BERT and small CSVs written here."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training import data, lora as lora_lib, trainer
from training.__main__ import main as cli
from training.config import BertConfig
from training.model import BertForSequenceClassification

FILLER = "the a of to and in is it you that he was for on are with as his they be at one have this from".split()
CUES = {"pos": "good great nice lovely".split(), "neg": "bad awful terrible poor".split()}


def tiny_checkpoint(folder: Path, tokenizer_from: Path, labels=("neg", "pos"), layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer BERT of hidden size 32 (random weights) with the MiniLM tokenizer."""
    config = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, id2label=dict(enumerate(labels)))
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).save_pretrained(folder, tokenizer_from=tokenizer_from)


def toy_rows(n: int, seed: int = 0, cues: dict = CUES, filler: list = FILLER):
    """Texts whose label (a key of `cues`) is given away by its cue words among filler words."""
    rng = random.Random(seed)
    for _ in range(n):
        label = rng.choice(sorted(cues))
        words = rng.choices(filler, k=rng.randint(2, 6)) + rng.choices(cues[label], k=3)
        rng.shuffle(words)
        yield " ".join(words), label


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", minilm_path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("toy") / "toy.csv", ["text", "label"], toy_rows(160))


def toy_parts(path: Path, seed: int = 0) -> dict:
    ds = data.load_dataset(data.DataSpec(path=str(path)))
    return {k: ds.subset(v) for k, v in data.make_split(ds, seed).items()}


def quick_config(**kw) -> trainer.TrainConfig:
    base = dict(epochs=3, batch_size=8, lr=5e-3, max_length=32, progress=False, seed=1)
    base.update(kw)
    return trainer.TrainConfig(**base)


def weights(folder: Path) -> dict:
    return load_file(folder / "checkpoint" / "model.safetensors")


# ---- the CLI, end to end ---------------------------------------------------------------------
def test_fit_cli_learns_and_writes_the_run_folder(tiny, toy, tmp_path):
    out = tmp_path / "run"
    rc = cli(["fit", "--data", str(toy), "--model", str(tiny), "--epochs", "3", "--lr", "5e-3", "--batch-size", "8",
              "--max-length", "32", "--out", str(out), "--no-progress", "--report-to", "tensorboard"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    losses = [e["train_loss"] for e in m["epochs"]]
    assert losses[-1] < 0.5 * losses[0]  # it learns
    assert m["test"]["accuracy"] >= 0.9
    assert m["best_epoch"] == int(np.argmin([e["val"]["loss"] for e in m["epochs"]]))
    for key in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert key in m["test"] and key in m["val"]
    assert m["trainable_parameters"] == m["total_parameters"] and m["relative_parameters"] == 1.0
    assert m["seconds_per_epoch"] > 0 and m["train_samples_per_second"] > 0
    assert (m["num_train"], m["num_val"], m["num_test"]) == (128, 16, 16)
    assert {p.name for p in (out / "checkpoint").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                                "vocab.txt", "tokenizer_config.json"}
    assert not (out / trainer.STATE_FILE).exists()  # finished: nothing left to resume
    assert any((out / "tensorboard").iterdir())
    split = json.loads((out / "split.json").read_text())
    assert split["counts"] == {"train": 128, "val": 16, "test": 16} and split["data"] == str(toy)
    _, parts = data.load_split(out / "split.json")  # later stages get the same test texts
    assert len(parts["test"]) == 16


def test_cli_errors_are_one_line_and_exit_2(tiny, toy, tmp_path, capsys):
    cases = [
        (["--data", str(tmp_path / "missing.csv")], "missing.csv: no such file"),
        (["--data", str(toy), "--label-column", "stars"], "missing column ['stars']"),
        (["--data", str(toy), "--lora-r", "4", "--lora-layers", "last9"], "the model has 2 layers"),
        (["--data", str(toy), "--freeze", "sometimes"], "unknown freezing strategy"),
        (["--data", str(toy), "--max-length", "100"], "--max-length 100: must be between 3 and 64"),
        (["--data", str(toy), "--tabular"], "no tabular features"),
        (["--data", str(toy), "--model", str(tmp_path / "nomodel")], "nomodel"),
        (["--data", str(toy), "--grad-accum", "0"], "--grad-accum must be >= 1"),
    ]
    for extra, message in cases:
        rc = cli(["fit", "--model", str(tiny), "--out", str(tmp_path / "err"), "--no-progress", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, extra
        assert err[-1].startswith("error: ") and message in err[-1], (extra, err)
        assert not any(line.startswith("Traceback") for line in err)


def test_report_to_a_tracker_that_is_not_installed_is_a_clear_error(tiny, toy, tmp_path, capsys):
    for name in ("wandb", "mlflow"):
        try:
            __import__(name)
            continue
        except ImportError:
            pass
        message = f"--report-to {name}: the `{name}` package is not installed"
        with pytest.raises(trainer.TrainError, match=message):
            trainer.Reporter(name, tmp_path, {})
        # the CLI says so before loading any data or model
        assert cli(["fit", "--data", str(tmp_path / "absent.csv"), "--report-to", name, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


# ---- best epoch, resume, determinism ---------------------------------------------------------
def test_the_best_epoch_by_validation_loss_is_kept(tiny, toy, tmp_path):
    parts = toy_parts(toy)
    val = parts["val"]
    val.labels = 1 - val.labels  # validation disagrees with training: the more it learns, the worse val gets
    model = trainer.prepare_model(tiny, parts["train"], seed=1)
    m = trainer.fit(model, parts, quick_config(), tmp_path)
    val_losses = [e["val"]["loss"] for e in m["epochs"]]
    assert val_losses[-1] > val_losses[0] and m["best_epoch"] == 0
    assert m["val"]["loss"] == val_losses[0]
    # the checkpoint holds the best epoch's weights: scoring it again gives epoch 0's validation loss
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "checkpoint")
    t = trainer.Trainer(saved, parts, quick_config(), tmp_path / "again")
    assert t.evaluate("val")["loss"] == pytest.approx(val_losses[0], abs=1e-5)
    assert t.evaluate("test")["loss"] == pytest.approx(m["test"]["loss"], abs=1e-5)


class InterruptAt:
    """A loss hook (the plain hard-label loss) that sends this process SIGINT at one global step."""

    def __init__(self, step: int | None):
        self.step, self.calls = step, 0

    def __call__(self, logits, batch, model):
        self.calls += 1
        if self.calls == self.step:
            os.kill(os.getpid(), signal.SIGINT)
        return model.loss(logits, batch["labels"])


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tiny, toy, tmp_path):
    parts = toy_parts(toy)
    cfg = quick_config(epochs=2)
    steps_per_epoch = -(-len(parts["train"]) // cfg.batch_size)

    full = trainer.fit(trainer.prepare_model(tiny, parts["train"], seed=1), parts, cfg, tmp_path / "a",
                       loss_fn=InterruptAt(None))
    # interrupted in the middle of the second epoch (SIGINT, as Ctrl-C sends it)
    with pytest.raises(trainer.TrainingInterrupted, match="--resume"):
        trainer.fit(trainer.prepare_model(tiny, parts["train"], seed=1), parts, cfg, tmp_path / "b",
                    loss_fn=InterruptAt(steps_per_epoch + 3))
    assert (tmp_path / "b" / trainer.STATE_FILE).exists() and not (tmp_path / "b" / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    with pytest.raises(trainer.TrainError, match="unfinished run"):
        trainer.fit(trainer.prepare_model(tiny, parts["train"], seed=1), parts, cfg, tmp_path / "b")
    with pytest.raises(trainer.TrainError, match="different settings .*lr"):
        trainer.fit(trainer.prepare_model(tiny, parts["train"], seed=1), parts, quick_config(epochs=2, lr=2e-3),
                    tmp_path / "b", resume=True)
    # a fresh process would build the model again from the base checkpoint, then continue
    resumed = trainer.fit(trainer.prepare_model(tiny, parts["train"], seed=1), parts, cfg, tmp_path / "b",
                          resume=True)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["test"] == full["test"]
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx([e["train_loss"] for e in full["epochs"]])
    assert not (tmp_path / "b" / trainer.STATE_FILE).exists()


def test_runs_are_deterministic_for_a_seed(tiny, toy, tmp_path):
    parts = toy_parts(toy)
    cfg = quick_config(epochs=1)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        trainer.fit(trainer.prepare_model(tiny, parts["train"], seed=seed), parts,
                    trainer.TrainConfig(**{**cfg.__dict__, "seed": seed}), tmp_path / name)
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---- LoRA, freezing, multi-label, tabular ----------------------------------------------------
def test_lora_run_saves_a_merged_checkpoint_that_transformers_loads(tiny, toy, tmp_path):
    from transformers import AutoModelForSequenceClassification

    parts = toy_parts(toy)
    cfg = lora_lib.LoRAConfig(r=4, alpha=8, layers=(1,))
    model = trainer.prepare_model(tiny, parts["train"], lora=cfg, seed=1)
    m = trainer.fit(model, parts, quick_config(epochs=2, lr=1e-2), tmp_path)
    # 2 adapters (query, value of layer 1) of r*(32+32) + classifier 32*2+2
    assert m["trainable_parameters"] == 2 * 4 * 64 + 66
    assert m["relative_parameters"] == pytest.approx(m["trainable_parameters"] / m["total_parameters"])
    state = weights(tmp_path)
    assert not any("lora" in k for k in state)
    base = load_file(tiny / "model.safetensors")
    q = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(state[q], base[q])  # the adapter is merged into the base weight
    assert torch.equal(state["bert.encoder.layer.0.attention.self.query.weight"],
                       base["bert.encoder.layer.0.attention.self.query.weight"])

    batch = data.tokenize(data.load_tokenizer(tmp_path / "checkpoint"), parts["test"].texts, 32)
    ours = BertForSequenceClassification.from_pretrained(tmp_path / "checkpoint").eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "checkpoint").eval()
    with torch.no_grad():
        a = ours(**batch).logits
        b = theirs(**batch).logits
        fresh = BertForSequenceClassification.from_pretrained(tiny).eval()
        lora_lib.load_adapter(fresh, tmp_path / "adapter.safetensors")
        c = fresh(**batch).logits
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert theirs.config.id2label == {0: "neg", 1: "pos"}


def test_freeze_strategies(tiny, toy, tmp_path):
    parts = toy_parts(toy)
    model = trainer.prepare_model(tiny, parts["train"], freeze="classifier+1", seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = trainer.fit(model, parts, quick_config(epochs=1), tmp_path / "c1")
    after = weights(tmp_path / "c1")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("classifier.", "bert.encoder.layer.0.")) for k in changed)
    assert m["trainable_parameters"] < m["total_parameters"]
    # "none" trains nothing: the initial model is evaluated and saved
    m = trainer.fit(trainer.prepare_model(tiny, parts["train"], freeze="none", seed=1), parts, quick_config(),
                    tmp_path / "none")
    assert m["trainable_parameters"] == 0 and m["best_epoch"] is None and m["epochs"] == []
    with pytest.raises(trainer.TrainError, match="use one of them"):
        trainer.prepare_model(tiny, parts["train"], lora=lora_lib.LoRAConfig(), freeze="classifier")


def test_multilabel_run(minilm_path, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rng = random.Random(3)
    rows = []
    for i in range(160):
        good, bad, cat = (rng.random() < 0.5 for _ in range(3))
        words = rng.choices(FILLER, k=5) + ["good"] * good + ["awful"] * bad + ["cat"] * cat
        rng.shuffle(words)
        rows.append([i, " ".join(words), int(good), int(bad), int(cat)])
    f = write_csv(tmp_path / "ml.csv", ["id", "comment_text", "good", "bad", "cat"], rows)
    ckpt = tiny_checkpoint(tmp_path / "base", minilm_path, labels=("x", "y"))
    out = tmp_path / "run"
    rc = cli(["fit", "--data", str(f), "--text-column", "comment_text", "--label-columns", "good,bad,cat",
              "--model", str(ckpt), "--epochs", "3", "--lr", "5e-3", "--batch-size", "8", "--max-length", "32",
              "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["problem_type"] == "multi_label_classification" and m["label_names"] == ["good", "bad", "cat"]
    assert set(m["test"]) >= {"loss", "accuracy", "f1_micro", "f1_macro", "roc_auc", "roc_auc_macro"}
    assert set(m["test"]["roc_auc"]) == {"good", "bad", "cat"}
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"]
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 3
    batch = data.tokenize(data.load_tokenizer(out / "checkpoint"), ["good cat", "awful"], 32)
    with torch.no_grad():
        a = BertForSequenceClassification.from_pretrained(out / "checkpoint").eval()(**batch).logits
        b = AutoModelForSequenceClassification.from_pretrained(out / "checkpoint").eval()(**batch).logits
    assert a.shape == (2, 3) and torch.allclose(a, b, atol=1e-5)


def test_tabular_stackoverflow_run(minilm_path, tmp_path):
    header = ["PostId", "PostCreationDate", "OwnerUserId", "OwnerCreationDate", "ReputationAtPostCreation",
              "OwnerUndeletedAnswerCountAtPostTime", "Title", "BodyMarkdown", "Tag1", "Tag2", "Tag3", "Tag4",
              "Tag5", "PostClosedDate", "OpenStatus"]
    rng = random.Random(5)
    rows = []
    for i in range(100):
        closed = rng.random() < 0.5
        rows.append([i, "08/01/2008 12:00:00", 7, "07/31/2008 12:00:00", 1 if closed else 1000 + i, 0,
                     " ".join(rng.choices(FILLER, k=4)), " ".join(rng.choices(FILLER, k=8)), "python", "", "", "", "",
                     "08/02/2008 00:00:00" if closed else "", "off topic" if closed else "open"])
    f = write_csv(tmp_path / "train-sample.csv", header, rows)
    ckpt = tiny_checkpoint(tmp_path / "base", minilm_path)
    out = tmp_path / "run"
    assert cli(["fit", "--data", str(f), "--tabular", "--model", str(ckpt), "--epochs", "2", "--lr", "5e-3",
                "--batch-size", "8", "--max-length", "48", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["num_tabular_features"] == 5 and config["id2label"] == {"0": "open", "1": "closed"}
    assert config["tabular_feature_names"][2] == "reputation" and config["tabular_mean"][2] > 100
    m = json.loads((out / "metrics.json").read_text())
    assert m["tabular"] and m["trainable_parameters"] == m["total_parameters"]
    model = BertForSequenceClassification.from_pretrained(out / "checkpoint").eval()
    batch = data.tokenize(data.load_tokenizer(out / "checkpoint"), ["a question", "a question"], 48)
    feats = torch.tensor([[10.0, 2, 1, 2, 2], [10.0, 2, 5000, 2, 2]])
    with torch.no_grad():
        logits = model(**batch, features=feats).logits
    assert not torch.allclose(logits[0], logits[1])  # the features reach the classifier


def test_classification_metrics_values():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    m = trainer.classification_metrics(logits, np.array([0, 1, 1, 1]), ["a", "b"], multi_label=False)
    assert m["accuracy"] == 0.75 and m["precision_macro"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["recall_macro"] == pytest.approx((1.0 + 2 / 3) / 2)
    ml = trainer.classification_metrics(np.array([[1.0, -1.0], [-1.0, -2.0], [2.0, 1.0]]),
                                        np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32), ["x", "y"], True)
    assert ml["accuracy"] == pytest.approx(2 / 3)  # exact match of the label set
    assert ml["roc_auc"] == {"x": 1.0, "y": None} and ml["roc_auc_macro"] == 1.0  # y never positive: undefined
    assert ml["f1_micro"] == pytest.approx(0.8)
