import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from train.finetune.metrics import (accuracy, confusion, mean_average_precision, mean_roc_auc,
                           per_class_average_precision, primary_metric, task_metrics)


def _random(seed=0, n=200, c=12):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.15).astype(np.float32)
    scores = rng.normal(size=(n, c)) + 1.5 * targets          # informative but imperfect
    return scores, targets


def test_map_equals_sklearn_per_class_mean():
    scores, targets = _random()
    ref = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])
    assert mean_average_precision(scores, targets) == pytest.approx(ref, abs=1e-12)
    assert 0.3 < ref < 0.95                                    # neither trivial nor perfect


def test_map_excludes_classes_without_positives():
    scores, targets = _random(seed=1)
    targets[:, [2, 7]] = 0                                     # two classes never occur
    keep = [c for c in range(targets.shape[1]) if c not in (2, 7)]
    ref = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in keep])
    assert mean_average_precision(scores, targets) == pytest.approx(ref, abs=1e-12)
    ap = per_class_average_precision(scores, targets)
    assert np.isnan(ap[[2, 7]]).all() and np.isfinite(ap[keep]).all()


def test_map_perfect_and_errors():
    targets = np.eye(5)[np.arange(20) % 5]
    assert mean_average_precision(targets * 3.0, targets) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        mean_average_precision(np.zeros((4, 3)), np.zeros((4, 2)))


def test_auc_matches_sklearn_on_valid_classes():
    scores, targets = _random(seed=2)
    targets[:, 0] = 0
    ref = roc_auc_score(targets[:, 1:], scores[:, 1:], average="macro")
    assert mean_roc_auc(scores, targets) == pytest.approx(ref)


def test_accuracy_and_confusion():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 1, 2])
    assert accuracy(scores, labels) == pytest.approx(0.5)
    cm = confusion(scores, labels, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="labels"):
        accuracy(scores, labels[:3])


def test_task_metrics_by_kind():
    """Worked by hand. Class 0: positives score .9 and .4, negatives .6 and .1; ranked
    .9+ .6- .4+ .1-, so AP = (1/1 + 2/3) / 2 = 5/6 and AUC = 3 of 4 (pos, neg) pairs = 3/4.
    Class 1: positives .8 and .3 above both negatives: AP = AUC = 1."""
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3], [0.6, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    m = task_metrics(scores, targets, multilabel=True)
    assert set(m) == {"mAP", "AUC"}
    assert m["mAP"] == pytest.approx((5 / 6 + 1) / 2) and m["AUC"] == pytest.approx((3 / 4 + 1) / 2)
    labels = np.array([0, 1, 1, 0])                                   # argmax 0, 1, 0, 0: clip 2 wrong
    assert task_metrics(scores, labels, multilabel=False) == {"accuracy": pytest.approx(3 / 4)}
    assert primary_metric(True) == "mAP" and primary_metric(False) == "accuracy"
