"""Linear probe: a frozen encoder's features, computed once and cached, and a linear (or one-hidden-
layer) head trained on them, with lr / weight decay / steps chosen on a validation part.

Test sets are fine-tuning's. The settings are chosen on the valid store where the task has one,
else on a seeded stratified part of the training clips (ESC-50: the fold after the test fold),
and the chosen head is then refit on all training clips. The encoder is never trained: its
weights' sha256 is taken before the features and checked after the heads.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from cache_tools.clips.store import ClipStore
from cache_tools.errors import ConfigError
from train.finetune import data as fd, report
from train.model.checkpoint import load_encoder
from train.config import (AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT_OPEN, EncoderSize, Range, check_ranges, load_config,
                          to_dict)
from train.finetune.custom import store_task
from train.finetune.split import assign, hold_out
from train.distributed import resolve_device
from train.finetune.config import init_tag, resolve_init
from train.data import check_compatible
from train.finetune.protocols import check_task_stores
from train.finetune.metrics import task_metrics
from train.model.models_vit import build_encoder
from train.use.features import cached_features, weights_sha256
from train.probe.head import HeadSpec, fit_and_score, select
from train.finetune.tasks import TASKS, Task, TaskName
from train.run_folder import check_resume_config, claimed


@dataclass
class ProbeConfig:
    task: TaskName = "esc50"
    ckpt: str = "latest"             # checkpoint, "latest" (<run_dir>/latest-pretrain) or "none" (random)
    stores: str = "data/stores"      # the task's stores are looked up here
    train_clips: list[str] = field(default_factory=list)   # empty: the task's; custom: --clips X.h5
    valid_clips: str = ""
    test_clips: str = ""
    run_dir: str = "runs"
    name: str = ""                   # "" = probe-<task>-<ckpt>-<head> (custom: probe-custom-<store>-...)
    cache_dir: str = ""              # "" = <run_dir>/probe-cache
    device: str = "auto"
    seed: int = 0
    encoder: EncoderSize = "base"    # ckpt "none" only: a seeded random encoder of this size
    encoder_depth: int | None = None
    layer: int = -1                  # block index as in embed: 0 = the first, -1 = the last (then the final norm)
    pooling: Literal["mean", "cls"] = "mean"
    head: Literal["linear", "mlp"] = "linear"
    hidden: int = 512                # mlp only
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-3, 1e-2, 1e-1])
    steps: int = 500                 # updates per head; the best step (every eval_every) is chosen too
    eval_every: int = 25
    batch_size: int = 4096           # full batch up to this many training clips
    embed_batch_size: int = 64
    valid_fraction: float = 0.1      # inner validation part where a task has none
    test_fraction: float = 0.2       # custom stores with neither split column nor folds
    folds: list[int] = field(default_factory=list)          # cv: test folds (empty: every stored fold)

    RANGES = {"encoder_depth": AT_LEAST_1, "hidden": AT_LEAST_1, "lrs": POSITIVE,
              "weight_decays": AT_LEAST_0, "steps": AT_LEAST_1, "eval_every": AT_LEAST_1, "batch_size": AT_LEAST_1,
              "embed_batch_size": AT_LEAST_1, "valid_fraction": UNIT_OPEN,
              "test_fraction": Range(0, 1, lo_open=True, hi_open=True), "folds": AT_LEAST_0}

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class Round:
    name: str                        # "test" or "fold<k>"
    train: np.ndarray                # indices into the probe's feature matrix
    valid: np.ndarray
    test: np.ndarray
    refit: bool                      # valid was carved from the training clips: refit on train + valid
    fold: int | None = None


def load_probe_config(overrides: Sequence[str] = ()) -> ProbeConfig:
    """ProbeConfig from key=value overrides, with the stores, checkpoint and run name resolved."""
    cfg = load_config(ProbeConfig, None, list(overrides))
    t = TASKS[cfg.task]
    under = lambda n: str(Path(cfg.stores) / n) if n else ""                   # noqa: E731
    init = resolve_init(cfg.ckpt, cfg.run_dir)
    train = cfg.train_clips or [under(n) for n in t.train]
    data = cfg.task if t.protocol != "store" else f"{cfg.task}-{Path(train[0]).stem}"     # custom: + the store
    return dataclasses.replace(
        cfg, train_clips=train, valid_clips=cfg.valid_clips or under(t.valid),
        test_clips=cfg.test_clips or under(t.test), ckpt=str(init) if init else "none",
        name=cfg.name or f"probe-{data}-{init_tag(init)}-{cfg.head}",
        cache_dir=cfg.cache_dir or str(Path(cfg.run_dir) / "probe-cache"))


def build_frozen_encoder(cfg: ProbeConfig, target_length: int) -> torch.nn.Module:
    if cfg.ckpt == "none":
        torch.manual_seed(cfg.seed)
        vit = build_encoder(cfg.encoder, cfg.encoder_depth, target_length=target_length)
    else:
        vit = load_encoder(cfg.ckpt, target_length=target_length)
    vit.requires_grad_(False)
    return vit.eval()


def open_data(cfg: ProbeConfig) -> tuple[list[ClipStore], Task, list[Round]]:
    """The stores the task reads, the task (custom: as its store defines it) and the probe's rounds,
    with indices into the stores' clips concatenated in order."""
    t = TASKS[cfg.task]
    if t.protocol == "split":
        train = fd.open_stores(cfg.train_clips)
        extra = fd.open_stores([cfg.valid_clips] if cfg.valid_clips else []) + fd.open_stores([cfg.test_clips])
        stores = train + extra
        check_task_stores(t, stores)
        n_train = sum(len(s) for s in train)
        start = np.cumsum([0] + [len(s) for s in stores])
        parts = [np.arange(start[k], start[k + 1]) for k in range(len(stores))]
        valid = parts[len(train)] if cfg.valid_clips else None
        return stores, t, [_round(cfg, "test", np.arange(n_train), valid, parts[-1], _labels(stores))]
    if len(cfg.train_clips) != 1:
        raise ConfigError(f"{', '.join(cfg.train_clips)}: task {t.name} reads one clip store")
    store = fd.open_stores(cfg.train_clips)[0]
    a = None
    if t.protocol == "store":
        a = assign(store, cfg.seed, cfg.valid_fraction, cfg.test_fraction)
        t = store_task(t, store, a)
        for note in a.notes:
            print(f"[probe] {store.path}: note: {note}", flush=True)
    check_task_stores(t, [store])
    folds = store.folds if a is None else a.folds
    if folds is None and t.protocol == "cv":
        raise ConfigError(f"{store.path}: no `fold` dataset, so {t.name} cross-validation is impossible")
    if folds is None:
        return [store], t, [_round(cfg, "test", a.train, a.valid if len(a.valid) else None, a.test, store.labels)]
    return [store], t, _fold_rounds(cfg, np.asarray(folds), store)


