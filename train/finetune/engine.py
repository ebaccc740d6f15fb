"""Fine-tuning engine: one epoch of training, one evaluation, and `fit` over the epochs.

The recipe follows AudioMAE's fine-tuning (AdamW with layer-wise lr decay, warmup + cosine per
update, token-level SpecAugment inside the encoder, so DDP wraps the encoder itself). Evaluation
runs on the main rank; where the task has a validation split the best-on-valid model is the
headline, else the last one. Every epoch ends resumable from last.pt (train.finetune.resume); a
SIGTERM / SIGUSR1 stops after the update in progress, writes last.pt there and raises StopRequested
(train.stop_signal), and `--resume` continues mid-epoch.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from timm.optim import param_groups_layer_decay
from torch.utils.data import DataLoader, Dataset

from train import distributed

from train.finetune import data as fd
from train.amp import autocast, grad_scaler, resolve_amp
from train.finetune.augment import SeededSampler
from train.model.checkpoint import save_checkpoint
from train.config import to_dict
from train.data import shutdown_workers, stoppable_worker_init
from train.finetune.resume import gather_rng, load_resume, save_resume, truncate_logs
from train.lr_sched import build_scheduler
from train.finetune.metrics import task_metrics
from train.model.models_vit import AudioViT, describe
from train.rng import set_rng_state
from train.stop_signal import StopOnSignal, StopRequested
from train.finetune.tasks import Task
from cache_tools.errors import CheckpointError, ConfigError, Diverged

if TYPE_CHECKING:
    from train.finetune.config import FinetuneConfig


@dataclass
class EvalResult:
    metrics: dict[str, float]     # the task's metrics: mAP and AUC, or accuracy
    scores: np.ndarray            # [N, C] sigmoid (multi-label) or softmax (single-label)
    targets: np.ndarray           # [N, C] multi-hot or [N] class ids


@dataclass
class FitResult:
    last: EvalResult              # the last epoch's model on the test set
    best: EvalResult | None       # the best model on the validation split, on the test set (None: no valid split)
    last_epoch: int
    best_epoch: int | None
    history: list[dict]           # per evaluated epoch: {"epoch", "<split>_<metric>": value, ...}
    train_seconds: float

    @property
    def headline(self) -> str:
        """Which model the run reports: "best" (selected on the validation split) or "last"."""
        return "best" if self.best is not None else "last"

    @property
    def test(self) -> EvalResult:
        return self.best if self.best is not None else self.last


@dataclass
class Splits:
    train: Dataset
    valid: Dataset | None         # None: no validation split, the last epoch's model is reported
    test: Dataset


@dataclass
class Loss:
    fn: torch.nn.Module
    soft: bool                    # labels become float [B, C] (BCE, or mixed clips)
    num_classes: int


def make_loss(cfg: FinetuneConfig, task: Task, num_classes: int) -> Loss:
    kind = cfg.loss if cfg.loss != "auto" else ("bce" if task.multilabel else "ce")
    if kind == "bce":
        return Loss(torch.nn.BCEWithLogitsLoss(), True, num_classes)
    if task.multilabel:
        raise ConfigError(f"loss=ce cannot train the multi-label task {task.name}; use bce")
    return Loss(torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), cfg.mixup > 0, num_classes)


class RunLog:
    """log.jsonl (training updates) and eval.jsonl (evaluations) of one run, written by the main rank."""

    def __init__(self, out: Path, is_main: bool, total: int, steps_per_epoch: int, batch_size: int, every: int,
                 append: bool = False):
        mode = "a" if append else "w"
        self.train_fh = open(out / "log.jsonl", mode) if is_main else None
        self.eval_fh = open(out / "eval.jsonl", mode) if is_main else None
        self.total, self.spe, self.batch, self.every, self.t0 = total, steps_per_epoch, batch_size, every, time.time()

    def due(self, step: int) -> bool:
        return step == 1 or step % self.every == 0 or step == self.total

    def train(self, step: int, loss: float, lr: float) -> None:
        rate = step * self.batch / max(time.time() - self.t0, 1e-9)
        self._write(self.train_fh, {"step": step, "epoch": step / self.spe, "loss": loss, "lr": lr,
                                    "clips_per_s": rate})

    def eval(self, rec: dict) -> None:
        self._write(self.eval_fh, rec)

    def close(self) -> None:
        for fh in (self.train_fh, self.eval_fh):
            if fh is not None:
                fh.close()

    @staticmethod
    def _write(fh, rec: dict) -> None:
        if fh is not None:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(json.dumps(rec), flush=True)


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, sched,
                    scaler: torch.amp.GradScaler, loss: Loss, cfg: FinetuneConfig, step: int, log: RunLog,
                    signals: StopOnSignal | None = None, rng: dict | None = None) -> int:
    """One pass over `loader`: lr -> forward (token SpecAugment) -> backward -> clip -> step -> log.
    Returns the update count after the epoch, or after the update in progress when `signals` saw a
    stop signal. `rng`: the RNG states to continue with once the epoch's iterator has drawn its seed
    (a run resumed mid-epoch: the stream then goes on as the uninterrupted run's did)."""
    device = next(model.parameters()).device
    amp = resolve_amp(cfg.amp, device)
    model.train()
    batches = iter(loader)
    if rng is not None:
        set_rng_state(rng)
    for x, y in batches:
        sched.step_update(step)                                                 # lr for this update
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # [B,1,T,F], [B,C] | [B]
        if loss.soft:
            y = fd.soft_targets(y, loss.num_classes)                            # [B, C]
        with autocast(device, amp):
            logits = model(x, cfg.mask_t_prob, cfg.mask_f_prob)                # [B, C]
        value = loss.fn(logits.float(), y)
        if not math.isfinite(value.item()):
            raise Diverged(f"[finetune] {cfg.name}: loss is {value.item()} at update {step}; stopping. "
                           f"Lower blr, enable grad_clip, or use amp=bf16/off")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        if log.due(step):                                                       # a collective: every rank
            mean = distributed.all_reduce_mean(value.detach()).item()
            log.train(step, mean, max(g["lr"] for g in optimizer.param_groups))
        if signals is not None and signals.agreed(step, device):                # SIGTERM / SIGUSR1
            break
    return step


@torch.no_grad()
def evaluate(vit: AudioViT, ds: Dataset, multilabel: bool, device: torch.device, batch_size: int = 64,
             amp: str = "off") -> EvalResult:
    """Scores of `vit` (eval mode: no token masking) on every clip of `ds`, and the task's metrics."""
    was_training = vit.training
    vit.eval()
    scores, targets = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        with autocast(device, amp):
            logits = vit(x.to(device)).float()                                  # [B, C]
        scores.append((logits.sigmoid() if multilabel else logits.softmax(-1)).cpu().numpy())
        targets.append(y.numpy())
    vit.train(was_training)
    s, t = np.concatenate(scores), np.concatenate(targets)
    return EvalResult(task_metrics(s, t, multilabel), s, t)


def train_loader(cfg: FinetuneConfig, ds: Dataset, sampler: SeededSampler, world_size: int) -> DataLoader:
    """Batches of (index, item seed) from `sampler`. A loader draws a base seed each time it starts an
    epoch's iterator, from the global RNG unless given a generator: in-process (num_workers 0) that is
    every epoch, so a resumed run draws as the uninterrupted one did; persistent workers start once,
    so with workers the draw comes from a seeded generator of its own, off the training RNG stream."""
    per_rank = max(1, cfg.batch_size // world_size)
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.num_workers > 0 else None
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=len(sampler) >= 2 * per_rank, worker_init_fn=stoppable_worker_init,
                      persistent_workers=cfg.num_workers > 0, generator=gen)


class Selection:
    """Evaluates after an epoch, keeps the best model on the validation split and writes the
    checkpoints (main rank): checkpoint.pt is the best-on-valid model (no valid split: the latest
    evaluated one), checkpoint-final.pt the last epoch's."""

    def __init__(self, cfg: FinetuneConfig, task: Task, data: Splits, out: Path, device: torch.device, info: dict):
        self.cfg, self.task, self.out, self.device, self.info = cfg, task, out, device, info
        self.split, self.ds = ("valid", data.valid) if data.valid is not None else ("test", data.test)
        self.test_too = data.test if data.valid is not None and cfg.test_each_epoch else None
        self.best, self.epoch, self.state, self.history = -math.inf, None, None, []

    def state_dict(self) -> dict:
        return {"best": self.best, "epoch": self.epoch, "state": self.state, "history": self.history}

    def load_state_dict(self, st: dict) -> None:
        self.best, self.epoch, self.state, self.history = st["best"], st["epoch"], st["state"], st["history"]

    def after_epoch(self, vit: AudioViT, epoch: int, step: int, log: RunLog) -> None:
        amp = resolve_amp(self.cfg.amp, self.device)
        r = evaluate(vit, self.ds, self.task.multilabel, self.device, self.cfg.eval_batch_size, amp)
        self.history.append({"epoch": epoch, **{f"{self.split}_{k}": v for k, v in r.metrics.items()}})
        if self.test_too is not None:                  # for best_over_epochs only: the selection stays on valid
            t = evaluate(vit, self.test_too, self.task.multilabel, self.device, self.cfg.eval_batch_size, amp)
            self.history[-1] |= {f"test_{k}": v for k, v in t.metrics.items()}
        log.eval({"step": step, **self.history[-1]})
        score = r.metrics[self.task.metric]
        improved = self.split == "valid" and score > self.best
        if improved:
            self.best, self.epoch = score, epoch
            self.state = copy.deepcopy({k: v.cpu() for k, v in vit.state_dict().items()})
        state = {"kind": "finetune", "model": vit.state_dict(), "model_args": describe(vit), "epoch": epoch,
                 "step": step, "config": to_dict(self.cfg), "metric": {self.task.metric: score}, **self.info}
        if improved or self.split == "test":
            save_checkpoint(self.out / "checkpoint.pt", state)
        if epoch == self.cfg.epochs:
            save_checkpoint(self.out / "checkpoint-final.pt", state)


def fit(cfg: FinetuneConfig, vit: AudioViT, data: Splits, task: Task, out: Path, dist: distributed.DistInfo,
        info: dict, resume: bool = False) -> FitResult | None:
    """Train `vit` on data.train; score the last epoch's model (and the best one on data.valid) on
    data.test. `info` (class names, input length, store fingerprints, fold) goes into every
    checkpoint; `resume` continues from <out>/last.pt when there is one."""
    torch.manual_seed(cfg.seed + dist.rank)
    base = fd.train_sampler(data.train, cfg.weighted_sampler, cfg.epoch_len, cfg.seed, dist.rank, dist.world_size,
                            cfg.sampler_replacement)
    sampler = SeededSampler(base, cfg.seed, dist.rank)
    loader = train_loader(cfg, data.train, sampler, dist.world_size)
    vit.to(dist.device)
    model = distributed.wrap_ddp(vit, dist)
    groups = param_groups_layer_decay(vit, cfg.weight_decay, no_weight_decay_list=vit.no_weight_decay(),
                                      layer_decay=cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    spe = len(loader)
    total = cfg.epochs * spe
    sched = build_scheduler(optimizer, total, min(total, round(cfg.warmup_epochs * spe)), cfg.min_lr)
    scaler, loss = grad_scaler(resolve_amp(cfg.amp, dist.device)), make_loss(cfg, task, vit.head.out_features)
    out.mkdir(parents=True, exist_ok=True)
    derived = {"lr": cfg.lr, "world_size": dist.world_size, "steps_per_epoch": spe, "total_steps": total}
    sel = Selection(cfg, task, data, out, dist.device, {**info, "derived": derived})
    start, step, rng = 0, 0, None
    st = load_resume(out, info, dist, to_dict(cfg)) if resume else None
    if st is not None:
        try:
            vit.load_state_dict(st["model"])
        except RuntimeError as e:                                              # another architecture
            raise CheckpointError(f"{out / 'last.pt'}: its model does not fit this run's "
                                  f"({str(e).splitlines()[0]}); resume with the run's settings") from None
        optimizer.load_state_dict(st["optimizer"])
        scaler.load_state_dict(st["scaler"])
        sel.load_state_dict(st["selection"])
        start, step, rng = st["epoch"], st["step"], st["rng"][dist.rank]
        if dist.is_main:
            truncate_logs(out, step)
    log = RunLog(out, dist.is_main, total, spe, cfg.batch_size, cfg.log_every, append=st is not None)
    if dist.is_main:
        print(f"[finetune] {task.name}: {len(data.train)} training clips, lr {cfg.lr:.3g} (blr {cfg.blr} x batch "
              f"{cfg.batch_size} / 256), {spe} steps/epoch x {cfg.epochs} epochs, init {cfg.init}", flush=True)

    def save(epoch: int) -> None:                                              # last.pt: `epoch` whole epochs done
        states = gather_rng(dist)                                              # a collective: every rank
        if dist.is_main:
            save_resume(out, {"model": vit.state_dict(), "optimizer": optimizer.state_dict(),
                              "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "rng": states,
                              "selection": sel.state_dict(), "config": to_dict(cfg), **info})
        distributed.barrier()

    try:
        with StopOnSignal() as signals:
            for epoch in range(start + 1, cfg.epochs + 1):
                sampler.set_epoch(epoch - 1)
                done = step - (epoch - 1) * spe                                # > 0: resumed mid-epoch
                sampler.skip(done * loader.batch_size)
                if done == 0 and rng is not None:
                    set_rng_state(rng)                                         # resumed at an epoch's end
                step = train_one_epoch(model, loader, optimizer, sched, scaler, loss, cfg, step, log, signals,
                                       rng if done else None)
                rng = None
                if step < epoch * spe:                                         # a signal, mid-epoch
                    save(epoch - 1)
                    raise StopRequested(signals.name, step, str(out / "last.pt"))
                if dist.is_main and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                    sel.after_epoch(vit, epoch, step, log)                     # evaluation: main rank only
                save(epoch)
                if epoch < cfg.epochs and signals.agreed(step, dist.device, every=1):   # a signal at the epoch's end
                    raise StopRequested(signals.name, step, str(out / "last.pt"))
    except StopRequested:
        log.close()
        raise
    finally:
        shutdown_workers(loader)                                               # they ignore SIGTERM
    result = final_scores(cfg, vit, data, task, sel, step, log) if dist.is_main else None
    distributed.barrier()
    return result


def final_scores(cfg: FinetuneConfig, vit: AudioViT, data: Splits, task: Task, sel: Selection, step: int,
                 log: RunLog) -> FitResult:
    """The last epoch's model and (with a validation split) the best one, each on the test set."""
    amp = resolve_amp(cfg.amp, sel.device)
    results = {"last": evaluate(vit, data.test, task.multilabel, sel.device, cfg.eval_batch_size, amp)}
    if data.valid is not None and sel.state is not None:
        vit.load_state_dict(sel.state)
        results["best"] = evaluate(vit, data.test, task.multilabel, sel.device, cfg.eval_batch_size, amp)
    for which, r in results.items():
        epoch = cfg.epochs if which == "last" else sel.epoch
        log.eval({"step": step, "epoch": epoch, "final": which, **{f"test_{k}": v for k, v in r.metrics.items()}})
    log.close()
    return FitResult(results["last"], results.get("best"), cfg.epochs, sel.epoch if "best" in results else None,
                     sel.history, round(time.time() - log.t0, 1))
