"""Pretraining's config: PretrainConfig, and how a preset and key=value overrides become one
(configs/pretrain/<preset>.toml; every value's source in docs/fidelity.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cache_tools.errors import ConfigError
from cache_tools.names import PRETRAIN_SETS, target_store_path
from train.config import AT_LEAST_0, AT_LEAST_1, RunConfig, load_config
from train.model.models_mam import MAMConfig


@dataclass
class PretrainConfig(RunConfig):
    model: MAMConfig = field(default_factory=MAMConfig)
    clips: list[str] = field(default_factory=list)    # clip stores read as one dataset; [] = clip_set's in `stores`
    targets: list[str] = field(default_factory=list)  # one per clip store; [] = each beside its clip store
    clip_set: Literal["as2m", "unbalanced"] = "as2m"   # the stores `clips = []` means (names.PRETRAIN_SETS)
    teacher: Literal["cached", "online"] = "cached"   # online: the teacher runs inside the step
    roll_mag_aug: bool = False    # AudioMAE's gain Beta(10, 10) + 0.5 on the student's input (targets as cached)
    batch_size: int = 128
    accum_steps: int = 1          # micro-steps per update (per-rank micro batch = batch / (accum * world))
    blr: float = 4e-4             # lr = blr * batch / 256: 2e-4 at batch 128
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0         # > 0 wins over warmup_epochs
    epochs: int = 32
    max_steps: int = 0            # > 0 caps the run at this many updates (the schedule spans them)
    compile: str = ""             # torch.compile backend for the model step ("inductor" on GPUs; "" = eager)
    target_alignment: Literal["nearest", "bilinear"] = "nearest"   # teacher cell(s) per student patch
    target_padding: Literal["map", "drop"] = "map"   # drop: patches past a clip's real end are out of Eq. 1
    allow_untrained_teacher: bool = False   # train on targets of a seeded-random teacher (mini presets)
    ckpt_every: int = 1000
    tensorboard: bool = False     # also write TensorBoard events to <run>/tb (pip install 'supmam-clap[tensorboard]')

    RANGES = {"accum_steps": AT_LEAST_1, "warmup_steps": AT_LEAST_0, "max_steps": AT_LEAST_0,
              "ckpt_every": AT_LEAST_1}


def load_pretrain_config(preset: str | None, overrides: list[str] | None = None) -> PretrainConfig:
    """PretrainConfig from configs/pretrain/<preset>.toml (or a .toml path) and key=value overrides;
    empty store lists and run name are filled in (`clip_set`'s stores in `stores`, each target store
    beside its clip store, the preset's name). A single store path is a list of one."""
    cfg = load_config(PretrainConfig, preset, overrides, kind="pretrain")
    clips = cfg.clips or [str(Path(cfg.stores) / n) for n in PRETRAIN_SETS[cfg.clip_set]]
    targets = cfg.targets or [str(target_store_path(c)) for c in clips]
    if len(targets) != len(clips):
        raise ConfigError(f"{len(clips)} clip stores {clips} but {len(targets)} target stores {targets}: give one "
                          f"target store per clip store, in the same order (or none: each beside its clip store)")
    return dataclasses.replace(cfg, clips=clips, targets=targets,
                               name=cfg.name or (Path(preset).stem if preset else "pretrain"))