def _round(cfg: ProbeConfig, name: str, train: np.ndarray, valid: np.ndarray | None, test: np.ndarray,
           labels: np.ndarray) -> Round:
    if valid is not None:
        return Round(name, train, valid, test, refit=False)
    train, valid = hold_out(train, labels, cfg.valid_fraction, cfg.seed, [])
    return Round(name, train, valid, test, refit=True)


def _fold_rounds(cfg: ProbeConfig, folds: np.ndarray, store: ClipStore) -> list[Round]:
    stored = sorted(int(f) for f in np.unique(folds))
    missing = [k for k in cfg.folds if k not in stored]
    if missing or len(stored) < 3:
        raise ConfigError(f"{store.path}: folds {missing or stored} cannot be probed (stored folds {stored}; the "
                         "probe needs three or more: test, inner validation, training)")
    rounds = []
    for k in cfg.folds or stored:
        inner = stored[(stored.index(k) + 1) % len(stored)]                  # the fold after k
        rounds.append(Round(f"fold{k}", np.flatnonzero((folds != k) & (folds != inner)),
                            np.flatnonzero(folds == inner), np.flatnonzero(folds == k), refit=True, fold=k))
    return rounds


def _labels(stores: list[ClipStore]) -> np.ndarray:
    return np.concatenate([np.asarray(s.labels) for s in stores])               # [N] | [N, C]


def _spec(cfg: ProbeConfig, t: Task) -> HeadSpec:
    return HeadSpec(cfg.head, cfg.hidden, tuple(cfg.lrs), tuple(cfg.weight_decays), cfg.steps, cfg.eval_every,
                    cfg.batch_size, t.multilabel, cfg.seed)


