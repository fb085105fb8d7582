"""The experiment grid on a tiny random BERT and tiny generated CSVs (binary, Jigsaw-style multi-label,
Stack Overflow with tabular features): every row with the report's columns, resume, baselines."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from training import baselines, experiments
from training.data import DataSpec, load_dataset, make_split

POSITIVE = "love great happy wonderful good sunny best nice".split()
NEGATIVE = "hate awful sad terrible bad rainy worst cancelled".split()
FILLER = "the a my day flight morning was is so very today again".split()
JIGSAW_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
SO_HEADER = ["PostId", "PostCreationDate", "OwnerUserId", "OwnerCreationDate", "ReputationAtPostCreation",
             "OwnerUndeletedAnswerCountAtPostTime", "Title", "BodyMarkdown", "Tag1", "Tag2", "Tag3", "Tag4",
             "Tag5", "PostClosedDate", "OpenStatus"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine the threads' hand-offs
    cost more than the maths: one thread keeps these tests fast."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- tiny assets, written by the tests -------------------------------------------------------
def make_base(folder: Path, layers: int = 6) -> Path:
    """A tiny *pretrained-style* BERT folder: encoder weights only (no classifier, like MiniLM's), a real
    WordPiece tokenizer built with `tokenizers`, saved next to the weights."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from training.config import BertConfig
    from training.model import BertForSequenceClassification

    folder.mkdir(parents=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars + ".,!?'") + [f"##{c}" for c in chars]
    vocab += sorted(set(POSITIVE + NEGATIVE + FILLER))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 64}))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    import torch
    torch.manual_seed(0)
    state = BertForSequenceClassification(config).state_dict()
    save_file({k[len("bert."):]: v.contiguous() for k, v in state.items() if k.startswith("bert.")},
              folder / "model.safetensors")
    config.to_json_file(folder / "config.json")
    return folder


def _sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))


