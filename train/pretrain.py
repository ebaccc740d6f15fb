"""Stage two: pretrain the masked audio model against cached CLAP targets (or reconstruction / labels).

    python -m train.pretrain ... | supmam pretrain --preset supmam-clap-mini | torchrun --nproc-per-node 4 ...

One flat loop, read top to bottom: lr -> micro-steps (targets mapped to patches on the device,
forward, backward; DDP syncs only on the last) -> clip -> step -> log -> checkpoint. The lr, the
data order and the masking are pure functions of (seed, update, rank), and checkpoints hold every
RNG state, so `resume=True` continues with the loss sequence an uninterrupted run would have had.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from tqdm import tqdm

from cache_tools.fingerprint import json_fingerprint
from cache_tools.grid_map import map_targets, teacher_to_patch_index
from train import distributed as D
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import load_config, to_dict
from train.data import PretrainDataset, StepBatchSampler, build_loader, endless_batches
from train.lr_sched import build_scheduler
from train.models_mam import MAMConfig, MaskedAudioModel
from train.plots import plot_curves

TARGET_IDENTITY = ("clip_fingerprint", "teacher", "checkpoint_sha256", "grid", "dim", "num_clips", "teacher_mel")


@dataclass
class PretrainConfig:
    model: MAMConfig = field(default_factory=MAMConfig)
    clips: str = "data/stores/audioset_unbalanced_train.h5"
    targets: str = "data/stores/audioset_unbalanced_train.targets.zarr"  # unused by rec/cls-only presets
    teacher: Literal["cached", "online"] = "cached"   # online: the teacher runs inside the step
    batch_size: int = 128         # clips per optimizer update, over all ranks and micro-steps
    accum_steps: int = 1          # micro-steps per update (per-rank micro batch = batch / (accum * world))
    lr: float = 2e-4              # absolute lr (not scaled by batch size)
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0         # > 0 wins over warmup_epochs
    warmup_epochs: float = 0.0
    epochs: int = 32
    max_steps: int = 0            # > 0 caps the run at this many updates (the schedule spans them)
    grad_clip: float = 0.0        # max grad norm; 0 = off
    num_workers: int = 4
    seed: int = 0
    amp: Literal["bf16", "fp16", "off"] = "bf16"      # CUDA only; CPU runs in fp32
    compile: str = ""             # torch.compile backend for the model step ("inductor" on GPUs; "" = eager)
    log_every: int = 20
    ckpt_every: int = 1000
    run_dir: str = "runs"         # runs go to <run_dir>/<name>/
    name: str = "pretrain"
    device: str = "auto"          # auto | cpu | cuda | cuda:N


@dataclass
class Derived:
    """Values computed once from the config, the stores and the world; printed and saved."""
    world_size: int
    micro_batch: int
    num_clips: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    patch_grid: list[int]
    num_patches: int
    teacher_grid: list[int] | None
    target_dim: int
    num_classes: int
    multilabel: bool
    teacher: str | None
    amp: str


@dataclass
class OnlineTeacher:
    """What `--teacher online` hands the loop: the stage-one teacher as a function plus its metadata.

    `fn(wave16k [B,S] float in [-1,1]) -> [B,Tt,Ft,D] float16`, permuted and cast exactly as stage one
    stores targets, so an online run's losses equal a cached run's.
    """
    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str
    grid: tuple[int, int]
    dim: int
    teacher_mel: dict

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return self.fn(wave)


def mask_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """Seed of the masking generator for one micro-step: independent of resume and of other ranks."""
    return int(np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, np.uint64)[0]) >> 1


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@dataclass
class TargetInfo:
    """The teacher behind the targets: its token grid (Tt, Ft), dim, mel bank, id and the store's fingerprint."""
    grid: tuple[int, int]
    dim: int
    teacher_mel: dict
    name: str
    fingerprint: str | None


