"""Store file names: the one place they are written.

A clip store is `<dataset>_<split>.h5` (`<dataset>.h5` for a dataset stored whole, ESC-50, whose
folds live inside the store); its target store is `<clip store stem>.targets.zarr`, beside it.
Every command, the demo, the ablation and the task registry take their names from here.
"""
from __future__ import annotations

from pathlib import Path

# every dataset `prepare all` writes, and its splits (None: the dataset is one store)
SPLITS: dict[str, tuple[str | None, ...]] = {
    "audioset": ("balanced_train", "unbalanced_train", "eval"),
    "esc50": (None,),
    "spc2": ("train", "valid", "test"),
    "spc1": ("train", "valid", "test"),
}


def clip_store_name(dataset: str, split: str | None = None) -> str:
    """`clip_store_name("spc2", "train") == "spc2_train.h5"`; `clip_store_name("esc50") == "esc50.h5"`."""
    return f"{dataset}_{split}.h5" if split else f"{dataset}.h5"


def target_store_name(clip_store: str | Path) -> str:
    """`target_store_name("data/stores/x.h5") == "x.targets.zarr"`: the targets of that clip store."""
    return f"{Path(clip_store).stem}.targets.zarr"


def target_store_path(clip_store: str | Path) -> Path:
    """Where the target store of `clip_store` lives by default: beside it."""
    return Path(clip_store).with_name(target_store_name(clip_store))


def prepared_store_names() -> list[str]:
    """Every clip store `prepare all` writes, in the order it writes them."""
    return [clip_store_name(d, s) for d, splits in SPLITS.items() for s in splits]


# what pretraining reads: the unbalanced AudioSet clips and their teacher targets (the mini presets,
# the demo and the ablation read this one store)
PRETRAIN_CLIPS = clip_store_name("audioset", "unbalanced_train")    # audioset_unbalanced_train.h5
PRETRAIN_TARGETS = target_store_name(PRETRAIN_CLIPS)                # audioset_unbalanced_train.targets.zarr
# the clip stores a pretraining config's `clip_set` names: AS-2M (the paper's pretraining data) is
# both AudioSet training splits; "unbalanced" is the one store above
PRETRAIN_SETS: dict[str, tuple[str, ...]] = {
    "as2m": (clip_store_name("audioset", "balanced_train"), PRETRAIN_CLIPS),
    "unbalanced": (PRETRAIN_CLIPS,),
}

# the stores of each fine-tuning task: train (one or more), valid ("" = none), test ("" = the task
# cross-validates on the folds of its one train store)
TASK_STORES: dict[str, dict] = {
    "as2m": {"train": [clip_store_name("audioset", "balanced_train"), PRETRAIN_CLIPS],
             "valid": "", "test": clip_store_name("audioset", "eval")},
    "as20k": {"train": [clip_store_name("audioset", "balanced_train")],
              "valid": "", "test": clip_store_name("audioset", "eval")},
    "esc50": {"train": [clip_store_name("esc50")], "valid": "", "test": ""},
    "spc1": {"train": [clip_store_name("spc1", "train")], "valid": clip_store_name("spc1", "valid"),
             "test": clip_store_name("spc1", "test")},
    "spc2": {"train": [clip_store_name("spc2", "train")], "valid": clip_store_name("spc2", "valid"),
             "test": clip_store_name("spc2", "test")},
}


def scored_store_name(task: str) -> str:
    """The store a task's reported score comes from: its test store, or (cross-validated tasks)
    the one store whose folds it is tested on."""
    stores = TASK_STORES[task]
    return stores["test"] or stores["train"][0]