def write_binary(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            pos = i % 3 == 0  # 1/3 positive: the majority class is "neg"
            text = _sentence(rng, POSITIVE if pos else NEGATIVE) + " " + _sentence(rng, FILLER)
            w.writerow([text, "pos" if pos else "neg"])
    return path


def write_jigsaw(path: Path, n: int = 120) -> Path:
    rng = random.Random(1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text"] + JIGSAW_LABELS)
        for i in range(n):
            flags = [int(rng.random() < p) for p in (0.4, 0.1, 0.3, 0.05, 0.3, 0.1)]
            words = NEGATIVE + FILLER if flags[0] else POSITIVE + FILLER
            w.writerow([f"{i:016x}", _sentence(rng, words)] + flags)
    return path


def write_stackoverflow(path: Path, n: int = 120) -> Path:
    rng = random.Random(2)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SO_HEADER)
        for i in range(n):
            closed = i % 2 == 1
            status = rng.choice(["not a real question", "off topic", "too localized"]) if closed else "open"
            tags = [rng.choice(["python", "java", "c"]) for _ in range(rng.randint(1, 5))] + [""] * 5
            w.writerow([i, "07/31/2008 21:42:52", 1000 + i, "01/15/2008 10:00:00", rng.randint(1, 5000), 0,
                        _sentence(rng, NEGATIVE if closed else POSITIVE),
                        _sentence(rng, (NEGATIVE if closed else POSITIVE) + FILLER), *tags[:5],
                        "08/01/2008 10:00:00" if closed else "", status])
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("experiments-assets")
    return {"base": make_base(d / "tiny-base"), "binary": write_binary(d / "binary.csv"),
            "jigsaw": write_jigsaw(d / "jigsaw.csv"), "stackoverflow": write_stackoverflow(d / "so.csv")}


def grid_args(assets, out: Path, *extra: str) -> list[str]:
    return ["--model", str(assets["base"]), "--epochs", "2", "--limit", "0", "--val-limit", "0", "--test-limit", "0",
            "--batch-size", "16", "--max-length", "32", "--quick", "--no-progress", "--out", str(out), *extra]


def run(argv: list[str]) -> dict:
    args = experiments.parse_args(argv)
    args.argv = ["python -m training experiments", *argv]
    return experiments.run_grid(args)


ROW_KEYS = {"variant", "title", "status", "trainable_parameters", "relative_parameters", "best_epochs", "summary", "runs"}
RUN_KEYS = {"test_loss", "metric", "trainable_parameters", "seconds_per_epoch", "best_epoch",
            "inference_samples_per_second", "val_loss_per_epoch"}


def check_report(rep: dict, out: Path, absent: set[str]) -> dict[str, dict]:
    rows = {r["variant"]: r for r in rep["rows"]}
    assert set(rows) == set(experiments.BY_NAME), "every variant of the grid has a row"
    assert {n for n, r in rows.items() if r["status"] == "absent"} == absent
    for name in absent:
        assert rows[name]["reason"]
    for name, r in rows.items():
        if r["status"] != "done":
            continue
        assert ROW_KEYS <= set(r), name
        for one in r["runs"]:
            assert RUN_KEYS <= set(one), name
            assert np.isfinite(one["test_loss"]) and 0.0 <= one["metric"] <= 1.0, name
        kind = experiments.BY_NAME[name].kind
        if kind in ("fit", "distill") and name != "no-training":
            assert len(r["runs"][0]["val_loss_per_epoch"]) == 2, f"{name}: one validation loss per epoch"
            assert r["summary"]["seconds_per_epoch"]["mean"] > 0
            assert r["best_epochs"][0] in (0, 1)
        if kind != "majority":
            assert r["summary"]["inference_samples_per_second"]["mean"] > 0, name
    # parameter counts follow from what each variant trains
    full = rows["full"]["trainable_parameters"]
    assert rows["full"]["relative_parameters"] == pytest.approx(1.0)
    assert rows["no-training"]["trainable_parameters"] == 0
    assert 0 < rows["lora-r1"]["trainable_parameters"] < rows["lora-r4"]["trainable_parameters"] \
        < rows["lora-r8"]["trainable_parameters"] < full
    assert rows["lora-r8-last4"]["trainable_parameters"] < rows["lora-r8"]["trainable_parameters"]
    assert rows["classifier"]["trainable_parameters"] < rows["classifier+1"]["trainable_parameters"] \
        < rows["classifier+2"]["trainable_parameters"] < full
    dist = rows["distilled"]["runs"][0]
    assert dist["accuracy_ratio"] == pytest.approx(dist["metric"] / dist["teacher_metric"])
    assert dist["speed_ratio"] > 0
    # files: report, json, plots, one folder per run
    md = (out / "experiments.md").read_text()
    for r in rep["rows"]:
        assert r["title"] in md
    assert "standard error" in md and "Distillation" in md
    assert json.loads((out / "experiments.json").read_text())["rows"][0]["variant"] == rep["rows"][0]["variant"]
    for p in rep["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "experiments" / "full" / "seed42" / "result.json").exists()
    return rows


# ---- the grid --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def binary_grid(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid-binary")
    return out, run(grid_args(assets, out, "--data", str(assets["binary"])))


def test_grid_binary_every_row(binary_grid):
    out, rep = binary_grid
    rows = check_report(rep, out, absent={"tabular", "second-base"})
    assert "Stack Overflow" in rows["tabular"]["reason"] and "--second-base" in rows["second-base"]["reason"]
    assert rep["metric"] == "accuracy"
    se = rep["standard_error"]
    assert se["se"] == pytest.approx(np.sqrt(se["p"] * (1 - se["p"]) / se["n"]))
    assert rows["distilled"]["total_parameters"] < rep["settings"]["reference_parameters"]


def test_grid_multilabel_jigsaw_schema(assets, tmp_path):
    rep = run(grid_args(assets, tmp_path, "--data", str(assets["jigsaw"]), "--text-column", "comment_text",
                        "--label-columns", ",".join(JIGSAW_LABELS)))
    rows = check_report(rep, tmp_path, absent={"tabular", "second-base"})
    assert rep["metric"] == "micro-F1"
    full = rows["full"]["runs"][0]
    assert full["metric"] == full["test"]["f1_micro"]
    assert rows["majority"]["runs"][0]["metric"] == 0.0  # every label's majority value is 0: no positives
    assert "Micro-f1" in (tmp_path / "experiments.md").read_text()


def test_grid_tabular_stackoverflow(assets, tmp_path):
    rep = run(grid_args(assets, tmp_path, "--data", str(assets["stackoverflow"]), "--second-base",
                        str(assets["base"])))
    rows = check_report(rep, tmp_path, absent=set())
    # the classifier sees hidden + 5 features: 5 more weights per class than plain full fine-tuning
    assert rows["tabular"]["trainable_parameters"] == rows["full"]["trainable_parameters"] + 5 * 2


def test_resume_skips_finished_and_redoes_changed(assets, tmp_path):
    argv = grid_args(assets, tmp_path, "--data", str(assets["binary"]), "--variants", "majority,full,lora-r8")
    run(argv)
    runs = tmp_path / "experiments"
    stamp = {p: p.stat().st_mtime_ns for p in runs.glob("*/*/*.json")}
    rep = run(argv)  # nothing left to do: every result is reused as it is
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/*/*.json")} == stamp
    assert {r["variant"] for r in rep["rows"]} == {"majority", "full", "lora-r8"}

    # interrupted after training, before the speed measurement: no retraining, only the measurement
    (runs / "lora-r8" / "seed42" / "result.json").unlink()
    run(argv)
    assert (runs / "lora-r8" / "seed42" / "metrics.json").stat().st_mtime_ns == \
        stamp[runs / "lora-r8" / "seed42" / "metrics.json"]
    assert (runs / "lora-r8" / "seed42" / "result.json").exists()

    # another epoch count is another experiment: trained runs are redone, the baseline is kept
    rep = run(grid_args(assets, tmp_path, "--data", str(assets["binary"]), "--variants", "majority,full",
                        "--epochs", "1"))
    assert (runs / "majority" / "once" / "result.json").stat().st_mtime_ns == \
        stamp[runs / "majority" / "once" / "result.json"]
    full = next(r for r in rep["rows"] if r["variant"] == "full")
    assert len(full["runs"][0]["val_loss_per_epoch"]) == 1


def test_seeds_give_mean_and_spread(assets, tmp_path):
    rep = run(grid_args(assets, tmp_path, "--data", str(assets["binary"]), "--variants", "classifier",
                        "--seeds", "2", "--epochs", "1"))
    row = rep["rows"][0]
    assert row["seeds"] == [42, 43]
    s = row["summary"]["metric"]
    values = [r["metric"] for r in row["runs"]]
    assert s["mean"] == pytest.approx(np.mean(values)) and s["std"] == pytest.approx(np.std(values, ddof=1))
    assert " ± " in (tmp_path / "experiments.md").read_text()


def test_distilled_pulls_in_its_teacher_and_bad_options(assets, tmp_path):
    base = grid_args(assets, tmp_path, "--data", str(assets["binary"]))
    grid = experiments.resolve(experiments.parse_args(base + ["--variants", "distilled"]))
    assert [v.name for v in grid.variants] == ["full", "distilled"]
    assert grid.student_layers == [0, 5]
    with pytest.raises(experiments.ExperimentError, match="unknown"):
        experiments.resolve(experiments.parse_args(base + ["--variants", "full,lora-r99"]))
    with pytest.raises(experiments.ExperimentError, match="layers 0..5"):
        experiments.resolve(experiments.parse_args(base + ["--student-layers", "0,7"]))
    with pytest.raises(experiments.ExperimentError, match="not a checkpoint"):
        experiments.resolve(experiments.parse_args(base + ["--second-base", str(tmp_path)]))


# ---- baselines -------------------------------------------------------------------------------
def _parts(path: Path, **spec):
    ds = load_dataset(DataSpec(path=str(path), **spec))
    return {k: ds.subset(v) for k, v in make_split(ds, 0).items()}


def test_majority_is_the_class_share(assets):
    parts = _parts(assets["binary"])
    out = baselines.majority(parts["train"], parts["test"])
    test = parts["test"]
    share = np.bincount(test.labels).max() / len(test)
    assert out["test"]["accuracy"] == pytest.approx(share)
    prior = np.bincount(parts["train"].labels, minlength=2) / len(parts["train"])
    assert out["test"]["loss"] == pytest.approx(-np.log(prior[test.labels]).mean())


def test_tfidf_logreg_learns_separable_words(assets):
    parts = _parts(assets["binary"])
    out = baselines.tfidf_logreg(parts["train"], parts["test"])
    assert out["test"]["accuracy"] >= 0.9  # the classes use disjoint sentiment words
    assert out["test"]["loss"] < baselines.majority(parts["train"], parts["test"])["test"]["loss"]
    assert out["trainable_parameters"] == out["vocabulary"] + 1  # binary: one weight per feature + bias
    assert out["inference_samples_per_second"] > 0


def test_baselines_multilabel(assets):
    parts = _parts(assets["jigsaw"], text_column="comment_text", label_columns=JIGSAW_LABELS)
    maj = baselines.majority(parts["train"], parts["test"])
    assert maj["test"]["f1_micro"] == 0.0
    y = parts["test"].labels
    assert maj["test"]["label_accuracy"] == pytest.approx((y == 0).mean())  # predicts 0 everywhere
    tfidf = baselines.tfidf_logreg(parts["train"], parts["test"])
    assert tfidf["test"]["f1_micro"] > 0.3 and np.isfinite(tfidf["test"]["loss"])
