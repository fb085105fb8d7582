"""Classification metrics of a split's logits: the trainer's, the baselines' and the experiments' one scale."""
from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str],
                           multi_label: bool) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

    if not multi_label:
        pred = logits.argmax(-1)
        p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=range(len(label_names)),
                                                     average="macro", zero_division=0)
        return {"accuracy": float(accuracy_score(labels, pred)), "precision_macro": float(p),
                "recall_macro": float(r), "f1_macro": float(f)}
    y = labels.astype(int)
    pred = (logits > 0).astype(int)  # sigmoid(logit) > 0.5
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    auc = {}
    for j, name in enumerate(label_names):  # undefined when a split holds only one class of a label
        auc[name] = float(roc_auc_score(y[:, j], logits[:, j])) if 0 < y[:, j].sum() < len(y) else None
    defined = [v for v in auc.values() if v is not None]
    return {"accuracy": float(accuracy_score(y, pred)),  # exact match of the whole label set
            "label_accuracy": float((pred == y).mean()),
            "precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f),
            "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
            "roc_auc": auc, "roc_auc_macro": float(np.mean(defined)) if defined else None}
