"""Fine-tuning on your own data: the `custom` task over one store from `supmam prepare folder`.

The store decides what the benchmark tasks fix in tasks.py: single- or multi-label (CE with
accuracy, or BCE with mAP), and the protocol: its `split` column, its `fold` column
(cross-validation, as ESC-50), or else a seeded stratified split (split.py) whose seed, fractions
and clip ids the run records (metrics.json "split", split.json) so the test set can be rebuilt.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from cache_tools.clips.store import ClipStore
from train.finetune import data as fd
from train.finetune.split import Assignment, assign
from train.finetune.engine import Splits, fit
from train.finetune.augment import TrainClips
from train.finetune.config import CustomFinetuneConfig, FinetuneConfig
from train.finetune.protocols import Outcome, _fit_fields, _info, _run_cv, _summary, augment, build_model
from train.finetune.metrics import primary_metric
from train.finetune.tasks import TASKS, Task
from cache_tools.errors import ConfigError


def store_task(task: Task, store: ClipStore, assignment: Assignment) -> Task:
    """`task` with the store's label kind and metric, and the protocol its assignment implies."""
    return dataclasses.replace(task, multilabel=store.multilabel, metric=primary_metric(store.multilabel),
                               protocol="cv" if assignment.folds is not None else "split")


def open_custom_store(cfg: FinetuneConfig) -> ClipStore:
    if len(cfg.train_clips) != 1:
        raise ConfigError(f"{', '.join(cfg.train_clips) or '(none)'}: the custom task takes one clip store "
                            "(from `supmam prepare folder`; --clips X.h5), with its split or folds inside")
    return fd.open_stores(cfg.train_clips)[0]


def write_split(out: Path, store: ClipStore, a: Assignment) -> Path:
    """split.json: the record plus the clip ids of each part (or each clip's fold)."""
    ids = np.asarray(store.clip_ids, dtype=object)
    rec = a.record()
    if a.folds is not None:
        rec["clip_fold"] = {str(c): int(f) for c, f in zip(ids, a.folds)}
    else:
        rec["clip_ids"] = {p: ids[getattr(a, p)].tolist() for p in ("train", "valid", "test")}
    path = out / "split.json"
    path.write_text(json.dumps(rec, indent=1))
    return path


def run_custom(cfg: CustomFinetuneConfig, task: Task, out: Path, dist, resume: bool = False) -> Outcome | None:
    """Fine-tune on the one store of `cfg.train_clips` with the protocol its contents give."""
    store = open_custom_store(cfg)
    a = assign(store, cfg.seed, cfg.valid_fraction, cfg.test_fraction)
    t = store_task(task, store, a)
    if dist.is_main:
        write_split(out, store, a)
        print(f"[finetune] custom: {store.num_classes} classes, {'multi' if t.multilabel else 'single'}-label "
              f"({t.metric}); {a.source}: {a.record().get('clips') or a.record().get('folds')}", flush=True)
        for note in a.notes:
            print(f"[finetune] custom: note: {note}", flush=True)
    if a.folds is not None:
        outcome = _run_cv(cfg, t, out, dist, resume)
    else:
        outcome = _run_parts(cfg, t, store, a, out, dist, resume)
    if outcome is not None:
        outcome.metrics["split"] = a.record()
    return outcome


def _run_parts(cfg: CustomFinetuneConfig, t: Task, store: ClipStore, a: Assignment, out: Path,
               dist, resume: bool = False) -> Outcome | None:
    """Train on a.train; report the last and (with valid clips) the best-on-valid model on a.test."""
    data = Splits(TrainClips([store], [a.train], augment(cfg)),
                  fd.ClipDataset(store, a.valid) if len(a.valid) else None, fd.ClipDataset(store, a.test))
    info = _info([store])
    r = fit(cfg, build_model(cfg, store.target_length, store.num_classes), data, t, out, dist, info, resume)
    if r is None:
        return None
    return Outcome(_summary(cfg, t, store, info, r.test.metrics, len(data.test)) | _fit_fields(r, t), r.test)


def checkpoint_test_set(store: ClipStore, cfg: dict, state: dict) -> tuple[fd.ClipDataset, str, Task]:
    """For evaluate_checkpoint: the test clips a custom run held out (recomputed from its recorded
    seed and fractions, or its fold), where they are, and the task as the store defines it."""
    a = assign(store, cfg["seed"], cfg["valid_fraction"], cfg["test_fraction"])
    t = store_task(TASKS["custom"], store, a)
    if a.folds is not None:
        fold = state["fold"]
        return fd.ClipDataset(store, np.flatnonzero(a.folds == fold)), f"{store.path} fold {fold}", t
    return fd.ClipDataset(store, a.test), f"{store.path} ({a.source}, test part)", t
