"""Fine-tuning on the registry's tasks (train/tasks.py): the config and the task drivers.

    cfg = load_finetune_config("spc2-mini", ["init=latest", "stores=data/stores"], task="spc2")
    metrics = run_finetune(cfg)              # writes <run_dir>/<name>/, returns what metrics.json holds
    metrics = run_finetune(cfg, resume=True) # continues a killed run from its last epoch (<run>/last.pt)

The encoder comes from `init` (our pretraining checkpoint or AudioMAE's pretrained.pth /
finetuned.pth), or is randomly initialised (`none`); on top of it: mean pool, fc_norm and a linear
head (AudioViT.forward). A task trains on its train split and reports its test split (protocol
"split"), or cross-validates over the folds of its one store (protocol "cv", ESC-50). The loop is
train/engine_finetune.py, the training clips' augmentation train/augment.py.

metrics.json reports the last epoch's model on the test set, and where the task has a validation
split (SPC-1, SPC-2) also the model of the best validation epoch; that one is the headline (`score`)
then, else the last epoch is (AS-2M, AS-20K: no validation split; ESC-50: the last epoch per fold).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from cache_tools.clip_store import ClipStore
from cache_tools.errors import SupmamError
from train import distributed, finetune_data as fd, report
from train.augment import Augment, TrainClips
from train.checkpoint import load_encoder
from train.config import (AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT, UNIT_OPEN, ConfigError, EncoderSize, Range,
                          RunConfig, check_ranges, load_config, preset_value, to_dict)
from train.engine_finetune import EvalResult, FitResult, Splits, fit
from train.models_vit import build_encoder
from train.run_folder import claim
from train.tasks import TASKS, Task, TaskName


class FinetuneError(SupmamError):
    pass


@dataclass
class FinetuneModel:
    """The encoder; with an `init` checkpoint its sizes come from the file, not from here."""
    encoder: EncoderSize = "base"
    encoder_depth: int | None = None   # None: the size's 12 blocks
    drop_path: float = 0.1

    RANGES = {"encoder_depth": AT_LEAST_1, "drop_path": UNIT_OPEN}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class FinetuneConfig(RunConfig):
    task: TaskName = "spc2"
    init: str = "latest"             # checkpoint path, "latest" (<run_dir>/latest-pretrain) or "none"
    # data: clip store paths; empty = the task's stores (train/tasks.py) under `stores`
    train_clips: list[str] = field(default_factory=list)
    valid_clips: str = ""            # stays empty where the task has no validation split
    test_clips: str = ""             # stays empty for cross-validated tasks (ESC-50)
    folds: list[int] = field(default_factory=list)   # cross-validation folds (empty: every stored fold)
    model: FinetuneModel = field(default_factory=FinetuneModel)
    # optimisation (batch_size, blr, epochs, ... in RunConfig)
    epoch_len: int = 0               # clips per epoch for the weighted sampler (0 = all clips)
    min_lr: float = 1e-6
    warmup_epochs: float = 4.0
    weight_decay: float = 1e-4
    layer_decay: float = 0.75
    # augmentation / loss (the training clips' augmentation: train/augment.py, in AudioMAE's order)
    mask_t_prob: float = 0.2         # SpecAugment as token masking (the paper: 0.2 time, 0.2 frequency)
    mask_f_prob: float = 0.2
    freqm: int = 0                   # torchaudio fbank masking on training clips, max widths in mel bins /
    timem: int = 0                   # frames, at most the axis (refused otherwise); 0 = off
    mixup: float = 0.0               # probability a training clip's WAVE is mixed with a partner drawn from
    mixup_beta: float = 10.0         # the whole training set, lambda ~ Beta(10, 10) (AudioMAE dataset.py)
    roll_mag_aug: bool = False       # gain Beta(10, 10) + 0.5 on the wave (AudioMAE's roll_mag_aug as it runs)
    wave_roll: bool = False          # with roll_mag_aug, also the circular roll AudioMAE intends (a no-op there)
    noise: bool = False              # AudioMAE / AST `noise`: + U(0,1)/10 * rand on the normalised fbank, time roll
    silence_crops: bool = False      # SPC-1: `_silence_` clips are random 1 s crops of their background recording
    weighted_sampler: bool = False   # class-balanced draws (AudioMAE's gen_weight.py weights)
    sampler_replacement: bool = False   # weighted draws with replacement
    loss: Literal["auto", "bce", "ce"] = "auto"   # auto: BCE for multi-label, CE for single-label
    label_smoothing: float = 0.0     # CE only
    # evaluation
    eval_batch_size: int = 64
    eval_every: int = 1              # epochs between evaluations (the last epoch always evaluates)

    RANGES = {"epoch_len": AT_LEAST_0, "layer_decay": Range(0, 1, lo_open=True), "mask_t_prob": UNIT_OPEN,
              "mask_f_prob": UNIT_OPEN, "freqm": AT_LEAST_0, "timem": AT_LEAST_0, "mixup": UNIT,
              "mixup_beta": POSITIVE, "label_smoothing": UNIT_OPEN, "eval_batch_size": AT_LEAST_1,
              "eval_every": AT_LEAST_1, "folds": AT_LEAST_0}


@dataclass
class Outcome:
    """What a task driver hands back on the main rank: the metrics and the test scores behind them."""
    metrics: dict
    test: EvalResult


def load_finetune_config(preset: str | None = None, overrides: Sequence[str] = (),
                         task: str | None = None) -> FinetuneConfig:
    """FinetuneConfig from configs/finetune/<preset>.toml (default: the task's preset) and overrides,
    with the data, the init checkpoint and the run name resolved: what the run records."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    cfg = load_config(_config_class(preset or task, overrides, task), preset or task, list(overrides),
                      kind="finetune")
    if task is not None and cfg.task != task:
        raise ConfigError(f"preset {preset!r} is for task {cfg.task!r}, not {task!r}")
    t = TASKS[cfg.task]
    under = lambda name: str(Path(cfg.stores) / name) if name else ""          # noqa: E731
    init = resolve_init(cfg.init, cfg.run_dir)
    return dataclasses.replace(
        cfg, train_clips=cfg.train_clips or [under(n) for n in t.train], valid_clips=cfg.valid_clips or under(t.valid),
        test_clips=cfg.test_clips or under(t.test), init=str(init) if init else "none",
        name=cfg.name or f"finetune-{Path(cfg.preset).stem or cfg.task}-{init_tag(init)}")


