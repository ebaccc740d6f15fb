"""CLI: `supmam finetune`, `evaluate`, `demo`, `ablate` (owner: fine-tuning).

Commands are thin: parse, then call train.finetune / train.evaluate. `demo` and `ablate` are
registered here by their own modules' owners (pipeline/demo.py, pipeline/ablate.py).
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer


class TaskName(str, Enum):
    as2m = "as2m"
    as20k = "as20k"
    esc50 = "esc50"
    spc1 = "spc1"
    spc2 = "spc2"


def finetune(
    task: TaskName = typer.Option(..., "--task", help="as2m | as20k | esc50 | spc1 | spc2"),
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides key=value (e.g. epochs=3)"),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help="configs/finetune/NAME.toml or a .toml path (default: the task)"),
    init: str = typer.Option("latest", "--init", help="encoder checkpoint (ours or AudioMAE's .pth), `latest` "
                                                      "(runs/latest-pretrain) or `none` (random init)"),
    stores: Path = typer.Option(Path("data/stores"), "--stores", help="folder of clip stores"),
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder for run outputs"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: finetune-<preset>-<init>)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (torchrun: one GPU per rank)"),
) -> None:
    """Fine-tune an encoder on a task and evaluate it; results in RUNS/NAME/."""
    from train.config import ConfigError
    from train.finetune import FinetuneError, run_finetune
    from train.finetune_data import DataError
    from cache_tools.errors import StoreError
    try:
        m = run_finetune(task.value, preset, init, stores, runs, name, overrides or [], device)
    except (FinetuneError, ConfigError, DataError, StoreError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if m:
        std = f" ± {m['std']:.4f}" if "std" in m else ""
        typer.echo(f"{m['task']}: test {m['metric']} {m['score']:.4f}{std} ({m['num_test_clips']} clips)")


def evaluate(
    ckpt: Path = typer.Option(..., "--ckpt", help="a checkpoint.pt written by `supmam finetune`"),
    task: Optional[TaskName] = typer.Option(None, "--task", help="check the checkpoint is for this task"),
    stores: Path = typer.Option(Path("data/stores"), "--stores", help="folder of clip stores"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Evaluate a fine-tuned checkpoint on its task's test set (ESC-50: its held-out fold)."""
    from train.evaluate import EvaluateError, evaluate_checkpoint
    from train.checkpoint import CheckpointError
    from train.finetune_data import DataError
    from cache_tools.errors import StoreError
    try:
        m = evaluate_checkpoint(ckpt, task.value if task else None, stores, device)
    except (EvaluateError, CheckpointError, DataError, StoreError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(m, indent=2))


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
    app.command("evaluate")(evaluate)
    register_orchestration(app)


def demo(data: Path = typer.Option(Path("data/mini"), help="mini-data root"),
         stores: Path = typer.Option(Path("data/stores"), help="clip / target stores folder"),
         runs: Path = typer.Option(Path("runs"), help="runs folder"),
         seed: int = typer.Option(0), clap_ckpt: Optional[Path] = typer.Option(None, help="laion-clap checkpoint"),
         device: str = typer.Option("cpu"), scale: float = typer.Option(1.0, help="mini-data scale")) -> None:
    """The whole chain on the built-in mini data, ending in one summary table (runs/demo/summary.md)."""
    from pipeline.demo import run_demo
    run_demo(data, stores, runs, seed=seed, clap_ckpt=clap_ckpt, device=device, scale=scale)


def ablate(stores: Path = typer.Option(Path("data/stores"), help="clip / target stores folder"),
           runs: Path = typer.Option(Path("runs/ablate"), help="runs folder for the sweep"),
           seed: int = typer.Option(0), device: str = typer.Option("cpu"),
           tables: str = typer.Option("all", help="comma list of: mask, objectives, lambda (or all)"),
           steps: Optional[int] = typer.Option(None, help="pretraining updates per run (default: the preset's)")) -> None:
    """Paper Tables 2-5 on the mini data: sweeps that reuse ONE target store (checksums checked)."""
    from pipeline.ablate import run_ablation
    run_ablation(stores, runs, seed=seed, device=device, tables=tables, steps=steps)


def register_orchestration(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("ablate")(ablate)
