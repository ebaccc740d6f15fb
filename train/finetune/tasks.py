"""The fine-tuning tasks: the one registry that the CLI's task choices, fine-tuning, evaluation and
the demo read. Each task names its clip stores (file names from cache_tools.names), its labels,
its headline metric and its protocol:

    split  train on `train`, select on `valid` (if any, else the last epoch), report on `test`
    cv     cross-validation over the folds of the one `train` store (ESC-50's five folds)
    store  your own data (train/finetune/custom.py): the store's split column, folds or a seeded split
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cache_tools.names import clip_store_name


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[str, ...]          # clip store file names, trained on together
    valid: str                      # "" = no validation split: the last epoch's model is reported
    test: str                       # "" with protocol "cv": the held-out fold of `train` is the test set
    multilabel: bool                # multi-hot labels (AudioSet) or one class id per clip
    metric: Literal["mAP", "accuracy"]
    protocol: Literal["split", "cv", "store"]
    num_classes: int | None = None  # checked against the stores when the task fixes it

    @property
    def scored_store(self) -> str:
        """The store the reported score comes from: the test store, or the cross-validated one."""
        return self.test or self.train[0]


_AS_BAL, _AS_UNBAL, _AS_EVAL = (clip_store_name("audioset", s) for s in ("balanced_train", "unbalanced_train", "eval"))

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("as2m", (_AS_BAL, _AS_UNBAL), "", _AS_EVAL, multilabel=True, metric="mAP", protocol="split"),
    Task("as20k", (_AS_BAL,), "", _AS_EVAL, multilabel=True, metric="mAP", protocol="split"),
    Task("esc50", (clip_store_name("esc50"),), "", "", multilabel=False, metric="accuracy", protocol="cv"),
    Task("spc1", (clip_store_name("spc1", "train"),), clip_store_name("spc1", "valid"),
         clip_store_name("spc1", "test"), multilabel=False, metric="accuracy", protocol="split",
         num_classes=12),                                       # SUPERB's split: 10 words + unknown + silence
    Task("spc2", (clip_store_name("spc2", "train"),), clip_store_name("spc2", "valid"),
         clip_store_name("spc2", "test"), multilabel=False, metric="accuracy", protocol="split"),
    Task("custom", (clip_store_name("custom"),), "", "", multilabel=False, metric="accuracy",
         protocol="store"),                                     # multilabel / metric: read from the store
)}

TaskName = Literal[tuple(TASKS)]     # the config's `task` type: exactly the registry's keys
