"""Stage-two commands: `supmam pretrain`, `finetune`, `evaluate`, `probe`.

Each parses its options and calls one library function (train.pretrain.run, train.finetune.run,
train.finetune.evaluate, train.probe.run); errors are left to the app's policy (pipeline.app.cli).
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from train.finetune.tasks import TASKS

TaskName = Enum("TaskName", {t: t for t in TASKS}, type=str)   # the task registry's: as2m | as20k | ...


class TeacherMode(str, Enum):
    cached = "cached"      # read the target store
    online = "online"      # run the CLAP teacher inside the step


def pretrain(
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides key=value "
                                                               "(e.g. model.mask_ratio=0.3 max_steps=50)"),
    preset: str = typer.Option("supmam-clap-mini", help="configs/pretrain/<preset>.toml or a path to a .toml"),
    clips: Optional[List[Path]] = typer.Option(None, help="clip store (.h5); repeat for several stores read as "
                                                          "one dataset (default: the preset's clip_set in stores)"),
    targets: Optional[List[Path]] = typer.Option(None, help="target store (.zarr), one per --clips in the same "
                                                            "order (default: beside each clip store); not "
                                                            "needed by rec/cls-only presets"),
    runs: Optional[Path] = typer.Option(None, help="runs folder (the run goes to <runs>/<name>)"),
    name: Optional[str] = typer.Option(None, help="run name (default: the preset's name)"),
    resume: bool = typer.Option(False, "--resume", help="continue from <runs>/<name>/checkpoint.pt if it exists"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run folder that holds a checkpoint"),
    teacher: TeacherMode = typer.Option(TeacherMode.cached, help="cached: read the target store; "
                                                                 "online: run the CLAP teacher in the step"),
    clap_ckpt: Optional[Path] = typer.Option(None, help="CLAP checkpoint for --teacher online "
                                                        "(none: seeded random weights)"),
    clap_model: str = typer.Option("HTSAT-tiny", help="laion-clap audio model for --teacher online"),
    teacher_seed: int = typer.Option(0, help="seed of an untrained online teacher (match the target store's)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Pretrain the masked audio model (AudioMAE / SupMAM / MAM-CLAP / SupMAM-CLAP); torchrun for DDP."""
    from train.pretrain.config import load_pretrain_config
    from train.pretrain.run import run_pretrain
    opts = {"clips": json.dumps([str(c) for c in clips]) if clips else None,
            "targets": json.dumps([str(t) for t in targets]) if targets else None,
            "run_dir": runs, "device": device, "teacher": teacher.value, "name": name}
    cfg = load_pretrain_config(preset, [f"{k}={v}" for k, v in opts.items() if v is not None] + list(overrides or []))
    fn = None
    if cfg.teacher == "online" and "clap" in cfg.model.objectives:
        from pipeline.app.online_teacher import online_teacher
        fn = online_teacher(clap_ckpt, clap_model, teacher_seed, cfg.device)
    typer.echo(str(run_pretrain(cfg, online_teacher=fn, resume=resume, overwrite=overwrite)))


def finetune(
    task: TaskName = typer.Option(..., "--task", help=" | ".join(TASKS)),
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides key=value (e.g. epochs=3)"),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help="configs/finetune/NAME.toml or a .toml path (default: the task)"),
    init: Optional[str] = typer.Option(None, "--init", help="encoder checkpoint (ours or AudioMAE's .pth), "
                                       "`latest` (RUNS/latest-pretrain, the default) or `none` (random init)"),
    stores: Optional[Path] = typer.Option(None, "--stores", help="folder of clip stores (default data/stores)"),
    clips: Optional[Path] = typer.Option(None, "--clips", help="train on this clip store (key train_clips; "
                                         "--task custom: the store `supmam prepare folder` wrote)"),
    runs: Optional[Path] = typer.Option(None, "--runs", help="folder for run outputs (default runs)"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: finetune-<preset>-<init>)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (torchrun: one GPU "
                                                               "per rank)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run folder that holds a checkpoint"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed run (same --name) from the last epoch "
                                                        "it finished (RUNS/NAME/last.pt; ESC-50: per fold)"),
) -> None:
    """Fine-tune an encoder on a task and evaluate it; results in RUNS/NAME/. The options set the
    config keys init, stores, train_clips, run_dir, name and device."""
    from train.finetune.config import load_finetune_config
    from train.finetune.run import run_finetune
    opts = {"init": init, "stores": stores, "train_clips": clips, "run_dir": runs, "name": name, "device": device}
    ovs = [f"{k}={v}" for k, v in opts.items() if v is not None] + list(overrides or [])
    m = run_finetune(load_finetune_config(preset, ovs, task=task.value), resume=resume, overwrite=overwrite)
    if m:
        std = f" ± {m['std']:.4f}" if "std" in m else ""
        typer.echo(f"{m['task']}: test {m['metric']} {m['score']:.4f}{std} ({m['num_test_clips']} clips)")