def target_info(ds: PretrainDataset, online_teacher: OnlineTeacher | None) -> TargetInfo:
    if online_teacher is not None:
        t = online_teacher
        return TargetInfo(tuple(t.grid), int(t.dim), dict(t.teacher_mel), t.name, None)
    ts = ds.targets
    name = f"{ts.teacher_name} ({ts.attrs.get('checkpoint_sha256', ts.attrs.get('checkpoint', '?'))})"
    return TargetInfo(tuple(ts.grid), ts.dim, ts.attrs["teacher_mel"], name,
                      json_fingerprint({k: ts.attrs.get(k) for k in TARGET_IDENTITY}))


def patch_index(clips, encoder, tinfo: TargetInfo) -> torch.Tensor:
    """[Tp*Fp] flat index into the teacher's Tt*Ft tokens, from the clip store's feature parameters."""
    fp = clips.attrs.get("feature_params", {})
    return teacher_to_patch_index(
        tinfo.grid, tinfo.teacher_mel, tuple(encoder.patch_grid), frame_shift_s=fp.get("frame_shift", 10) / 1000,
        patch=encoder.patch, n_mels=fp.get("num_mel_bins", 128), fmin=fp.get("low_freq", 20.0),
        fmax=fp.get("high_freq", 0.0) or clips.sample_rate / 2, clip_seconds=len(clips.wave(0)) / clips.sample_rate)


STATS_CLIPS = 256     # clips sampled for the clap head's initial statistics


