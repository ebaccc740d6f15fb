"""Stage two: pretrain the masked audio model against cached CLAP targets (or reconstruction / labels).

    cfg = load_pretrain_config("supmam-clap-mini", ["max_steps=50"])   # train.pretrain.config
    run_pretrain(cfg)            # = train(build(cfg)); torchrun --nproc-per-node 4 ... for DDP

`build(cfg)` opens the stores, builds the model, optimizer, schedule and loader (restoring them
from the run's checkpoint on resume) and returns them as `Parts`; `train(parts)` is the step loop,
read top to bottom: lr -> micro-steps (targets mapped to patches on the device, forward, backward;
DDP syncs only on the last) -> clip -> step -> log -> checkpoint. The lr, the data order and the
masking are pure functions of (seed, update, rank), and checkpoints hold every RNG state, so a
resumed run continues with the loss sequence an uninterrupted run would have had.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from tqdm import tqdm

from train import distributed as D
from train.amp import autocast, grad_scaler, resolve_amp
from train.model.checkpoint import load_checkpoint, save_checkpoint
from train.config import to_dict
from train.data import PretrainDataset, StepBatchSampler, build_loader, endless_batches, verify_on_node
from train.lr_sched import build_scheduler
from train.model.models_mam import MaskedAudioModel
from train.pretrain.config import PretrainConfig
from train.plots import plot_curves
from train.run_folder import check_resume_config, check_saved_config, claim, truncate_log
from cache_tools.atomic import atomic_write_text
from cache_tools.writer_lock import writer_lock
from train.stop_signal import EXIT_REQUEUE, STOPPED, StopOnSignal
from train.tb_log import open_tensorboard, tb_write
from train.rng import mask_seed, rng_state, set_rng_state
from train.pretrain.targets import STATS_CLIPS, OnlineTeacher, TargetInfo, TargetMap, target_info, target_stats
from cache_tools.errors import ConfigError, Diverged, StoreError


@dataclass
class Derived:
    """Values computed once from the config, the stores and the world; printed and saved."""
    world_size: int
    micro_batch: int
    num_clips: int
    target_length: int            # fbank frames, from the clip store
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float                     # blr * batch_size / 256
    patch_grid: list[int]
    num_patches: int
    teacher_grid: list[int] | None
    target_dim: int
    num_classes: int
    multilabel: bool
    teacher: str | None
    amp: str


@dataclass
class Parts:
    """What `build` makes and `train` runs: the model (bare, as checkpoints hold it) and the module
    the loop calls (DDP and/or torch.compile around it), optimizer, schedule, data, run folder."""
    cfg: PretrainConfig
    dist: D.DistInfo
    model: MaskedAudioModel
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    batches: Iterator             # (epoch, micro-batch) from the update the run starts at
    targets: TargetMap | None     # teacher grid -> per-patch targets (clap objective)
    teacher: OnlineTeacher | None
    derived: Derived
    fingerprints: dict
    out: Path
    start_step: int
    norm: dict = field(default_factory=dict)   # {"mean", "std"}: the clip store's fbank normalisation
    tb: Any = None                # TensorBoard SummaryWriter (tensorboard=true, main rank) or None
    stopped: str = ""             # the signal that stopped the run early ("SIGTERM", "SIGUSR1"), or ""

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"


# ------------------------------------------------------------------------------------------- build

def build(cfg: PretrainConfig, online_teacher: OnlineTeacher | None = None, resume: bool = False,
          overwrite: bool = False) -> Parts:
    """Everything the loop needs, from the config, the stores and (with `resume`) the run's checkpoint.
    A run folder holding a checkpoint is refused unless `resume` or `overwrite` (train.run_folder)."""
    dist = D.init_distributed(cfg.device)
    out = Path(cfg.run_dir) / cfg.name
    claim(out, resume, overwrite, dist.is_main)
    if resume:                                      # refused before anything is written
        check_resume_config(out, to_dict(cfg), "pretrain")
    torch.manual_seed(cfg.seed); np.random.seed(cfg.seed); random.seed(cfg.seed)
    use_targets = "clap" in cfg.model.objectives
    teacher = online_teacher if cfg.teacher == "online" and use_targets else None
    if teacher is None and cfg.teacher == "online" and use_targets:
        raise ConfigError("teacher=online needs the teacher: run `supmam pretrain --teacher online` (it builds it)")
    if use_targets and teacher is None:   # integrity once per node: local rank 0 hashes, workers never
        verify_on_node(cfg.targets, dist.local_rank, D.barrier)
    ds = PretrainDataset(cfg.clips, cfg.targets if use_targets and teacher is None else None,
                         with_wave=teacher is not None, gain=cfg.roll_mag_aug)
    tinfo = target_info(ds, teacher) if use_targets else None
    if tinfo and tinfo.untrained and not cfg.allow_untrained_teacher:
        raise ConfigError(f"{cfg.preset or cfg.name}: the targets come from an untrained teacher ({tinfo.name}), "
                          "features without CLAP semantics; write them with a CLAP checkpoint (`supmam targets "
                          "--clap-ckpt ...`) or set allow_untrained_teacher=true to train on them anyway")
    sampler = StepBatchSampler(len(ds), cfg.batch_size, cfg.accum_steps, dist.rank, dist.world_size, cfg.seed,
                               seeded=cfg.roll_mag_aug)
    if "cls" in cfg.model.objectives and sampler.micro_batch < 2:
        raise ConfigError(f"the cls head's BatchNorm needs >= 2 clips per micro-batch; batch_size={cfg.batch_size} "
                          f"/ (accum_steps={cfg.accum_steps} x world_size={dist.world_size}) = {sampler.micro_batch}")
    loader = build_loader(ds, sampler, cfg.num_workers, pin_memory=dist.device.type == "cuda", seed=cfg.seed)
    model = build_model(cfg, ds, tinfo, teacher, dist)
    tmap = TargetMap(ds, model.encoder, tinfo, cfg.target_alignment, cfg.target_padding, dist.device) if tinfo else None
    derived = derive(cfg, dist, sampler, ds, model, tinfo)
    fingerprints = {"clips": [c.fingerprint for c in ds.clip_stores], "targets": tinfo.fingerprint if tinfo else None}
    opt = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=derived.lr, betas=tuple(cfg.betas))
    sched = build_scheduler(opt, derived.total_steps, derived.warmup_steps, cfg.min_lr)
    scaler = grad_scaler(derived.amp)
    step = restore(out / "checkpoint.pt", model, opt, sched, scaler, fingerprints, derived, to_dict(cfg),
                   dist.is_main) if resume else 0
    if dist.is_main:                                # after the checks: a refused resume writes nothing
        out.mkdir(parents=True, exist_ok=True)
        meta = {"config": to_dict(cfg), "derived": dataclasses.asdict(derived), "fingerprints": fingerprints}
        (out / "config.json").write_text(json.dumps(meta, indent=2))
        print(f"[pretrain] {out}: " + json.dumps(meta["derived"]), flush=True)
    ddp_model = D.wrap_ddp(model, dist)
    step_model = torch.compile(ddp_model, backend=cfg.compile) if cfg.compile else ddp_model   # same module, traced
    if dist.is_main:
        truncate_log(out / "log.jsonl", step)       # a resumed run rewrites what came after its checkpoint
    tb = open_tensorboard(out, step, cfg.tensorboard, write=dist.is_main)
    if dist.is_main:
        (out / STOPPED).unlink(missing_ok=True)     # written again only if a signal stops this run
    return Parts(cfg, dist, model, step_model, opt, sched, scaler, endless_batches(loader, sampler, step), tmap,
                 teacher, derived, fingerprints, out, step, norm={"mean": ds.norm_mean, "std": ds.norm_std}, tb=tb)


def build_model(cfg: PretrainConfig, ds: PretrainDataset, tinfo: TargetInfo | None, teacher: OnlineTeacher | None,
                dist: D.DistInfo) -> MaskedAudioModel:
    """The model for the clip store's geometry and labels; the clap head starts at the targets' stats."""
    clips = ds.clips
    model = MaskedAudioModel(cfg.model, target_length=clips.target_length, target_dim=tinfo.dim if tinfo else 0,
                             num_classes=clips.num_classes, multilabel=clips.multilabel).to(dist.device)
    if tinfo and cfg.model.target_head_init == "stats":             # the head starts at the targets' offset
        t_mean, t_std = target_stats(ds, teacher, cfg.seed)
        model.init_target_head(t_mean.to(dist.device), t_std.to(dist.device))
        if dist.is_main:
            print(f"[pretrain] clap head starts at the targets' per-dim stats ({min(STATS_CLIPS, len(ds))} clips): "
                  f"offset energy {t_mean.square().mean():.4f}, spread {t_std.square().mean():.4f}", flush=True)
    return model


def derive(cfg: PretrainConfig, dist: D.DistInfo, sampler: StepBatchSampler, ds: PretrainDataset,
           model: MaskedAudioModel, tinfo: TargetInfo | None) -> Derived:
    spe = sampler.steps_per_epoch
    total = min(cfg.epochs * spe, cfg.max_steps) if cfg.max_steps > 0 else cfg.epochs * spe
    warmup = min(cfg.warmup_steps if cfg.warmup_steps > 0 else round(cfg.warmup_epochs * spe), total)
    Tp, Fp = model.encoder.patch_grid
    return Derived(dist.world_size, sampler.micro_batch, len(ds), ds.clips.target_length, spe, total, warmup, cfg.lr,
                   [Tp, Fp], Tp * Fp, list(tinfo.grid) if tinfo else None, tinfo.dim if tinfo else 0,
                   ds.clips.num_classes, ds.clips.multilabel, tinfo.name if tinfo else None,
                   resolve_amp(cfg.amp, dist.device))


def restore(path: Path, model, opt, sched, scaler, fingerprints: dict, derived: Derived, config: dict,
            main_rank: bool) -> int:
    """Load the run's checkpoint into the parts (and the RNGs); the update to continue from (0: none yet).
    The checkpoint must come from these stores and these settings (RESUMABLE ones aside)."""
    if not path.exists():
        if main_rank:
            print(f"[pretrain] --resume: no checkpoint at {path}; starting from update 0", flush=True)
        return 0
    state = load_checkpoint(path)
    if state["fingerprints"] != fingerprints:
        raise StoreError(f"{path}: trained on stores {state['fingerprints']}, not on these {fingerprints}")
    check_saved_config(path, state.get("config"), config)
    model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"]); scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    changed = {k: (v, getattr(derived, k)) for k, v in state["derived"].items() if v != getattr(derived, k, v)}
    if main_rank:
        if changed:
            print(f"[pretrain] warning: resuming with changed derived values (was, now): {changed}", flush=True)
        print(f"[pretrain] resumed from {path} at update {state['step']}", flush=True)
    return state["step"]


# ------------------------------------------------------------------------------------------- train

class Window:
    """The loss and its parts summed since the last log line (on the device: no per-step host sync)."""

    def __init__(self, device: torch.device):
        self.loss, self.parts, self.updates = torch.zeros((), device=device), {}, 0
        self.wait, self.t0 = 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, parts: dict, accum_steps: int) -> None:
        self.loss += loss.detach() / accum_steps
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v.detach().float() / accum_steps


def train(p: Parts, stop_after: int | None = None) -> Path:
    """Run updates from `p.start_step` to the end of the schedule (or to `stop_after`, as an interruption
    would: checkpoint written, schedule unchanged); returns the checkpoint written last. SIGTERM /
    SIGUSR1 stop it the same way after the update in progress (p.stopped names the signal)."""
    cfg = p.cfg
    step, end = p.start_step, p.derived.total_steps if stop_after is None else min(p.derived.total_steps, stop_after)
    window = Window(p.dist.device)
    bar = tqdm(total=p.derived.total_steps, initial=step, disable=None if p.dist.is_main else True, desc=cfg.name,
               dynamic_ncols=True)
    p.step_model.train()
    try:
        with StopOnSignal() as signals:
            step = _updates(p, step, end, window, bar, signals)
    finally:
        p.batches.close()                               # ends the loader's workers (train.data.endless_batches)
    bar.close()
    if signals.signum is not None and step < p.derived.total_steps:
        p.stopped = signals.name
        if p.dist.is_main:   # for job scripts: torchrun itself exits 1 on SIGTERM, whatever its workers return
            atomic_write_text(p.out / STOPPED, json.dumps({"signal": p.stopped, "step": step}) + "\n")
            print(f"[pretrain] {cfg.name}: {p.stopped} received: stopped after update {step}, checkpoint "
                  f"{p.ckpt_path}; continue with --resume (exit code {EXIT_REQUEUE}: requeue)", flush=True)
    return finish(p, step)


def _updates(p: Parts, step: int, end: int, window: Window, bar: tqdm, signals: StopOnSignal) -> int:
    """The step loop: updates from `step` to `end`, or to the update in progress when a stop signal comes."""
    cfg = p.cfg
    while step < end:
        p.scheduler.step_update(step)                                 # lr for this update
        for micro in range(cfg.accum_steps):                          # micro-steps; DDP syncs on the last
            loss = micro_step(p, step, micro, window)
        if cfg.grad_clip > 0:                                         # clip
            p.scaler.unscale_(p.optimizer)
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), cfg.grad_clip)
        p.scaler.step(p.optimizer)                                    # step
        p.scaler.update()
        p.optimizer.zero_grad(set_to_none=True)
        step += 1
        window.updates += 1
        bar.update(1)
        stop = signals.agreed(step, p.dist.device)                    # SIGTERM / SIGUSR1: after this update
        if step % cfg.log_every == 0 or step == end or stop:          # log: the only per-step host sync
            log_window(p, step, window, bar)
            window = Window(p.dist.device)
        if step % cfg.ckpt_every == 0 or step == end or stop:         # checkpoint
            if not torch.isfinite(D.all_reduce_mean(loss.detach())).item():   # never save a diverged model
                raise Diverged(f"[pretrain] {cfg.name}: non-finite loss at update {step}; "
                               f"{last_good(p)}. Lower blr or enable grad_clip.")
            if p.dist.is_main:
                save_checkpoint(p.ckpt_path, checkpoint_state(p, step))
            D.barrier()
        if stop:
            break
    return step


def micro_step(p: Parts, step: int, micro: int, window: Window) -> torch.Tensor:
    """One micro-batch: forward and backward (gradients accumulate); returns its loss."""
    cfg, dev = p.cfg, p.dist.device
    t0 = time.perf_counter()
    _, batch = next(p.batches)
    window.wait += time.perf_counter() - t0
    x = batch["fbank"].to(dev, non_blocking=True)                     # [b,1,T,128]
    targets = valid = None
    if p.targets is not None:
        grid = p.teacher(batch["wave"].to(dev, non_blocking=True)) if p.teacher else \
            batch["targets"].to(dev, non_blocking=True)               # f16 [b,Tt,Ft,D]
        targets, valid = p.targets(grid, batch["index"])              # [b,N,D], [b,N] | None
    labels = batch["label"].to(dev, non_blocking=True) if "cls" in cfg.model.objectives else None
    gen = torch.Generator(device=dev).manual_seed(mask_seed(cfg.seed, step, p.dist.rank, micro))
    last = micro == cfg.accum_steps - 1
    sync = p.step_model.no_sync() if p.dist.enabled and not last else contextlib.nullcontext()
    with sync:
        with autocast(dev, p.derived.amp):
            loss, parts, _ = p.step_model(x, targets=targets, labels=labels, generator=gen, valid=valid)
        p.scaler.scale(loss / cfg.accum_steps).backward()
    window.add(loss, parts, cfg.accum_steps)
    return loss


def log_window(p: Parts, step: int, w: Window, bar: tqdm) -> None:
    """One log line: the window's mean loss and parts over ranks, lr, throughput; stops on a non-finite loss."""
    loss = D.all_reduce_mean(w.loss / w.updates).item()
    if not np.isfinite(loss):
        raise Diverged(
            f"[pretrain] {p.cfg.name}: the loss became non-finite ({loss}) between updates "
            f"{step - w.updates + 1} and {step}; stopping. Lower blr, enable grad_clip, or use amp=bf16/off. "
            f"{last_good(p).capitalize()}.")
    dt = time.perf_counter() - w.t0
    rec = {"step": step, "epoch": step / p.derived.steps_per_epoch, "lr": p.optimizer.param_groups[0]["lr"],
           "loss": loss, **({"teacher": p.derived.teacher} if p.derived.teacher else {}),
           **{k: D.all_reduce_mean(v / w.updates).item() for k, v in w.parts.items()},
           "clips_per_s": w.updates * p.cfg.batch_size / dt, "data_wait": w.wait / dt}
    if p.dist.is_main:
        with p.log_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        tb_write(p.tb, rec)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}")


