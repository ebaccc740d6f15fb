"""Learning-rate schedule: linear warmup then cosine decay, stepped once per optimizer update.

A thin, documented use of timm's `CosineLRScheduler` (per-update mode, `t_in_epochs=False`): the lr
at update `t` is a pure function of `t`, so the loop calls `sched.step_update(t)` before every
update and a resumed run gets exactly the lr an uninterrupted run would have had.

    t < warmup:            lr = base_lr * t / warmup
    warmup <= t <= total:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2
"""
from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr: float) -> CosineLRScheduler:
    """Cosine schedule over `total_steps` updates whose first `warmup_steps` warm up linearly from 0."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    decay = max(total_steps - warmup_steps, 2)  # timm warns on a 1-step cycle
    return CosineLRScheduler(optimizer, t_initial=decay, lr_min=min_lr, warmup_t=warmup_steps,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False, cycle_limit=1)