def target_stats(ds: PretrainDataset, online_teacher: OnlineTeacher | None, seed: int, n: int = STATS_CLIPS,
                 batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dim mean and std ([D] each, float32) of the targets over a seeded sample of `n` clips
    (every clip when there are fewer): read from the target store, or computed by the online teacher."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    grids = []
    for lo in range(0, len(idx), batch):
        part = idx[lo:lo + batch]
        if online_teacher is None:
            g = torch.from_numpy(ds.targets.read(part))                               # f16 [b,Tt,Ft,D]
        else:
            wave = torch.stack([ds[int(i)]["wave"] for i in part])                    # [b,S]
            with torch.no_grad():
                g = online_teacher(wave).cpu()                                         # f16 [b,Tt,Ft,D]
        grids.append(g.reshape(-1, g.shape[-1]))                                       # [b*Tt*Ft, D]
    std, mean = torch.std_mean(torch.cat(grids).double(), dim=0, correction=0)       # [D], [D]
    return mean.float(), std.float()


def main(cfg: PretrainConfig, online_teacher: OnlineTeacher | None = None, resume: bool = False,
         stop_after: int | None = None) -> Path:
    """Pretrain; returns the final checkpoint's path. `stop_after` ends the run after that many updates
    as an interruption would (checkpoint written, schedule unchanged) — for resume tests."""
    dist = D.init_distributed(cfg.device)
    dev, main_rank = dist.device, dist.is_main
    torch.manual_seed(cfg.seed); np.random.seed(cfg.seed); random.seed(cfg.seed)
    objectives = set(cfg.model.objectives)
    use_targets, use_cls = "clap" in objectives, "cls" in objectives
    online = cfg.teacher == "online" and use_targets
    if online and online_teacher is None:
        raise ValueError("teacher=online needs the teacher: run `supmam pretrain --teacher online` (it builds it)")

    # ---- data: the clip store, the target store (cached mode) and the deterministic sampler
    ds = PretrainDataset(cfg.clips, cfg.targets if use_targets and not online else None, with_wave=online)
    clips = ds.clips
    if clips.target_length != cfg.model.target_length:
        raise ValueError(f"clip store {cfg.clips} has target_length {clips.target_length} frames but "
                         f"model.target_length={cfg.model.target_length}; set model.target_length={clips.target_length}")
    tinfo = target_info(ds, online_teacher if online else None) if use_targets else None
    fingerprints = {"clips": clips.fingerprint, "targets": tinfo.fingerprint if tinfo else None}
    teacher = tinfo.name if tinfo else None
    sampler = StepBatchSampler(len(ds), cfg.batch_size, cfg.accum_steps, dist.rank, dist.world_size, cfg.seed)
    if use_cls and sampler.micro_batch < 2:
        raise ValueError(f"the cls head's BatchNorm needs >= 2 clips per micro-batch; batch_size={cfg.batch_size} "
                         f"/ (accum_steps={cfg.accum_steps} x world_size={dist.world_size}) = {sampler.micro_batch}")
    loader = build_loader(ds, sampler, cfg.num_workers, pin_memory=dev.type == "cuda", seed=cfg.seed)

    # ---- model, patch index, derived values
    model = MaskedAudioModel(cfg.model, target_dim=tinfo.dim if tinfo else 0, num_classes=clips.num_classes,
                             multilabel=clips.multilabel).to(dev)
    if tinfo and cfg.model.target_head_init == "stats":             # the head starts at the targets' offset
        t_mean, t_std = target_stats(ds, online_teacher if online else None, cfg.seed)
        model.init_target_head(t_mean.to(dev), t_std.to(dev))
        if main_rank:
            print(f"[pretrain] clap head starts at the targets' per-dim stats ({min(STATS_CLIPS, len(ds))} clips): "
                  f"offset energy {t_mean.square().mean():.4f}, spread {t_std.square().mean():.4f}", flush=True)
    patch_grid = tuple(model.encoder.patch_grid)                     # (Tp, Fp)
    index = patch_index(clips, model.encoder, tinfo).to(dev) if tinfo else None   # [Tp*Fp] into Tt*Ft
    spe = sampler.steps_per_epoch
    total = min(cfg.epochs * spe, cfg.max_steps) if cfg.max_steps > 0 else cfg.epochs * spe
    warmup = min(cfg.warmup_steps if cfg.warmup_steps > 0 else round(cfg.warmup_epochs * spe), total)
    amp = cfg.amp if dev.type == "cuda" else "off"
    derived = Derived(dist.world_size, sampler.micro_batch, len(ds), spe, total, warmup, list(patch_grid),
                      patch_grid[0] * patch_grid[1], list(tinfo.grid) if tinfo else None, tinfo.dim if tinfo else 0,
                      clips.num_classes, clips.multilabel, teacher, amp)
    out = Path(cfg.run_dir) / cfg.name
    meta = {"config": to_dict(cfg), "derived": dataclasses.asdict(derived), "fingerprints": fingerprints}
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(meta, indent=2))
        print(f"[pretrain] {out}: " + json.dumps(meta["derived"]), flush=True)

    # ---- optimizer, schedule, scaler; resume
    opt = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    sched = build_scheduler(opt, total, warmup, cfg.min_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    step, ckpt_path = 0, out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state["fingerprints"] != fingerprints:
            raise ValueError(f"{ckpt_path} was trained on stores {state['fingerprints']}, not {fingerprints}")
        model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"]); scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"]); step = state["step"]
        changed = {k: (v, getattr(derived, k)) for k, v in state["derived"].items() if v != getattr(derived, k, v)}
        if changed and main_rank:
            print(f"[pretrain] warning: resuming with changed derived values (was, now): {changed}", flush=True)
        if main_rank:
            print(f"[pretrain] resumed from {ckpt_path} at update {step}", flush=True)
    elif resume and main_rank:
        print(f"[pretrain] --resume: no checkpoint at {ckpt_path}; starting from update 0", flush=True)
    ddp_model = D.wrap_ddp(model, dist)
    step_model = torch.compile(ddp_model, backend=cfg.compile) if cfg.compile else ddp_model   # same module, traced
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16,
                              enabled=amp != "off")

    def checkpoint(path: Path, step: int, full: bool = True) -> None:
        state = {"kind": "pretrain", "model": model.state_dict(), "step": step, "epoch": step // spe,
                 "config": to_dict(cfg), "derived": dataclasses.asdict(derived),
                 "fingerprints": fingerprints, "teacher": teacher,
                 "norm": {"mean": ds.norm_mean, "std": ds.norm_std}}   # the fbank normalisation it saw
        if full:
            state |= {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "scaler": scaler.state_dict(), "rng": rng_state()}
        save_checkpoint(path, state)

    # ---- the loop
    log_path = out / "log.jsonl"
    if main_rank:
        _truncate_log(log_path, step)
    batches = endless_batches(loader, sampler, step)
    end = total if stop_after is None else min(total, stop_after)
    bar = tqdm(total=total, initial=step, disable=None if main_rank else True, desc=cfg.name, dynamic_ncols=True)
    win_loss, win_parts, win_n, wait, t_win = torch.zeros((), device=dev), {}, 0, 0.0, time.perf_counter()
    ddp_model.train()
    while step < end:
        sched.step_update(step)                                       # lr for this update
        for micro in range(cfg.accum_steps):
            t0 = time.perf_counter()
            _, batch = next(batches)
            wait += time.perf_counter() - t0
            x = batch["fbank"].to(dev, non_blocking=True)             # [b,1,T,128]
            targets = None
            if use_targets:
                grid = online_teacher(batch["wave"].to(dev, non_blocking=True)) if online else \
                    batch["targets"].to(dev, non_blocking=True)       # f16 [b,Tt,Ft,D]
                targets = map_targets(grid, index).float()            # [b,N,D]
            labels = batch["label"].to(dev, non_blocking=True) if use_cls else None
            gen = torch.Generator(device=dev).manual_seed(mask_seed(cfg.seed, step, dist.rank, micro))
            sync = ddp_model.no_sync() if dist.enabled and micro < cfg.accum_steps - 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss, parts, _ = step_model(x, targets=targets, labels=labels, generator=gen)
                scaler.scale(loss / cfg.accum_steps).backward()
            win_loss += loss.detach() / cfg.accum_steps
            for k, v in parts.items():
                win_parts[k] = win_parts.get(k, 0.0) + v.detach().float() / cfg.accum_steps
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        win_n += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == end:                  # the only per-step host sync
            loss_v = D.all_reduce_mean(win_loss / win_n).item()
            if not np.isfinite(loss_v):
                raise FloatingPointError(
                    f"[pretrain] {cfg.name}: the loss became non-finite ({loss_v}) between updates "
                    f"{step - win_n + 1} and {step}; stopping. Lower lr, enable grad_clip, or use amp=bf16/off. "
                    f"The last good checkpoint is {ckpt_path}.")
            dt = time.perf_counter() - t_win
            rec = {"step": step, "epoch": step / spe, "lr": opt.param_groups[0]["lr"], "loss": loss_v,
                   **({"teacher": teacher} if teacher else {}),
                   **{k: D.all_reduce_mean(v / win_n).item() for k, v in win_parts.items()},
                   "clips_per_s": win_n * cfg.batch_size / dt, "data_wait": wait / dt}
            if main_rank:
                with log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{rec['lr']:.2e}")
            win_loss.zero_(); win_parts, win_n, wait, t_win = {}, 0, 0.0, time.perf_counter()
        if step % cfg.ckpt_every == 0 or step == end:
            if not torch.isfinite(D.all_reduce_mean(loss.detach())).item():   # never checkpoint a diverged model
                raise FloatingPointError(f"[pretrain] {cfg.name}: non-finite loss at update {step}; "
                                         f"not overwriting {ckpt_path}. Lower lr or enable grad_clip.")
            if main_rank:
                checkpoint(ckpt_path, step)
            D.barrier()
    bar.close()

    final = out / "checkpoint-final.pt"
    if main_rank and step == total:
        checkpoint(final, step, full=False)
        (Path(cfg.run_dir) / "latest-pretrain").write_text(str(final.resolve()) + "\n")
        plot_curves(log_path, out / "curves.png")
        print(f"[pretrain] done: {final}", flush=True)
    del step_model, ddp_model, batches, loader       # free DDP's reducer before its process group (else gloo can hang at exit)
    D.barrier()
    D.cleanup()
    return final if step == total else ckpt_path


def _truncate_log(path: Path, step: int) -> None:
    """Keep only log lines up to update `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def load_pretrain_config(preset: str | None, overrides: list[str] | None = None) -> PretrainConfig:
    """PretrainConfig from configs/pretrain/<preset>.toml (or a .toml path) and key=value overrides."""
    return load_config(PretrainConfig, preset, overrides, kind="pretrain")