def evaluate(
    ckpt: Path = typer.Option(..., "--ckpt", help="a checkpoint.pt written by `supmam finetune`"),
    task: Optional[TaskName] = typer.Option(None, "--task", help="check the checkpoint is for this task"),
    stores: Optional[Path] = typer.Option(None, "--stores", help="look for the checkpoint's store files in this "
                                          "folder (default: the paths it recorded)"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Evaluate a fine-tuned checkpoint on its task's test set (ESC-50: its held-out fold)."""
    from train.finetune.evaluate import evaluate_checkpoint
    typer.echo(json.dumps(evaluate_checkpoint(ckpt, task.value if task else None, stores, device), indent=2))


class ProbeHead(str, Enum):
    linear = "linear"
    mlp = "mlp"          # one hidden layer


def probe(
    task: TaskName = typer.Option(..., "--task", help=" | ".join(TASKS)),
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides key=value (train.probe.run.ProbeConfig: "
                                                               "layer=, pooling=, lrs=, weight_decays=, steps=, ...)"),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help="encoder checkpoint (ours or AudioMAE's .pth), `latest` "
                                       "(the default) or `none` (seeded random: encoder=, encoder_depth=)"),
    stores: Optional[Path] = typer.Option(None, "--stores", help="folder of clip stores (default data/stores)"),
    clips: Optional[Path] = typer.Option(None, "--clips", help="the clip store (--task custom: from `supmam prepare "
                                         "folder`)"),
    head: ProbeHead = typer.Option(ProbeHead.linear, "--head", help="linear | mlp"),
    runs: Optional[Path] = typer.Option(None, "--runs", help="folder for run outputs and the feature cache "
                                        "(default runs)"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: probe-<task>-<ckpt>-<head>)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run folder that holds a probe's results"),
    resume: bool = typer.Option(False, "--resume", help="run again into a folder that holds a probe's results, "
                                                        "with the same settings (features from the cache)"),
) -> None:
    """Linear probe of a frozen encoder: features computed once (cached), heads swept on validation;
    results in RUNS/NAME/. The options set the config keys ckpt, stores, train_clips, head, run_dir,
    name and device."""
    from train.probe.run import load_probe_config, run_probe
    opts = {"task": task.value, "ckpt": ckpt, "stores": stores, "train_clips": clips, "head": head.value,
            "run_dir": runs, "name": name, "device": device}
    m = run_probe(load_probe_config([f"{k}={v}" for k, v in opts.items() if v is not None] + list(overrides or [])),
                  resume=resume, overwrite=overwrite)
    p, std = m["probe"], f" ± {m['std']:.4f}" if "std" in m else ""
    typer.echo(f"{m['task']}: probe ({p['head']}) test {m['metric']} {m['score']:.4f}{std} ({m['num_test_clips']} "
               f"clips); encoder unchanged (sha256 {p['encoder_sha256'][:12]}); features {p['embed_seconds']:.1f} s"
               f"{' (cached)' if all(c['hit'] for c in p['features']) else ''}, heads {p['head_seconds']:.1f} s")
