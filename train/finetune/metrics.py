"""Evaluation metrics for the fine-tuning tasks (scikit-learn underneath).

AudioSet tasks report mAP (mean over classes that have positives of the per-class average
precision, as AudioMAE / AST compute it) and ROC-AUC; single-label tasks report top-1 accuracy.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score
from cache_tools.errors import Diverged


def _check(scores: np.ndarray, targets: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"{what}: scores and targets must both be [N, C]; got {scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: scores hold NaN or inf")
    return scores, (targets > 0.5).astype(np.int64)  # mixed / smoothed targets count as positive above 0.5


def per_class_average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """scores, targets: [N, C] -> AP per class [C]; NaN for a class with no positive clip."""
    scores, targets = _check(scores, targets, "average precision")
    ap = np.full(scores.shape[1], np.nan)
    has_pos = targets.sum(0) > 0                                          # [C]
    for c in np.flatnonzero(has_pos):
        ap[c] = average_precision_score(targets[:, c], scores[:, c])
    return ap


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """scores, targets: [N, C] -> mean AP over the classes that have at least one positive."""
    ap = per_class_average_precision(scores, targets)
    if np.isnan(ap).all():
        raise ValueError("mean average precision: no class has a positive clip")
    return float(np.nanmean(ap))


def mean_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """scores, targets: [N, C] -> mean ROC-AUC over classes with both positives and negatives (NaN if none)."""
    scores, targets = _check(scores, targets, "ROC-AUC")
    pos = targets.sum(0)                                                  # [C]
    ok = np.flatnonzero((pos > 0) & (pos < targets.shape[0]))
    if len(ok) == 0:
        return float("nan")
    return float(roc_auc_score(targets[:, ok], scores[:, ok], average="macro"))


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """scores: [N, C] logits or probabilities; labels: [N] class ids -> top-1 accuracy."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"accuracy: scores must be [N, C] and labels [N]; got {scores.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("accuracy: no clips")
    return float((scores.argmax(1) == labels).mean())


def confusion(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scores: [N, C], labels: [N] -> counts [C_true, C_pred]."""
    return confusion_matrix(np.asarray(labels), np.asarray(scores).argmax(1), labels=np.arange(num_classes))


def task_metrics(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> dict:
    """The metrics a task reports: mAP (+ AUC) for multi-label ([N, C] multi-hot targets), accuracy for
    single-label ([N] class ids). Non-finite scores are an error (Diverged), never a metric: argmax
    over NaN picks class 0 and looks like a score."""
    finite = np.isfinite(np.asarray(scores, dtype=np.float64)).reshape(len(scores), -1).all(axis=1)   # [N]
    if not finite.all():
        raise Diverged(f"scores of {int((~finite).sum())} of {len(finite)} clips are NaN or infinite: the model "
                       "(its weights, or a head trained with too high an lr) gives no usable output; no metric "
                       "is reported")
    if multilabel:
        return {"mAP": mean_average_precision(scores, targets), "AUC": mean_roc_auc(scores, targets)}
    return {"accuracy": accuracy(scores, targets)}


def primary_metric(multilabel: bool) -> str:
    """The headline number of a task, used for model selection (higher is better)."""
    return "mAP" if multilabel else "accuracy"