def last_good(p: Parts) -> str:
    """Where a diverged run can restart from: the checkpoint this run wrote, if it wrote one."""
    if p.ckpt_path.exists():
        return f"the last good checkpoint is {p.ckpt_path} (not overwritten)"
    return f"no checkpoint was written yet (the first is due at update {min(p.cfg.ckpt_every, p.derived.total_steps)})"


def checkpoint_state(p: Parts, step: int, full: bool = True) -> dict:
    """What a checkpoint holds: the bare model, the full config and derived values, the stores'
    fingerprints, the fbank normalisation (`norm`); `full` adds what resuming needs (optimizer,
    schedule, scaler, RNG states)."""
    state = {"kind": "pretrain", "model": p.model.state_dict(), "step": step,
             "epoch": step // p.derived.steps_per_epoch, "config": to_dict(p.cfg),
             "derived": dataclasses.asdict(p.derived), "fingerprints": p.fingerprints, "teacher": p.derived.teacher,
             "norm": p.norm}                                          # embedding normalises as training did
    if full:
        state |= {"optimizer": p.optimizer.state_dict(), "scheduler": p.scheduler.state_dict(),
                  "scaler": p.scaler.state_dict(), "rng": rng_state()}
    return state


def finish(p: Parts, step: int) -> Path:
    """At the end of the schedule: the final (model-only) checkpoint, runs/latest-pretrain, the plot."""
    if step < p.derived.total_steps:
        return p.ckpt_path
    final = p.out / "checkpoint-final.pt"
    if p.dist.is_main:
        save_checkpoint(final, checkpoint_state(p, step, full=False))
        (Path(p.cfg.run_dir) / "latest-pretrain").write_text(str(final.resolve()) + "\n")
        plot_curves(p.log_path, p.out / "curves.png")
        print(f"[pretrain] done: {final}", flush=True)
    return final


def run_pretrain(cfg: PretrainConfig, online_teacher: OnlineTeacher | None = None, resume: bool = False,
                 stop_after: int | None = None, overwrite: bool = False) -> Path:
    """Pretrain; returns the final checkpoint's path (the last one written when `stop_after` cut the run).
    The main rank holds `<run folder>.lock` throughout: a second run on the same folder is refused."""
    is_main = D.init_distributed(cfg.device).is_main
    with writer_lock(Path(cfg.run_dir) / cfg.name, "pretrain") if is_main else contextlib.nullcontext():
        parts = build(cfg, online_teacher, resume, overwrite)
        path = train(parts, stop_after)
        stopped = parts.stopped
        if parts.tb is not None:
            parts.tb.close()
        del parts                     # free DDP's reducer before its process group (else gloo can hang at exit)
    D.barrier()
    D.cleanup()
    if stopped:                       # a scheduler's signal: the job script requeues on this code
        raise SystemExit(EXIT_REQUEUE)
    return path
