"""training/distill.py: students built from a teacher, the distillation loss, and distillation runs."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training import data, distill, trainer
from training.__main__ import main as cli
from training.config import BertConfig
from training.model import BertForSequenceClassification

FILLER = "the a of to and in is it you that he was for on are with as his they be at one have this from".split()
CUES = {"pos": "good great nice lovely".split(), "neg": "bad awful terrible poor".split()}


def toy_csv(path: Path, n: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            label = rng.choice(["neg", "pos"])
            words = rng.choices(FILLER, k=rng.randint(2, 6)) + rng.choices(CUES[label], k=3)
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path


def small_bert(layers: int = 3, labels=("neg", "pos"), problem_type="single_label_classification", seed: int = 0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, id2label=dict(enumerate(labels)), problem_type=problem_type)).eval()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, minilm_path) -> Path:
    """A 3-layer tiny BERT fine-tuned on the toy task through the CLI (the run folder)."""
    tmp = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, id2label={0: "neg", 1: "pos"})
    base = BertForSequenceClassification(config).save_pretrained(tmp / "base", tokenizer_from=minilm_path)
    out = tmp / "run"
    assert cli(["fit", "--data", str(toy_csv(tmp / "toy.csv")), "--model", str(base), "--epochs", "3", "--lr", "5e-3",
                "--batch-size", "8", "--max-length", "32", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0.9
    return out


# ---- students --------------------------------------------------------------------------------
def test_student_from_layers_copies_the_chosen_layers_and_the_rest():
    teacher = small_bert(layers=3)
    student = distill.student_from_layers(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for k, v in s.items():
        src = k.replace("encoder.layer.1.", "encoder.layer.2.")
        assert torch.equal(v, t[src]), k
    assert student.num_parameters() < teacher.num_parameters()
    with pytest.raises(distill.DistillError, match="layers 0..2"):
        distill.student_from_layers(teacher, [0, 3])


def test_student_from_config_takes_the_teachers_head_and_checks_the_vocabulary(tmp_path):
    teacher = small_bert(layers=3, labels=("a", "b", "c"))
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg.to_json_file(tmp_path / "config.json")
    student = distill.student_from_config(teacher, tmp_path / "config.json")
    assert student.config.labels == ["a", "b", "c"] and student.config.hidden_size == 16
    BertConfig(vocab_size=99).to_json_file(tmp_path / "other.json")
    with pytest.raises(distill.DistillError, match="vocab_size 99 differs from the teacher's 100"):
        distill.student_from_config(teacher, tmp_path / "other.json")


def test_a_checkpoint_without_a_trained_head_is_no_teacher(minilm_path):
    with pytest.raises(distill.DistillError, match="no trained classifier head"):
        distill.load_teacher(minilm_path)


# ---- the loss --------------------------------------------------------------------------------
def test_distillation_loss_formula_single_and_multi_label():
    torch.manual_seed(0)
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    labels = torch.randint(0, 3, (8,))
    model = small_bert(labels=("a", "b", "c"))
    loss = distill.DistillLoss(teacher=None, temperature=3.0, mix=0.25)
    loss.teacher_logits = t
    batch = {"index": torch.arange(8), "labels": labels}
    p_t = F.softmax(t / 3, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    expected = 0.25 * kl + 0.75 * F.cross_entropy(s, labels)
    assert torch.allclose(loss(s, batch, model), expected, atol=1e-6)
    loss.mix = 1.0
    assert loss(t, batch, model).abs() < 1e-6  # the student already is the teacher: nothing to learn
    loss.teacher_logits = t + torch.randn(8, 3)
    assert loss(t, batch, model) > 1e-3         # the loss follows the teacher's logits

    ml = small_bert(labels=("x", "y", "z"), problem_type="multi_label_classification")
    y = (torch.rand(8, 3) > 0.5).float()
    loss = distill.DistillLoss(teacher=None, temperature=2.0, mix=0.5)
    loss.teacher_logits = t
    got = loss(s, {"index": torch.arange(8), "labels": y}, ml)
    soft = F.binary_cross_entropy_with_logits(s / 2, torch.sigmoid(t / 2)) * 4
    assert torch.allclose(got, 0.5 * soft + 0.5 * F.binary_cross_entropy_with_logits(s, y), atol=1e-6)
    with pytest.raises(distill.DistillError):
        distill.DistillLoss(None, temperature=0)
    with pytest.raises(distill.DistillError):
        distill.DistillLoss(None, mix=1.5)


# ---- runs ------------------------------------------------------------------------------------
def test_distill_cli_reuses_the_teachers_split_and_writes_a_student_run(teacher_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "student"
    assert cli(["distill", "--teacher", str(teacher_run / "checkpoint"), "--student-layers", "0,2", "--epochs", "2",
                "--lr", "5e-3", "--batch-size", "8", "--max-length", "32", "--temperature", "2", "--mix", "0.7",
                "--out", str(out), "--no-progress"]) == 0
    teacher_split = json.loads((teacher_run / "split.json").read_text())
    student_split = json.loads((out / "split.json").read_text())
    assert all(student_split[k] == teacher_split[k] for k in ("train", "val", "test", "sha256"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "distillation" and m["temperature"] == 2 and m["mix"] == 0.7
    assert m["teacher_test"]["accuracy"] >= 0.9 and m["test"]["accuracy"] >= 0.8
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["id2label"] == {"0": "neg", "1": "pos"}
    batch = data.tokenize(data.load_tokenizer(out / "checkpoint"), ["good nice day", "awful"], 32)
    with torch.no_grad():
        a = BertForSequenceClassification.from_pretrained(out / "checkpoint").eval()(**batch).logits
        b = AutoModelForSequenceClassification.from_pretrained(out / "checkpoint").eval()(**batch).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_the_student_learns_from_the_teacher_not_only_the_labels(teacher_run, tmp_path):
    """Train labels flipped: on the soft loss alone (mix 1) a fresh student still learns the teacher's
    (correct) answers; on the hard loss alone (mix 0) it learns the flipped ones."""
    _, parts = data.load_split(teacher_run / "split.json")
    parts["train"].labels = 1 - parts["train"].labels
    teacher = distill.load_teacher(teacher_run / "checkpoint")
    (tmp_path / "config.json").write_text(json.dumps({**teacher.config.to_dict(), "num_hidden_layers": 2}))
    cfg = trainer.TrainConfig(epochs=3, batch_size=8, lr=5e-3, max_length=32, progress=False, seed=3)
    accuracy = {}
    for mix in (1.0, 0.0):
        torch.manual_seed(3)
        student = distill.student_from_config(teacher, tmp_path / "config.json")
        m = trainer.fit(student, parts, cfg, tmp_path / f"mix{mix}", tokenizer_from=teacher_run / "checkpoint",
                        loss_fn=distill.DistillLoss(teacher, temperature=2.0, mix=mix))
        accuracy[mix] = m["epochs"][-1]["val"]["accuracy"]  # the last epoch, on the true (unflipped) labels
    assert accuracy[1.0] >= 0.8 and accuracy[0.0] <= 0.3, accuracy