def _config_class(preset: str | None, overrides: Sequence[str], task: str | None) -> type[FinetuneConfig]:
    """FinetuneConfig, or for the `custom` task its subclass with the split keys (train/custom.py)."""
    named = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "task"]
    name = named[-1] if named else (preset_value(preset, "finetune", "task") if preset else task)
    if name == "custom":
        from train.custom import CustomFinetuneConfig
        return CustomFinetuneConfig
    return FinetuneConfig


def resolve_init(init: str, runs: str | Path) -> Path | None:
    """`none` -> None (random init); `latest` -> the path in runs/latest-pretrain; else a checkpoint path."""
    if init.lower() == "none":
        return None
    if init == "latest":
        marker = Path(runs) / "latest-pretrain"
        if not marker.exists():
            raise FinetuneError(f"--init latest: {marker} does not exist, so there is no pretraining checkpoint "
                                "yet. Run `make pretrain` first, or pass --init PATH (ours or AudioMAE's "
                                "pretrained.pth), or --init none to fine-tune from random weights.")
        text = marker.read_text().strip()
        path = Path(text)
        if not path.exists() and (Path(runs).parent / text).exists():
            path = Path(runs).parent / text
        if not path.exists():
            raise FinetuneError(f"--init latest: {marker} points at {text}, which does not exist; "
                                "run `make pretrain` again or pass --init PATH")
        return path
    path = Path(init)
    if not path.exists():
        raise FinetuneError(f"{init}: init checkpoint not found")
    return path


def init_tag(init: Path | None) -> str:
    """A run-name tag for an init checkpoint: "scratch", its run folder, or its file stem."""
    if init is None:
        return "scratch"
    return init.parent.name if init.stem in ("checkpoint", "checkpoint-final") else init.stem


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


