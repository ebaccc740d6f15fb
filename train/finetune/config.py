"""Fine-tuning's config: FinetuneConfig (and the custom task's CustomFinetuneConfig), how a preset and
overrides become one, and where the `init` checkpoint is."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from cache_tools.errors import ConfigError
from train.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT, UNIT_OPEN, EncoderSize, Range, RunConfig, check_ranges, load_config, preset_value
from train.finetune.tasks import TASKS, TaskName


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
    # data: clip store paths; empty = the task's stores (train/finetune/tasks.py) under `stores`
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
    # augmentation / loss (the training clips' augmentation: train/finetune/augment.py, in AudioMAE's order)
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
    test_each_epoch: bool = False    # with a validation split, also score the test set at each evaluation:
                                     # best_over_epochs, what AudioMAE prints (never the headline)

    RANGES = {"epoch_len": AT_LEAST_0, "layer_decay": Range(0, 1, lo_open=True), "mask_t_prob": UNIT_OPEN,
              "mask_f_prob": UNIT_OPEN, "freqm": AT_LEAST_0, "timem": AT_LEAST_0, "mixup": UNIT,
              "mixup_beta": POSITIVE, "label_smoothing": UNIT_OPEN, "eval_batch_size": AT_LEAST_1,
              "eval_every": AT_LEAST_1, "folds": AT_LEAST_0}


@dataclass
class CustomFinetuneConfig(FinetuneConfig):
    """FinetuneConfig plus the split of a store that brings neither a split column nor folds."""
    valid_fraction: float = 0.1
    test_fraction: float = 0.2

    RANGES = {"valid_fraction": UNIT_OPEN, "test_fraction": Range(0, 1, lo_open=True, hi_open=True)}


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
    """FinetuneConfig, or for the `custom` task its subclass with the split keys (train/finetune/custom.py)."""
    named = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "task"]
    name = named[-1] if named else (preset_value(preset, "finetune", "task") if preset else task)
    if name == "custom":
        return CustomFinetuneConfig
    return FinetuneConfig


def resolve_init(init: str, runs: str | Path) -> Path | None:
    """`none` -> None (random init); `latest` -> the path in runs/latest-pretrain; else a checkpoint path."""
    if init.lower() == "none":
        return None
    if init == "latest":
        marker = Path(runs) / "latest-pretrain"
        if not marker.exists():
            raise ConfigError(f"--init latest: {marker} does not exist, so there is no pretraining checkpoint "
                                "yet. Run `make pretrain` first, or pass --init PATH (ours or AudioMAE's "
                                "pretrained.pth), or --init none to fine-tune from random weights.")
        text = marker.read_text().strip()
        path = Path(text)
        if not path.exists() and (Path(runs).parent / text).exists():
            path = Path(runs).parent / text
        if not path.exists():
            raise ConfigError(f"--init latest: {marker} points at {text}, which does not exist; "
                                "run `make pretrain` again or pass --init PATH")
        return path
    path = Path(init)
    if not path.exists():
        raise ConfigError(f"{init}: init checkpoint not found")
    return path


def init_tag(init: Path | None) -> str:
    """A run-name tag for an init checkpoint: "scratch", its run folder, or its file stem."""
    if init is None:
        return "scratch"
    return init.parent.name if init.stem in ("checkpoint", "checkpoint-final") else init.stem