def run_probe(cfg: ProbeConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Features (cached), heads, test scores, reports in <run_dir>/<name>/; returns metrics.json's content.
    One writer per run folder, and fine-tuning's rule (train.run_folder): a folder holding a probe's
    results is refused unless `overwrite` (replace them) or `resume` (the same settings: run again,
    features from the cache)."""
    out = Path(cfg.run_dir) / cfg.name
    with claimed(out, "probe", resume=resume, overwrite=overwrite):
        if resume:
            check_resume_config(out, to_dict(cfg), "probe")
        return _run_probe(cfg, out)


def _run_probe(cfg: ProbeConfig, out: Path) -> dict:
    t_start = time.time()
    stores, t, rounds = open_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    check_compatible(stores)
    device = resolve_device(cfg.device)
    vit = build_frozen_encoder(cfg, stores[0].target_length).to(device)
    before = weights_sha256(vit)
    (out / "config.json").write_text(json.dumps({"config": to_dict(cfg), "encoder_sha256": before}, indent=2))
    feats, caches = zip(*(cached_features(vit, before, s, cfg.layer, cfg.pooling, Path(cfg.cache_dir), device,
                                          cfg.embed_batch_size) for s in stores))
    X, Y = np.concatenate(feats), _labels(stores)                              # [N, D], [N] | [N, C]
    t_heads = time.time()
    spec, results = _spec(cfg, t), []
    for r in rounds:
        sweep = select(X[r.train], Y[r.train], X[r.valid], Y[r.valid], stores[0].num_classes, spec, device)
        fit = np.concatenate([r.train, r.valid]) if r.refit else r.train
        scores = fit_and_score(X[fit], Y[fit], X[r.test], sweep.best, stores[0].num_classes, spec, device)
        results.append((r, sweep, scores, Y[r.test]))
    head_seconds = time.time() - t_heads
    after = weights_sha256(vit)
    if after != before:
        raise ConfigError(f"{cfg.ckpt}: the encoder's weights changed during the probe (sha256 {before[:16]} -> "
                         f"{after[:16]}); the probe must leave the encoder frozen")
    m = _metrics(cfg, t, stores, results)
    m["probe"] = {"head": cfg.head, "layer": cfg.layer, "pooling": cfg.pooling, "encoder_sha256": before,
                  "encoder_unchanged": True, "features": list(caches), "feature_dim": int(X.shape[1]),
                  "embed_seconds": round(sum(c["seconds"] for c in caches), 3),
                  "head_seconds": round(head_seconds, 3), "total_seconds": round(time.time() - t_start, 3)}
    scores, targets = (np.concatenate([x[k] for x in results]) for k in (2, 3))
    report.write_report(out, m, scores, targets)
    (out / "results.md").write_text(results_md(m))
    return m


def _metrics(cfg: ProbeConfig, t: Task, stores: list[ClipStore], results: list) -> dict:
    ref = stores[0]
    per_round = [{"round": r.name, **({"fold": r.fold} if r.fold is not None else {}),
                  **task_metrics(s, y, t.multilabel), "clips": len(r.test), "chosen": vars(sw.best),
                  "refit_on_train_and_valid": r.refit, "sweep": sw.table} for r, sw, s, y in results]
    m = {"task": t.name, "preset": f"probe-{cfg.head}", "ckpt": cfg.ckpt, "metric": t.metric,
         "num_test_clips": sum(len(r.test) for r, *_ in results), "num_classes": ref.num_classes,
         "class_names": ref.class_names, "multilabel": ref.multilabel,
         "fingerprints": {"clips": {s.path.name: s.fingerprint for s in stores}}, "rounds": per_round,
         "selection": "lr, weight decay and steps chosen on the validation part"}
    if len(results) == 1 and results[0][0].fold is None:
        m["test"] = {k: v for k, v in per_round[0].items() if k in ("mAP", "AUC", "accuracy")}
        m["score"] = m["test"][t.metric]
    else:
        vals = np.array([r[t.metric] for r in per_round])
        m.update(score=float(vals.mean()), std=float(vals.std()), test={t.metric: float(vals.mean())},
                 folds=[{"fold": r["fold"], t.metric: r[t.metric], "clips": r["clips"]} for r in per_round],
                 evaluation=f"{len(per_round)}-fold cross-validation")
    if t.name == "custom":
        m["split"] = assign(ref, cfg.seed, cfg.valid_fraction, cfg.test_fraction).record()
    return m


def results_md(m: dict) -> str:
    """The fine-tuning report's table under a probe title, then the chosen head settings per round."""
    p = m["probe"]
    lines = [report.results_table(m, title=f"Linear probe ({p['head']})").rstrip(), "",
             f"Frozen encoder `{m['ckpt']}`, sha256 {p['encoder_sha256'][:16]}... unchanged after the run; "
             f"features: layer {p['layer']}, {p['pooling']} pooling, {p['feature_dim']} dims "
             f"({'cached' if all(c['hit'] for c in p['features']) else 'computed'}: {p['embed_seconds']:.1f} s); "
             f"heads {p['head_seconds']:.1f} s.", "",
             "| round | lr | weight decay | steps | valid | test | refit on train + valid |",
             "|---|---|---|---|---|---|---|"]
    for r in m["rounds"]:
        c = r["chosen"]
        lines.append(f"| {r['round']} | {c['lr']:g} | {c['weight_decay']:g} | {c['steps']} | {c['valid']:.4f} | "
                     f"{r[m['metric']]:.4f} | {'yes' if r['refit_on_train_and_valid'] else 'no'} |")
    return "\n".join(lines) + "\n"
