"""The classic baselines every row of the experiment table is read against.

- majority: predicts the training split's most frequent class (multi-label: each label's most
  frequent value, which is almost always 0); its probabilities are the training priors, so its test
  loss is the loss of knowing nothing but the class shares.
- TF-IDF + logistic regression (scikit-learn): word 1-2-grams, sublinear term frequencies;
  one-vs-rest for multi-label.

Both return the same fields as a fine-tuned run (test loss, accuracy, micro-F1, trainable parameters,
seconds of training, inference samples/s at batch 32 on the test texts), scored with the trainer's
own metric function, so their numbers sit in the same table without any translation.
"""
from __future__ import annotations

import time

import numpy as np

from training.data import TextDataset
from training.trainer import classification_metrics

EPS = 1e-7  # probabilities are clipped away from 0 and 1 so that the log loss stays finite


def _scores(probs: np.ndarray, test: TextDataset) -> dict:
    """Test loss (the trainer's: cross-entropy, or BCE averaged over labels) plus its metrics."""
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    if test.multi_label:
        y = test.labels.astype(np.float64)
        loss = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
        logits = np.log(p) - np.log1p(-p)  # the trainer thresholds logits at 0 (= probability 0.5)
    else:
        loss = float(-np.log(p[np.arange(len(p)), test.labels]).mean())
        logits = np.log(p)  # argmax of log-probabilities = argmax of probabilities
    return {"loss": loss, **classification_metrics(logits.astype(np.float32), test.labels, test.label_names,
                                                   test.multi_label)}


def _per_second(predict, texts: list[str], batch_size: int = 32) -> float:
    """Samples/s of `predict` over `texts` in batches of `batch_size` (one untimed warm-up batch)."""
    predict(texts[:batch_size])
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        predict(texts[i:i + batch_size])
    return len(texts) / max(time.perf_counter() - t0, 1e-9)


def majority(train: TextDataset, test: TextDataset) -> dict:
    t0 = time.perf_counter()
    if train.multi_label:
        prior = train.labels.astype(np.float64).mean(0)  # (L,) share of texts carrying each label
    else:
        prior = np.bincount(train.labels, minlength=len(train.label_names)) / len(train)
    seconds = time.perf_counter() - t0
    probs = np.tile(prior, (len(test), 1))
    return {"test": _scores(probs, test), "trainable_parameters": 0, "seconds_per_epoch": seconds,
            "best_epoch": None, "inference_samples_per_second": None,  # no model to time: a constant
            "prior": prior.tolist(), "epochs": []}


def tfidf_logreg(train: TextDataset, test: TextDataset, seed: int = 0, max_features: int = 100_000,
                 C: float = 4.0, batch_size: int = 32) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1 if len(train) < 2000 else 2,
                                 max_features=max_features)
    x = vectorizer.fit_transform(train.texts)
    logreg = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    if train.multi_label:
        # a label that is constant in the training split gets sklearn's constant predictor (it warns)
        clf = OneVsRestClassifier(logreg).fit(x, train.labels.astype(int))
    else:
        clf = logreg.fit(x, train.labels)
    seconds = time.perf_counter() - t0

    def predict(texts):
        p = clf.predict_proba(vectorizer.transform(texts))
        if train.multi_label:
            return p
        full = np.zeros((len(texts), len(train.label_names)))  # classes absent from train keep p = 0
        full[:, clf.classes_] = p
        return full

    probs = predict(test.texts)
    estimators = clf.estimators_ if train.multi_label else [clf]
    params = sum(e.coef_.size + e.intercept_.size for e in estimators if hasattr(e, "coef_"))
    return {"test": _scores(probs, test), "trainable_parameters": int(params), "seconds_per_epoch": seconds,
            "best_epoch": None, "inference_samples_per_second": _per_second(predict, test.texts, batch_size),
            "vocabulary": len(vectorizer.vocabulary_), "epochs": []}
