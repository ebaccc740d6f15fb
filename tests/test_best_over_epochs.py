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


def test_test_each_epoch_puts_the_figure_beside_a_valid_selected_headline(tmp_path):
    import json
    import torch
    from tests.stores import spc_stores
    from train.finetune.config import load_finetune_config
    from train.finetune.run import run_finetune
    torch.set_num_threads(1)
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    base = [f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}", "init=none", "epochs=3", "model.encoder=tiny",
            "model.encoder_depth=1", "num_workers=0", "device=cpu"]
    on = run_finetune(load_finetune_config("spc2-mini", base + ["name=on", "test_each_epoch=true"], task="spc2"))
    off = run_finetune(load_finetune_config("spc2-mini", base + ["name=off"], task="spc2"))
    assert on["headline"] == "best" and on["selection"] == "best valid accuracy"     # selection stays on valid
    assert [sorted(h) for h in on["history"]] == [["epoch", "test_accuracy", "valid_accuracy"]] * 3
    best = max(h["test_accuracy"] for h in on["history"])
    assert on["best_over_epochs"]["test"]["accuracy"] == best and "AudioMAE prints" in on["best_over_epochs"]["note"]
    assert "best_over_epochs" not in off and all("test_accuracy" not in h for h in off["history"])
    for k in ("score", "best", "last"):                                  # the extra test pass changes nothing else
        assert json.dumps(on[k]) == json.dumps(off[k])
    assert "What AudioMAE prints" in (tmp_path / "runs" / "on" / "results.md").read_text()
