"""Fine-tuning on AS-2M, AS-20K, ESC-50, SPC-1 and SPC-2: config, the training loop, task drivers.

    run_finetune("spc2", "spc2-mini", init="latest", stores="data/stores", runs="runs")

The encoder comes from `--init` (our pretraining checkpoint or AudioMAE's pretrained.pth /
finetuned.pth), or is randomly initialised (`none`); on top of it: mean pool, fc_norm and a linear
head (AudioViT.forward_pooled). Recipe as AudioMAE's fine-tuning: AdamW with layer-wise lr decay,
linear warmup + half-cycle cosine, SpecAugment as token-level time/frequency masking, mixup and
the class-balanced sampler for AudioSet, BCE for multi-label, CE for single-label.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader

from train import distributed, finetune_data as fd, report
from train.data import worker_init
from train.checkpoint import load_encoder, save_checkpoint
from train.config import ConfigError, load_config, to_dict
from train.evaluate import describe, evaluate_dataset
from train.lr_sched import build_scheduler
from train.metrics import primary_metric

Task = Literal["as2m", "as20k", "esc50", "spc1", "spc2"]
TASKS = ("as2m", "as20k", "esc50", "spc1", "spc2")


class FinetuneError(RuntimeError):
    pass


@dataclass
class FinetuneConfig:
    task: Task = "spc2"
    # data: clip-store file names under --stores
    train_stores: list[str] = field(default_factory=list)
    valid_store: str = ""            # "" = no validation split: the last model is the one reported
    test_store: str = ""             # ESC-50: empty, the held-out fold is the test set
    folds: list[int] = field(default_factory=list)   # ESC-50 cross-validation folds
    # model; with --init the encoder's sizes are read from the checkpoint, not from here
    model: Literal["vit_tiny", "vit_small", "vit_base"] = "vit_base"
    depth: int | None = None
    drop_path: float = 0.1
    # optimisation
    epochs: int = 60
    epoch_len: int = 0               # clips per epoch for the weighted sampler (0 = all clips)
    batch_size: int = 32             # global, over all ranks
    blr: float = 1e-3                # lr = blr * batch_size / 256 unless lr is set
    lr: float | None = None
    min_lr: float = 1e-6
    warmup_epochs: float = 4.0
    weight_decay: float = 1e-4
    layer_decay: float = 0.75
    clip_grad: float | None = None
    # augmentation / loss
    mask_t_prob: float = 0.2         # SpecAugment as token masking (the paper: 0.2 time, 0.2 frequency)
    mask_f_prob: float = 0.2
    freqm: int = 0                   # torchaudio fbank masking on training clips, max widths in mel bins /
    timem: int = 0                   # frames (AudioMAE's and AST's datasets: 48 / 192); 0 = off
    mixup: float = 0.0               # probability a clip is mixed with another (AudioMAE: 0.5 on AudioSet)
    mixup_beta: float = 10.0         # lambda ~ Beta(10, 10) as in AST / AudioMAE
    weighted_sampler: bool = False
    loss: Literal["auto", "bce", "ce"] = "auto"   # auto: BCE for multi-label, CE for single-label
    label_smoothing: float = 0.0     # CE only
    # run
    seed: int = 0
    num_workers: int = 4
    eval_batch_size: int = 64
    eval_every: int = 1              # epochs between evaluations (the last epoch always evaluates)
    log_every: int = 20              # steps between log lines
    amp: bool = True                 # bf16 autocast on CUDA; ignored on CPU


class PooledClassifier(torch.nn.Module):
    """forward(x[B,1,T,F]) -> logits [B,C] via AudioViT.forward_pooled (so DDP sees a plain forward)."""

    def __init__(self, vit: torch.nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0) -> torch.Tensor:
        return self.vit.forward_pooled(x, mask_t_prob=mask_t_prob, mask_f_prob=mask_f_prob)


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
        raise FinetuneError(f"--init {init}: checkpoint not found")
    return path


def build_model(cfg: FinetuneConfig, init: Path | None, target_length: int, num_classes: int) -> torch.nn.Module:
    """AudioViT with a fresh `num_classes` head, encoder from `init` or random."""
    from train import models_vit
    torch.manual_seed(cfg.seed)                              # the head (and a random encoder) from the seed
    if init is None:
        factory = getattr(models_vit, cfg.model)
        vit = factory(depth=cfg.depth, target_length=target_length, num_classes=num_classes,
                      drop_path_rate=cfg.drop_path)
        vit.reset_head(num_classes)                          # also drops the unused final norm (DDP)
    else:
        vit = load_encoder(init, target_length=target_length, drop_path_rate=cfg.drop_path)
        vit.reset_head(num_classes)
    return vit                                               # reset_head: trunc-normal std 2e-5 head


def _loss_fn(cfg: FinetuneConfig, multilabel: bool):
    kind = cfg.loss if cfg.loss != "auto" else ("bce" if multilabel else "ce")
    if kind == "bce":
        return kind, torch.nn.BCEWithLogitsLoss()
    if multilabel:
        raise ConfigError(f"loss=ce cannot train the multi-label task {cfg.task}; use bce")
    return kind, torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def fit(cfg: FinetuneConfig, vit: torch.nn.Module, train_ds, valid_ds, test_ds, num_classes: int,
        multilabel: bool, out: Path, dist: distributed.DistInfo, meta: dict) -> dict:
    """Train `vit` on train_ds; select on valid_ds (or take the last model); report on test_ds."""
    torch.manual_seed(cfg.seed + dist.rank)
    rng = np.random.default_rng(cfg.seed + dist.rank)                        # mixup draws
    device, metric = dist.device, primary_metric(multilabel)
    sampler = fd.train_sampler(train_ds, cfg.weighted_sampler, cfg.epoch_len, cfg.seed, dist.rank, dist.world_size)
    per_rank = max(1, cfg.batch_size // dist.world_size)
    loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=len(sampler) >= 2 * per_rank, worker_init_fn=worker_init,
                        persistent_workers=cfg.num_workers > 0)
    vit.to(device)
    model = distributed.wrap_ddp(PooledClassifier(vit), dist)
    groups = param_groups_layer_decay(vit, cfg.weight_decay, no_weight_decay_list=vit.no_weight_decay(),
                                      layer_decay=cfg.layer_decay)
    lr = cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256
    optimizer = torch.optim.AdamW(groups, lr=lr)
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    sched = build_scheduler(optimizer, total, min(total, round(cfg.warmup_epochs * steps_per_epoch)), cfg.min_lr)
    loss_kind, criterion = _loss_fn(cfg, multilabel)
    amp = cfg.amp and device.type == "cuda"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "w") if dist.is_main else None           # training steps
    evlog = open(out / "eval.jsonl", "w") if dist.is_main else None        # evaluations
    if dist.is_main:
        print(f"[finetune] {cfg.task}: {len(train_ds)} training clips, lr {lr:.3g} (blr {cfg.blr} x batch "
              f"{cfg.batch_size} / 256), {steps_per_epoch} steps/epoch x {cfg.epochs} epochs, init {meta['init']}",
              flush=True)
    best, best_epoch, best_state, history = -math.inf, -1, None, []
    step, t0 = 0, time.time()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            sched.step_update(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)   # [B,1,T,F], [B,C]|[B]
            if loss_kind == "bce" or cfg.mixup > 0:
                y = fd.soft_targets(y, num_classes)                                     # [B, C]
            x, y = fd.mixup(x, y, cfg.mixup, cfg.mixup_beta, rng)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x, cfg.mask_t_prob, cfg.mask_f_prob)                    # [B, C]
            loss = criterion(logits.float(), y)
            if not math.isfinite(loss.item()):
                raise FinetuneError(f"loss is {loss.item()} at step {step} (epoch {epoch}); stopping")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            step += 1
            if step == 1 or step % cfg.log_every == 0 or step == total:
                loss_mean = distributed.all_reduce_mean(loss.detach()).item()
                elapsed = time.time() - t0
                _log(log, {"step": step, "epoch": step / steps_per_epoch, "loss": loss_mean,
                           "lr": max(g["lr"] for g in optimizer.param_groups),
                           "clips_per_s": step * cfg.batch_size / max(elapsed, 1e-9)})
        if (epoch + 1) % cfg.eval_every and epoch + 1 < cfg.epochs:
            continue
        if dist.is_main:                                  # evaluation runs on rank 0 only
            sel_name, sel_ds = ("valid", valid_ds) if valid_ds is not None else ("test", test_ds)
            m, _, _ = evaluate_dataset(vit, sel_ds, multilabel, device, cfg.eval_batch_size, amp)
            history.append({"epoch": epoch + 1, **{f"{sel_name}_{k}": v for k, v in m.items()}})
            _log(evlog, {"step": step, **history[-1]})
            improved = valid_ds is None or m[metric] > best
            if improved:
                best, best_epoch = m[metric], epoch + 1
                best_state = copy.deepcopy({k: v.cpu() for k, v in vit.state_dict().items()})
            state = {"model": vit.state_dict(), "model_args": describe(vit), "optimizer": optimizer.state_dict(),
                     "epoch": epoch + 1, "step": step, "config": to_dict(cfg), "kind": "finetune",
                     "rng": _rng_state(rng), "fingerprints": meta.get("fingerprints", {}),
                     "metric": {metric: m[metric]}, **_info(meta)}
            if improved:
                save_checkpoint(out / "checkpoint.pt", state)
            if epoch + 1 == cfg.epochs:
                save_checkpoint(out / "checkpoint-final.pt", state)
        distributed.barrier()
    result: dict = {}
    if dist.is_main:
        if best_state is not None:
            vit.load_state_dict(best_state)
        test_m, scores, targets = evaluate_dataset(vit, test_ds, multilabel, device, cfg.eval_batch_size, amp)
        result = {"test": test_m, "selected_epoch": best_epoch, "history": history,
                  "selection": "best valid " + metric if valid_ds is not None else "last epoch",
                  "scores": scores, "targets": targets, "train_seconds": round(time.time() - t0, 1)}
        if valid_ds is not None:
            result["valid"] = {metric: best}
        _log(evlog, {"step": step, "epoch": cfg.epochs, "final": True, **{f"test_{k}": v for k, v in test_m.items()}})
        log.close()
        evlog.close()
    distributed.barrier()
    return result


def _rng_state(rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy_mixup": rng.bit_generator.state}


def _info(meta: dict) -> dict:
    return {k: meta[k] for k in ("init", "class_names", "target_length", "fold", "norm") if k in meta}


def _log(fh, rec: dict) -> None:
    if fh is not None:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()
        print(json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------------- task drivers

def run_finetune(task: str, preset: str | None = None, init: str = "latest", stores: str | Path = "data/stores",
                 runs: str | Path = "runs", name: str | None = None, overrides: Sequence[str] = (),
                 device: str = "cpu") -> dict:
    """Fine-tune and evaluate one task; writes runs/<name>/ and returns the metrics dict."""
    if task not in TASKS:
        raise FinetuneError(f"unknown task {task!r}; choose one of {TASKS}")
    cfg = load_config(FinetuneConfig, preset or task, list(overrides), kind="finetune")
    if cfg.task != task:
        raise ConfigError(f"preset {preset!r} is for task {cfg.task!r}, not {task!r}")
    init_path = resolve_init(init, runs)
    dist = distributed.init_distributed(device)
    if dist.device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // dist.world_size))
    name = name or f"finetune-{preset or task}-{_init_tag(init_path)}"
    out = Path(runs) / name
    meta = {"task": task, "preset": preset or task, "init": str(init_path) if init_path else "none",
            "stores": str(stores)}
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**to_dict(cfg), **meta, "world_size": dist.world_size}, indent=2))
    if task == "esc50":
        metrics = _run_cv(cfg, init_path, Path(stores), out, dist, meta)
    else:
        metrics = _run_split(cfg, init_path, Path(stores), out, dist, meta)
    scores, targets = metrics.pop("_scores", None), metrics.pop("_targets", None)
    if dist.is_main:
        report.write_report(out, metrics, scores, targets)
    distributed.cleanup()
    return metrics


def _init_tag(init: Path | None) -> str:
    if init is None:
        return "scratch"
    return init.parent.name if init.stem in ("checkpoint", "checkpoint-final") else init.stem


def _run_split(cfg, init, stores, out, dist, meta) -> dict:
    """AS-2M / AS-20K / SPC: train on the train store(s), select on valid (if any), report test."""
    if not cfg.train_stores or not cfg.test_store:
        raise ConfigError(f"task {cfg.task}: train_stores and test_store must be set in the preset")
    train_s = fd.open_stores(stores, cfg.train_stores)
    test_s = fd.open_stores(stores, [cfg.test_store])[0]
    valid_s = fd.open_stores(stores, [cfg.valid_store])[0] if cfg.valid_store else None
    every = train_s + [test_s] + ([valid_s] if valid_s else [])
    fd.check_compatible(every)
    ref = train_s[0]
    if cfg.task == "spc1" and ref.num_classes != 12:
        raise FinetuneError(f"{ref.path}: SPC-1 (SUPERB split) has 12 classes, this store has {ref.num_classes}")
    norm = (ref.norm_mean, ref.norm_std)
    train_ds = fd.concat([fd.ClipDataset(s, norm=norm, spec_mask=(cfg.freqm, cfg.timem)) for s in train_s])
    valid_ds = fd.ClipDataset(valid_s, norm=norm) if valid_s else None
    test_ds = fd.ClipDataset(test_s, norm=norm)
    meta = {**meta, "class_names": ref.class_names, "target_length": ref.target_length,
            "norm": {"mean": norm[0], "std": norm[1]},                  # the fbank normalisation it saw
            "fingerprints": {"clips": {s.path.name: s.fingerprint for s in every}}}
    vit = build_model(cfg, init, ref.target_length, ref.num_classes)
    r = fit(cfg, vit, train_ds, valid_ds, test_ds, ref.num_classes, ref.multilabel, out, dist, meta)
    return _summary(cfg, meta, ref, r, num_test=len(test_ds))


def _run_cv(cfg, init, stores, out, dist, meta) -> dict:
    """ESC-50: for each fold, train on the other folds and test on it; mean and std over folds."""
    store = fd.open_stores(stores, cfg.train_stores or ["esc50.h5"])[0]
    if store.folds is None:
        raise FinetuneError(f"{store.path}: no `fold` dataset, so ESC-50 cross-validation is impossible")
    folds_all = np.asarray(store.folds)
    folds = cfg.folds or sorted(int(f) for f in np.unique(folds_all))
    missing = [f for f in folds if not (folds_all == f).any()]
    if missing:
        raise FinetuneError(f"{store.path}: folds {missing} hold no clips "
                            f"(stored folds: {sorted(set(folds_all.tolist()))})")
    meta = {**meta, "class_names": store.class_names, "target_length": store.target_length,
            "norm": {"mean": store.norm_mean, "std": store.norm_std},   # the fbank normalisation it saw
            "fingerprints": {"clips": {store.path.name: store.fingerprint}}}
    per_fold, scores, targets = [], [], []
    for k in folds:
        train_ds = fd.ClipDataset(store, np.flatnonzero(folds_all != k), spec_mask=(cfg.freqm, cfg.timem))
        test_ds = fd.ClipDataset(store, np.flatnonzero(folds_all == k))
        vit = build_model(cfg, init, store.target_length, store.num_classes)
        r = fit(cfg, vit, train_ds, None, test_ds, store.num_classes, store.multilabel,
                out / f"fold{k}", dist, {**meta, "fold": k})
        if dist.is_main:
            per_fold.append({"fold": k, **r["test"], "clips": len(test_ds)})
            scores.append(r["scores"])
            targets.append(r["targets"])
    if not dist.is_main:
        return {}
    metric = primary_metric(store.multilabel)
    vals = np.array([f[metric] for f in per_fold])
    r = {"test": {metric: float(vals.mean())}, "selection": "last epoch", "scores": np.concatenate(scores),
         "targets": np.concatenate(targets)}
    s = _summary(cfg, meta, store, r, num_test=int(sum(f["clips"] for f in per_fold)))
    s.update({"folds": per_fold, "std": float(vals.std()), "evaluation": f"{len(folds)}-fold cross-validation"})
    return s


def _summary(cfg, meta, ref, r: dict, num_test: int) -> dict:
    if not r:
        return {}
    metric = primary_metric(ref.multilabel)
    out = {"task": cfg.task, "preset": meta["preset"], "init": meta["init"], "metric": metric,
           "score": r["test"][metric], "test": r["test"], "num_test_clips": num_test,
           "num_classes": ref.num_classes, "class_names": ref.class_names, "multilabel": ref.multilabel,
           "selection": r["selection"], "fingerprints": meta["fingerprints"]}
    for k in ("valid", "selected_epoch", "history", "train_seconds"):
        if k in r:
            out[k] = r[k]
    out["_scores"], out["_targets"] = r["scores"], r["targets"]   # for the report; popped by run_finetune
    return out
