"""Fine-tuning reports AudioMAE's figure beside the headline: the best test score over epochs (it
selects on the test set), only where each evaluated epoch was scored on the test set."""
from __future__ import annotations

import numpy as np

from train.finetune.engine import EvalResult, FitResult
from train.finetune.protocols import _fit_fields
from train.finetune.report import results_table
from train.finetune.tasks import TASKS


def fit(history, best=None):
    last = EvalResult({"mAP": 0.30}, np.zeros((1, 2)), np.zeros((1, 2)))
    return FitResult(last, best, 5, 3 if best else None, history, 1.0)


def test_best_over_epochs_beside_the_last_epoch_headline():
    task = TASKS["as20k"]
    hist = [{"epoch": e, "test_mAP": v} for e, v in ((1, 0.20), (2, 0.34), (3, 0.34), (4, 0.31), (5, 0.30))]
    out = _fit_fields(fit(hist), task)
    assert out["headline"] == "last" and out["last"]["test"]["mAP"] == 0.30
    assert out["best_over_epochs"]["test"]["mAP"] == 0.34 and out["best_over_epochs"]["epoch"] == 2
    assert "AudioMAE prints" in out["best_over_epochs"]["note"]
    m = {"task": "as20k", "preset": "as20k", "init": "x", "metric": "mAP", "score": 0.30, "test": {"mAP": 0.30},
         "num_test_clips": 4, "num_classes": 2, **out}
    assert "the best test mAP over epochs, 34.00 (epoch 2)" in results_table(m)
    # a task with a validation split scores valid per epoch: no test-selected figure
    valid = [{"epoch": e, "valid_accuracy": 0.5} for e in (1, 2, 3)]
    assert "best_over_epochs" not in _fit_fields(fit(valid, best=fit([]).last), TASKS["spc2"])
