"""contract/data.py and contract/split.py (through training/data.py): the four loaders on small files in each schema, every error, the split, batches."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from contract.encoder import TokenizerError
from training import data
from training.data import DataError, DataSpec, DataWarning

SO_HEADER = ["PostId", "PostCreationDate", "OwnerUserId", "OwnerCreationDate", "ReputationAtPostCreation",
             "OwnerUndeletedAnswerCountAtPostTime", "Title", "BodyMarkdown", "Tag1", "Tag2", "Tag3", "Tag4",
             "Tag5", "PostClosedDate", "OpenStatus"]


def write_csv(path: Path, header, rows, encoding="utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def so_row(i, status="open", title="How do I sort a list?", body="I tried sorted() but\nit fails", tags=("python", "", "", "", ""),
           post="08/01/2008 12:00:00", owner="07/31/2008 12:00:00", rep="10"):
    return [str(i), post, "42", owner, rep, "0", title, body, *tags, "" if status == "open" else "08/02/2008 00:00:00",
            status]


@pytest.fixture
def tweets_file(tmp_path):
    rows = [["negative", "0.9", "i hate waiting for the bus"], ["neutral", "0.5", "the bus comes at noon"],
            ["positive", "0.8", "café au lait is lovely"], ["negative", "0.7", "worst day ever"],
            ["positive", "1.0", "what a great ride"], ["neutral", "0.6", "it is tuesday"]]
    return write_csv(tmp_path / "tweets.csv", ["sentiment", "confidence", "text"], rows, encoding="latin-1")


# ---- loaders ---------------------------------------------------------------------------------
def test_stackoverflow_text_labels_and_features(tmp_path):
    rows = [so_row(1, tags=("python", "list", "sorting", "", ""), rep="25"),
            so_row(2, "not a real question", title="Help", body="plz help me now"),
            so_row(3, "off topic", post="01/10/2009 00:00:00", owner="01/01/2009 00:00:00"),
            so_row(4, "too localized"), so_row(5, "not constructive")]
    ds = data.load_stackoverflow(write_csv(tmp_path / "train-sample.csv", SO_HEADER, rows))
    assert ds.label_names == ["open", "closed"] and ds.labels.tolist() == [0, 1, 1, 1, 1]
    assert ds.texts[1] == "Help\nplz help me now"
    assert ds.feature_names == ["account_age_days", "num_tags", "reputation", "title_words", "body_words"]
    np.testing.assert_allclose(ds.features[0], [1.0, 3, 25, 6, 6])
    assert ds.features[1, 3:].tolist() == [1, 4]       # title / body words
    assert ds.features[2, 0] == pytest.approx(9.0)     # account age in days
    assert ds.rows.tolist() == [0, 1, 2, 3, 4]


def test_stackoverflow_errors_name_row_column_value(tmp_path):
    bad_status = write_csv(tmp_path / "a.csv", SO_HEADER, [so_row(1), so_row(2, "duplicate")])
    with pytest.raises(DataError, match=r"a\.csv: row 3: unknown label 'duplicate' in column 'OpenStatus'"):
        data.load_stackoverflow(bad_status)
    bad_date = write_csv(tmp_path / "b.csv", SO_HEADER, [so_row(1, owner="yesterday")])
    with pytest.raises(DataError, match=r"b\.csv: row 2: column 'OwnerCreationDate' is not a date: 'yesterday'"):
        data.load_stackoverflow(bad_date)
    bad_rep = write_csv(tmp_path / "c.csv", SO_HEADER, [so_row(1), so_row(2, rep="lots")])
    with pytest.raises(DataError, match=r"c\.csv: row 3: column 'ReputationAtPostCreation' is not a number: 'lots'"):
        data.load_stackoverflow(bad_rep)
    missing = write_csv(tmp_path / "d.csv", SO_HEADER[:-1], [so_row(1)[:-1]])
    with pytest.raises(DataError, match=r"d\.csv: missing column \['OpenStatus'\]; the file has \['PostId'"):
        data.load_stackoverflow(missing)


def test_csv_loader_labels_sorted_numerically_and_fixed_order(tmp_path):
    f = write_csv(tmp_path / "x.csv", ["body", "stars"], [["a", "10"], ["b", "2"], ["c", "2"], ["d", "1"]])
    ds = data.load_csv(f, "body", "stars")
    assert ds.label_names == ["1", "2", "10"] and ds.labels.tolist() == [2, 1, 1, 0]
    ds = data.load_csv(f, "body", "stars", labels=["10", "2", "1"])
    assert ds.labels.tolist() == [0, 1, 1, 2]
    with pytest.raises(DataError, match=r"x\.csv: row 5: unknown label '1' in column 'stars' \(expected one of \['10', '2'\]\)"):
        data.load_csv(f, "body", "stars", labels=["10", "2"])


def test_csv_loader_errors(tmp_path):
    f = write_csv(tmp_path / "x.csv", ["text", "label"], [["a", "pos"], ["b", ""]])
    with pytest.raises(DataError, match=r"x\.csv: row 3: empty label in column 'label'"):
        data.load_csv(f)
    with pytest.raises(DataError, match=r"x\.csv: missing column \['sentence'\]; the file has \['text', 'label'\]"):
        data.load_csv(f, text_column="sentence")
    one = write_csv(tmp_path / "one.csv", ["text", "label"], [["a", "pos"], ["b", "pos"]])
    with pytest.raises(DataError, match="single label value"):
        data.load_csv(one)
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        data.load_csv(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        data.load_csv(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"header\.csv: no data rows"):
        data.load_csv(tmp_path / "header.csv")
    (tmp_path / "blob.csv").write_bytes(b"text,label\n\xff\xfe\x00\x81garbage,1\n")
    with pytest.raises(DataError, match=r"blob\.csv: not readable as utf-8 text"):
        data.load_csv(tmp_path / "blob.csv")
    with pytest.raises(DataError, match="is a folder"):
        data.load_csv(tmp_path)


def test_empty_texts_are_dropped_with_a_counted_warning(tmp_path):
    rows = [["ok", "a"], ["", "a"], ["   ", "b"], ["fine", "b"], ["", "b"], ["", "a"], ["", "a"], ["", "b"], ["x", "a"]]
    f = write_csv(tmp_path / "x.csv", ["text", "label"], rows)
    with pytest.warns(DataWarning, match=r"x\.csv: dropped 6 rows with empty text \(rows 3, 4, 6, 7, 8, \.\.\.\)"):
        ds = data.load_csv(f)
    assert ds.texts == ["ok", "fine", "x"] and ds.rows.tolist() == [0, 3, 8]


def test_multilabel_loader_and_errors(tmp_path):
    header = ["id", "comment_text", "toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    rows = [["1", "you are nice", 0, 0, 0, 0, 0, 0], ["2", "you are awful", 1, 0, 1, 0, 1, 0],
            ["3", "i will find you", 1, 1, 0, 1, 0, 0]]
    f = write_csv(tmp_path / "train.csv", header, rows)
    ds = data.load_multilabel(f, "comment_text", header[2:])
    assert ds.multi_label and ds.label_names == header[2:]
    assert ds.labels.dtype == np.float32 and ds.labels.tolist()[1] == [1, 0, 1, 0, 1, 0]
    assert ds.class_counts()["toxic"] == 2
    bad = write_csv(tmp_path / "bad.csv", header, rows + [["4", "meh", 0, 2, 0, 0, 0, 0]])
    with pytest.raises(DataError, match=r"bad\.csv: row 5: column 'severe_toxic' must be 0 or 1, got '2'"):
        data.load_multilabel(bad, "comment_text", header[2:])
    with pytest.raises(DataError, match=r"missing column \['rude'\]"):
        data.load_multilabel(f, "comment_text", ["toxic", "rude"])
    spec = DataSpec(path=str(f), text_column="comment_text", label_columns=header[2:])
    assert data.load_dataset(spec).spec.kind == "multilabel"


def test_tweets_binary_drops_neutral_and_3class_keeps_it(tweets_file, caplog):
    with caplog.at_level("INFO", logger="contract.data"):
        ds = data.load_tweets(tweets_file)
    assert "dropped 2 neutral tweets, kept 4" in caplog.text
    assert ds.label_names == ["negative", "positive"] and ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.texts[1] == "café au lait is lovely"  # latin-1 decoded
    ds3 = data.load_tweets(tweets_file, task="3class")
    assert ds3.label_names == ["negative", "neutral", "positive"] and len(ds3) == 6
    bad = write_csv(tweets_file.parent / "bad.csv", ["sentiment", "confidence", "text"], [["angry", "1", "grr"]])
    with pytest.raises(DataError, match=r"bad\.csv: row 2: unknown label 'angry' in column 'sentiment'"):
        data.load_tweets(bad)


def test_detect_kind_from_header(tmp_path, tweets_file):
    so = write_csv(tmp_path / "so.csv", SO_HEADER, [so_row(1), so_row(2, "off topic")])
    assert data.detect_kind(DataSpec(path=str(so))) == "stackoverflow"
    assert data.detect_kind(DataSpec(path=str(tweets_file))) == "tweets"
    assert data.detect_kind(DataSpec(path=str(tweets_file), text_column="text", label_column="sentiment")) == "csv"
    assert data.detect_kind(DataSpec()) == "tweets"
    with pytest.raises(DataError, match="needs --data"):
        data.load_dataset(DataSpec(kind="csv"))


# ---- subsample and split ---------------------------------------------------------------------
def make_ds(n=200, pos_fraction=0.3, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_fraction).astype(np.int64)
    return data.TextDataset([f"text {i}" for i in range(n)], labels, ["neg", "pos"], "single_label_classification",
                            np.arange(n))


def test_stratified_subsample_keeps_proportions_and_is_seeded():
    ds = make_ds(1000)
    sub = data.stratified_subsample(ds, 100, seed=1)
    assert len(sub) == 100
    assert sub.class_counts()["pos"] == round(100 * ds.class_counts()["pos"] / 1000)
    assert data.stratified_subsample(ds, 100, seed=1).rows.tolist() == sub.rows.tolist()
    assert data.stratified_subsample(ds, 100, seed=2).rows.tolist() != sub.rows.tolist()
    assert list(sub.rows) == sorted(sub.rows)  # file order kept
    assert data.stratified_subsample(ds, 5000) is ds


def test_split_is_80_10_10_stratified_disjoint_and_reproducible():
    ds = make_ds(1000)
    split = data.make_split(ds, seed=7)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 800, "val": 100, "test": 100}
    assert len(set(np.concatenate(list(split.values())))) == 1000  # disjoint and complete
    pos = ds.labels.mean()
    for idx in split.values():
        assert abs(ds.labels[idx].mean() - pos) < 0.01
    again = data.make_split(ds, seed=7)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["test"], data.make_split(ds, seed=8)["test"])
    with pytest.raises(DataError, match="too few"):
        data.make_split(make_ds(4))


def test_saved_split_reloads_the_same_texts_and_detects_a_changed_file(tmp_path, tweets_file):
    rows = [[("negative", "positive")[i % 2], "1", f"tweet number {i}"] for i in range(60)]
    f = write_csv(tmp_path / "t.csv", ["sentiment", "confidence", "text"], rows, encoding="latin-1")
    ds = data.load_dataset(DataSpec(path=str(f)))
    split = data.make_split(ds, seed=3)
    path = data.save_split(tmp_path / "run" / "split.json", ds, split, seed=3)
    doc = json.loads(path.read_text())
    assert doc["data"] == str(f) and doc["sha256"] == ds.sha256 and doc["spec"]["kind"] == "tweets"
    assert doc["test"] == ds.rows[split["test"]].tolist()
    _, parts = data.load_split(path)
    for name, idx in split.items():
        assert parts[name].texts == [ds.texts[i] for i in idx]
        assert parts[name].labels.tolist() == ds.labels[idx].tolist()
    f.write_text(f.read_text() + "negative,1,one more\n")
    with pytest.raises(DataError, match=r"changed since .*split\.json was made"):
        data.load_split(path)
    with pytest.raises(DataError, match="no such split file"):
        data.load_split(tmp_path / "none.json")


# ---- tokenization and batches ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return data.load_tokenizer(minilm_path)


def test_collate_pads_as_the_served_tokenizer_and_truncation_keeps_the_head(tokenizer):
    texts = ["short one", "a somewhat longer text with several more words in it", "x " * 300]
    ds = data.TextDataset(texts, np.array([0, 1, 0]), ["a", "b"], "single_label_classification", np.arange(3))
    enc = data.EncodedDataset(ds, tokenizer, max_length=32)
    assert enc.lengths.tolist()[2] == 32 and enc.lengths[0] == 4  # [CLS] short one [SEP]
    b = enc.collate([0, 1])
    longest = int(enc.lengths[1])
    assert 8 < longest < 16 and b["input_ids"].shape == (2, 16)  # the longer of the two, up to a multiple of 8
    assert b["attention_mask"].sum(1).tolist() == enc.lengths[[0, 1]].tolist()
    assert (b["input_ids"][0, 4:] == tokenizer.pad_token_id).all()
    long = enc.collate([2])["input_ids"][0]
    assert len(long) == 32                                         # capped at max_length
    tok = tokenizer.tokenizer
    assert long[0] == tok.token_to_id("[CLS]") and long[-1] == tok.token_to_id("[SEP]")
    assert tok.decode(long[1:4].tolist()) == "x x x"  # the head of the text
    t = data.tokenize(tokenizer, texts[:2], max_length=8)
    assert t["input_ids"].shape == (2, 8) and t["attention_mask"][0].sum() == 4


def test_bucketed_batches_cover_everything_once_and_depend_on_seed_and_epoch(tokenizer):
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(1, 60, 500)]
    ds = data.TextDataset(texts, np.zeros(500, dtype=np.int64), ["a", "b"], "single_label_classification", np.arange(500))
    enc = data.EncodedDataset(ds, tokenizer, max_length=64)
    b1 = enc.batches(16, shuffle=True, seed=1, epoch=0, bucket=True)
    assert sorted(np.concatenate(b1).tolist()) == list(range(500))
    assert all(np.array_equal(x, y) for x, y in zip(b1, enc.batches(16, shuffle=True, seed=1, epoch=0)))
    assert not np.array_equal(np.concatenate(b1), np.concatenate(enc.batches(16, shuffle=True, seed=1, epoch=1)))
    padded = lambda bs: sum(len(b) * enc.lengths[b].max() for b in bs)
    plain = enc.batches(16, shuffle=True, seed=1, epoch=0, bucket=False)
    assert padded(b1) < 0.7 * padded(plain)  # bucketing removes most of the padding
    ev = enc.batches(16, shuffle=False)
    assert np.all(np.diff(enc.lengths[np.concatenate(ev)]) >= 0)


def test_max_length_limits():
    assert data.check_max_length(128) == 128
    with pytest.raises(TokenizerError, match="between 3 and 512"):
        data.check_max_length(513)
    with pytest.raises(TokenizerError, match="between 3 and 64"):
        data.check_max_length(128, max_positions=64)


def test_tokenizer_folder_without_tokenizer_is_an_error(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json or vocab.txt"):
        data.load_tokenizer(tmp_path)


def test_a_checkpoint_with_only_vocab_txt_tokenizes_as_its_tokenizer_json(minilm_path, tmp_path):
    folder = tmp_path / "vocab-only"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
        (folder / name).write_bytes((minilm_path / name).read_bytes())
    texts = ["Hello, WORLD: unaffable naïve café!", "x " * 300, ""]
    from_vocab, from_json = data.load_tokenizer(folder), data.load_tokenizer(minilm_path)
    for key, a in from_vocab(texts).items():
        np.testing.assert_array_equal(a, from_json(texts)[key])


def test_warning_free_load_of_clean_file(tmp_path):
    f = write_csv(tmp_path / "x.csv", ["text", "label"], [["a", "1"], ["b", "0"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_csv(f)
