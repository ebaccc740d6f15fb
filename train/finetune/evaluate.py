"""Evaluation of a saved fine-tuning checkpoint on its task's test set.

Checkpoints describe their model (`model_args`) and record their config, data paths included, so
evaluation rebuilds the model exactly, whatever encoder it started from, and finds the test set
(ESC-50: the held-out fold) without being told; `stores=` looks for the same file names elsewhere.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cache_tools.errors import ConfigError
from train.finetune import data as fd
from train.model.checkpoint import check_model_args, load_checkpoint
from train.data import check_compatible
from train.distributed import resolve_device
from train.finetune.engine import evaluate
from train.model.models_vit import AudioViT
from train.finetune.tasks import TASKS


def rebuild(model_args: dict, state_dict: dict, path: str | Path = "checkpoint") -> AudioViT:
    """AudioViT from `describe()` output and a fine-tuned state dict (head size read from it), the
    arguments checked against the weights before anything is built (checkpoint.check_model_args)."""
    vit = AudioViT(**check_model_args(Path(path), model_args, state_dict))
    vit.reset_head(int(state_dict["head.weight"].shape[0]))
    vit.load_state_dict(state_dict, strict=True)
    return vit


def evaluate_checkpoint(ckpt: str | Path, task: str | None = None, stores: str | Path | None = None,
                        device: str = "cpu", batch_size: int = 64) -> dict:
    """Metrics of a fine-tuning checkpoint on its task's test set (ESC-50: its held-out fold).
    `stores`: look for the recorded store file names in this folder instead of the recorded paths."""
    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt)
    if state.get("kind") != "finetune" or "model_args" not in state:
        raise ConfigError(f"{ckpt}: not a fine-tuning checkpoint (kind={state.get('kind')!r}); "
                            "evaluate takes the checkpoint.pt that `supmam finetune` writes")
    cfg = state.get("config")
    if not isinstance(cfg, dict) or cfg.get("task") not in TASKS or not isinstance(state.get("model"), dict):
        raise ConfigError(f"{ckpt}: its recorded config names no known task (or it holds no model): "
                          "not a checkpoint `supmam finetune` wrote")
    if task is not None and task != cfg["task"]:
        raise ConfigError(f"{ckpt}: fine-tuned for task {cfg['task']!r}, not {task!r}")
    t = TASKS[cfg["task"]]
    path = Path(cfg["train_clips"][0] if t.protocol in ("cv", "store") else cfg["test_clips"])
    store = fd.open_stores([Path(stores) / path.name if stores is not None else path])[0]
    if t.protocol == "store":                              # your own data: the part the run held out
        from train.finetune.custom import checkpoint_test_set
        ds, where, t = checkpoint_test_set(store, cfg, state)
    elif t.protocol == "cv":
        fold = state["fold"]
        ds, where = fd.ClipDataset(store, np.flatnonzero(np.asarray(store.folds) == fold)), f"{store.path} fold {fold}"
    else:
        ds, where = fd.ClipDataset(store), str(store.path)
    dev = resolve_device(device)
    vit = rebuild(state["model_args"], state["model"], ckpt).to(dev)
    if store.num_classes != vit.head.out_features:
        raise ConfigError(f"{store.path}: {store.num_classes} classes, but {ckpt} has a "
                            f"{vit.head.out_features}-class head")
    same = check_test_store(store, state, ckpt)
    r = evaluate(vit, ds, t.multilabel, dev, batch_size)
    return {"task": t.name, "checkpoint": str(ckpt), "test_set": where, "clips": len(ds), "metric": t.metric,
            **r.metrics, "recorded_test_set": same}


def check_test_store(store, state: dict, ckpt: Path) -> bool:
    """StoreError if `store` names its classes otherwise (another order scores nonsense) or holds other
    clip lengths than the run trained on (train.data.check_compatible); whether it is the very store the
    run recorded (fingerprint; a warning on stderr if not: the number is then a score on other clips)."""
    check_compatible([store], {k: state.get(k) for k in ("class_names", "target_length")}, ckpt)
    recorded = (state.get("fingerprints") or {}).get("clips", {}).get(store.path.name)
    if recorded is not None and recorded != store.fingerprint:
        print(f"warning: {store.path} is not the store {ckpt} recorded (fingerprint {store.fingerprint}, recorded "
              f"{recorded}): the score is on these clips, not the run's test set", file=sys.stderr)
        return False
    return recorded is not None