def run_finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Fine-tune and evaluate `cfg.task`; writes <run_dir>/<name>/ and returns the metrics
    (on the main rank; other ranks return {}). `resume`: continue from the run's last.pt files. A run
    folder holding a checkpoint is refused unless `resume` or `overwrite` (train.run_folder)."""
    task = TASKS[cfg.task]
    dist = distributed.init_distributed(cfg.device)
    claim(Path(cfg.run_dir) / cfg.name, resume=resume, overwrite=overwrite, is_main=dist.is_main)
    if dist.device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // dist.world_size))
    out = Path(cfg.run_dir) / cfg.name
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"config": to_dict(cfg), "derived": {"lr": cfg.lr, "world_size": dist.world_size}}
        (out / "config.json").write_text(json.dumps(meta, indent=2))
    if task.protocol == "store":                             # your own data: train/custom.py
        from train.custom import run_custom
        outcome = run_custom(cfg, task, out, dist, resume)
    else:
        outcome = (_run_cv if task.protocol == "cv" else _run_split)(cfg, task, out, dist, resume)
    if outcome is not None:
        report.write_report(out, outcome.metrics, outcome.test.scores, outcome.test.targets)
    distributed.cleanup()
    return outcome.metrics if outcome is not None else {}


def check_stores(task: Task, stores: Sequence[ClipStore]) -> None:
    """The stores fit together (classes, labels, input length) and fit the task."""
    fd.check_compatible(stores)
    ref = stores[0]
    if ref.multilabel != task.multilabel:
        kind = "multi-label" if ref.multilabel else "single-label"
        raise FinetuneError(f"{ref.path}: a {kind} store, but task {task.name} is not")
    if task.num_classes is not None and ref.num_classes != task.num_classes:
        raise FinetuneError(f"{ref.path}: task {task.name} has {task.num_classes} classes, "
                            f"this store has {ref.num_classes}")


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
    check_stores(task, every)
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
    check_stores(task, [store])
    if store.folds is None:
        raise FinetuneError(f"{store.path}: no `fold` dataset, so {task.name} cross-validation is impossible")
    folds_all = np.asarray(store.folds)
    folds = cfg.folds or sorted(int(f) for f in np.unique(folds_all))
    missing = [f for f in folds if not (folds_all == f).any()]
    if missing:
        raise FinetuneError(f"{store.path}: folds {missing} hold no clips "
                            f"(stored folds: {sorted(set(folds_all.tolist()))})")
    info, per_fold, tests = _info([store]), [], []
    for k in folds:
        data = Splits(TrainClips([store], [np.flatnonzero(folds_all != k)], augment(cfg)),
                      None, fd.ClipDataset(store, np.flatnonzero(folds_all == k)))
        r = fit(cfg, build_model(cfg, store.target_length, store.num_classes), data, task, out / f"fold{k}",
                dist, {**info, "fold": k}, resume)
        if r is not None:
            per_fold.append({"fold": k, **r.test.metrics, "clips": len(data.test), "epoch": r.last_epoch})
            tests.append(r.test)
    if not dist.is_main:
        return None
    vals = np.array([f[task.metric] for f in per_fold])
    s = _summary(cfg, task, store, info, {task.metric: float(vals.mean())}, sum(f["clips"] for f in per_fold))
    s.update({"headline": "last", "selection": "last epoch", "folds": per_fold,
              "std": float(vals.std()), "evaluation": f"{len(folds)}-fold cross-validation",
              "last": {"epoch": cfg.epochs, "test": {task.metric: float(vals.mean())}}})
    scores, targets = (np.concatenate([getattr(t, a) for t in tests]) for a in ("scores", "targets"))
    return Outcome(s, EvalResult(s["test"], scores, targets))


def _summary(cfg: FinetuneConfig, task: Task, ref: ClipStore, info: dict, test: dict, num_test: int) -> dict:
    return {"task": task.name, "preset": cfg.preset, "init": cfg.init, "metric": task.metric,
            "score": test[task.metric], "test": test, "num_test_clips": int(num_test),
            "num_classes": ref.num_classes, "class_names": ref.class_names, "multilabel": ref.multilabel,
            "fingerprints": info["fingerprints"]}


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
    return out | {"history": r.history, "train_seconds": r.train_seconds}
