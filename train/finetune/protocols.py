"""The task protocols: train on a train split and report test ("split"), or cross-validate over the
folds of one store ("cv"); the model each fold or split starts from, and what metrics.json holds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cache_tools.clips.store import ClipStore
from train.data import check_compatible
from train.finetune import data as fd
from train.finetune.augment import Augment, TrainClips
from train.finetune.config import FinetuneConfig
from train.finetune.engine import EvalResult, FitResult, Splits, fit
from train.finetune.split import require_counts
from train.finetune.tasks import Task
from train.model.checkpoint import load_encoder
from train.model.models_vit import build_encoder
from cache_tools.errors import ConfigError


@dataclass
class Outcome:
    """What a task driver hands back on the main rank: the metrics and the test scores behind them."""
    metrics: dict
    test: EvalResult


def build_model(cfg: FinetuneConfig, target_length: int, num_classes: int) -> torch.nn.Module:
    """AudioViT with a fresh `num_classes` head (trunc-normal std 2e-5), encoder from `cfg.init` or random."""
    torch.manual_seed(cfg.seed)                              # the head (and a random encoder) from the seed
    if cfg.init == "none":
        vit = build_encoder(cfg.model.encoder, cfg.model.encoder_depth, target_length=target_length,
                            num_classes=num_classes, drop_path_rate=cfg.model.drop_path)
    else:
        vit = load_encoder(cfg.init, target_length=target_length, drop_path_rate=cfg.model.drop_path)
    vit.reset_head(num_classes)                              # also drops the unused final norm (DDP)
    return vit


def augment(cfg: FinetuneConfig) -> Augment:
    return Augment(freqm=cfg.freqm, timem=cfg.timem, mixup=cfg.mixup, mixup_beta=cfg.mixup_beta,
                   roll_mag_aug=cfg.roll_mag_aug, wave_roll=cfg.wave_roll, noise=cfg.noise,
                   silence_crops=cfg.silence_crops)


def check_task_stores(task: Task, stores: Sequence[ClipStore]) -> None:
    """The stores fit together (classes, labels, input length) and fit the task."""
    check_compatible(stores)
    ref = stores[0]
    if ref.multilabel != task.multilabel:
        kind = "multi-label" if ref.multilabel else "single-label"
        raise ConfigError(f"{ref.path}: a {kind} store, but task {task.name} is not")
    if task.num_classes is not None and ref.num_classes != task.num_classes:
        raise ConfigError(f"{ref.path}: task {task.name} has {task.num_classes} classes, "
                            f"this store has {ref.num_classes}")
    require_counts(ref.label_counts(), ref.class_names, ref.path)   # a one-class store scores 1.0 on nothing


def _info(stores: Sequence[ClipStore]) -> dict:
    """What every checkpoint of the run records about its data (besides the config's paths)."""
    ref = stores[0]
    return {"class_names": ref.class_names, "target_length": ref.target_length,
            "norm": {"mean": ref.norm_mean, "std": ref.norm_std},      # the fbank normalisation it trained with
            "fingerprints": {"clips": {s.path.name: s.fingerprint for s in stores}}}


def _run_split(cfg: FinetuneConfig, task: Task, out: Path, dist, resume: bool) -> Outcome | None:
    """Train on the train store(s); report the last and (with a valid split) the best-on-valid model on test."""
    train_s = fd.open_stores(cfg.train_clips)
    test_s = fd.open_stores([cfg.test_clips])[0]
    valid_s = fd.open_stores([cfg.valid_clips])[0] if cfg.valid_clips else None
    every = train_s + [test_s] + ([valid_s] if valid_s else [])
    check_task_stores(task, every)
    ref = train_s[0]
    norm = (ref.norm_mean, ref.norm_std)
    data = Splits(TrainClips(train_s, None, augment(cfg), norm),
                  fd.ClipDataset(valid_s, norm=norm) if valid_s else None, fd.ClipDataset(test_s, norm=norm))
    info = _info(every)
    r = fit(cfg, build_model(cfg, ref.target_length, ref.num_classes), data, task, out, dist, info, resume)
    if r is None:
        return None
    return Outcome(_summary(cfg, task, ref, info, r.test.metrics, len(data.test)) | _fit_fields(r, task), r.test)


def _run_cv(cfg: FinetuneConfig, task: Task, out: Path, dist, resume: bool) -> Outcome | None:
    """For each fold, train on the other folds and test on it; mean and std over folds."""
    store = fd.open_stores(cfg.train_clips)[0]
    check_task_stores(task, [store])
    if store.folds is None:
        raise ConfigError(f"{store.path}: no `fold` dataset, so {task.name} cross-validation is impossible")
    folds_all = np.asarray(store.folds)
    folds = cfg.folds or sorted(int(f) for f in np.unique(folds_all))
    missing = [f for f in folds if not (folds_all == f).any()]
    if missing:
        raise ConfigError(f"{store.path}: folds {missing} hold no clips "
                            f"(stored folds: {sorted(set(folds_all.tolist()))})")
    info, per_fold, tests = _info([store]), [], []
    for k in folds:
        data = Splits(TrainClips([store], [np.flatnonzero(folds_all != k)], augment(cfg)),
                      None, fd.ClipDataset(store, np.flatnonzero(folds_all == k)))
        r = fit(cfg, build_model(cfg, store.target_length, store.num_classes), data, task, out / f"fold{k}",
                dist, {**info, "fold": k}, resume)
        if r is not None:
            per_fold.append({"fold": k, **r.test.metrics, "clips": len(data.test), "epoch": r.last_epoch,
                             **_best_over_epochs(r, task)})
            tests.append(r.test)
    if not dist.is_main:
        return None
    vals = np.array([f[task.metric] for f in per_fold])
    s = _summary(cfg, task, store, info, {task.metric: float(vals.mean())}, sum(f["clips"] for f in per_fold))
    s.update({"headline": "last", "selection": "last epoch", "folds": per_fold,
              "std": float(vals.std()), "evaluation": f"{len(folds)}-fold cross-validation",
              "last": {"epoch": cfg.epochs, "test": {task.metric: float(vals.mean())}}})
    best = [f["best_over_epochs"]["test"][task.metric] for f in per_fold if "best_over_epochs" in f]
    if len(best) == len(per_fold):           # AudioMAE's ESC-50 figure: each fold's max over epochs, averaged
        s["best_over_epochs"] = {"test": {task.metric: float(np.mean(best))}, "note": AUDIOMAE_PRINTS}
    scores, targets = (np.concatenate([getattr(t, a) for t in tests]) for a in ("scores", "targets"))
    return Outcome(s, EvalResult(s["test"], scores, targets))


def _summary(cfg: FinetuneConfig, task: Task, ref: ClipStore, info: dict, test: dict, num_test: int) -> dict:
    return {"task": task.name, "preset": cfg.preset, "init": cfg.init, "metric": task.metric,
            "score": test[task.metric], "test": test, "num_test_clips": int(num_test),
            "num_classes": ref.num_classes, "class_names": ref.class_names, "multilabel": ref.multilabel,
            "fingerprints": info["fingerprints"]}


AUDIOMAE_PRINTS = ("the best test score over the evaluated epochs, as AudioMAE prints it (max_mAP / max_accuracy): "
                   "it selects on the test set, so it is not the headline")


def _best_over_epochs(r: FitResult, task: Task) -> dict:
    """{"best_over_epochs": {epoch, test, note}} where the run scored the test set each evaluated epoch
    (tasks without a validation split, or with `test_each_epoch`); {} otherwise."""
    key = f"test_{task.metric}"
    scored = [(h[key], h["epoch"]) for h in r.history if key in h]
    if not scored:
        return {}
    value, epoch = max(scored, key=lambda t: (t[0], -t[1]))          # the first epoch reaching the max
    return {"best_over_epochs": {"epoch": epoch, "test": {task.metric: value}, "note": AUDIOMAE_PRINTS}}


def _fit_fields(r: FitResult, task: Task) -> dict:
    """The last and (with a validation split) the best-on-valid model: epoch, valid and test metrics;
    which one is the headline (`score`, `test`), and the per-epoch history."""
    valid = {h["epoch"]: {k[len("valid_"):]: v for k, v in h.items() if k.startswith("valid_")} for h in r.history}
    out = {"headline": r.headline, "last": {"epoch": r.last_epoch, "test": r.last.metrics}}
    if r.best is not None:
        out["last"]["valid"] = valid.get(r.last_epoch, {})
        out["best"] = {"epoch": r.best_epoch, "valid": valid[r.best_epoch], "test": r.best.metrics}
        out["valid"] = valid[r.best_epoch]
        out["selection"] = f"best valid {task.metric}"
    else:
        out["selection"] = "last epoch"
    out["selected_epoch"] = r.best_epoch if r.best is not None else r.last_epoch
    return out | _best_over_epochs(r, task) | {"history": r.history, "train_seconds": r.train_seconds}
