"""CLI: `supmam pretrain` (owner: stage two). Parses, builds the online teacher if asked, calls train.pretrain."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from train.config import ConfigError

TEACHERS = ("cached", "online")


def online_teacher(clap_ckpt: Path | None, clap_model: str, seed: int, device: str):
    """Stage one's CLAP teacher as the callable pretraining runs inside each step (`--teacher online`)."""
    import torch

    from pipeline.teacher import ClapTeacher
    from train.pretrain import OnlineTeacher

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    t = ClapTeacher.from_checkpoint(clap_ckpt, model=clap_model, fusion=False, seed=seed, device=dev,
                                    amp_dtype="fp16" if dev.startswith("cuda") else None)   # as `supmam targets`
    d = t.describe()

    def fn(wave16k: torch.Tensor) -> torch.Tensor:          # [B,S] -> [B,Tt,Ft,D] f16, as stage one stores it
        with torch.autocast("cuda", dtype=torch.float16, enabled=dev.startswith("cuda")):  # as pipeline/targets.py
            grid = t.token_grid(wave16k)                    # [B,D,Ft,Tt]
        return grid.permute(0, 3, 2, 1).to(torch.float16)   # [B,Tt,Ft,D]

    return OnlineTeacher(fn=fn, name=f"{d['teacher']} ({d['checkpoint_sha256']})", grid=tuple(d["grid"]),
                         dim=int(d["dim"]), teacher_mel=dict(d["teacher_mel"]))


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain(
        overrides: Optional[List[str]] = typer.Argument(None, help="config overrides key=value (e.g. model.mask_ratio=0.3 max_steps=50)"),
        preset: str = typer.Option("supmam-clap-mini", help="configs/pretrain/<preset>.toml or a path to a .toml"),
        clips: Optional[Path] = typer.Option(None, help="clip store (.h5)"),
        targets: Optional[Path] = typer.Option(None, help="target store (.zarr); not needed by rec/cls-only presets"),
        runs: Optional[Path] = typer.Option(None, help="runs folder (the run goes to <runs>/<name>)"),
        name: Optional[str] = typer.Option(None, help="run name (default: the preset's name)"),
        resume: bool = typer.Option(False, "--resume", help="continue from <runs>/<name>/checkpoint.pt if it exists"),
        teacher: str = typer.Option("cached", help="cached: read the target store; online: run the CLAP teacher in the step"),
        clap_ckpt: Optional[Path] = typer.Option(None, help="CLAP checkpoint for --teacher online (none: seeded random weights)"),
        clap_model: str = typer.Option("HTSAT-tiny", help="laion-clap audio model for --teacher online"),
        teacher_seed: int = typer.Option(0, help="seed of an untrained online teacher (match the target store's)"),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    ) -> None:
        """Pretrain the masked audio model (AudioMAE / SupMAM / MAM-CLAP / SupMAM-CLAP); torchrun for DDP."""
        from train.pretrain import load_pretrain_config, main

        if teacher not in TEACHERS:
            raise typer.BadParameter(f"--teacher must be one of {TEACHERS}, got {teacher!r}")
        opts = {"clips": clips, "targets": targets, "run_dir": runs, "device": device, "teacher": teacher,
                "name": name or Path(preset).stem}
        ovs = [f"{k}={v}" for k, v in opts.items() if v is not None] + list(overrides or [])
        try:
            cfg = load_pretrain_config(preset, ovs)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        from cache_tools.errors import StoreError
        from train.checkpoint import CheckpointError
        from pipeline.teacher import TeacherError
        from train.data import StoreMismatch
        try:
            fn = None
            if cfg.teacher == "online" and "clap" in cfg.model.objectives:
                fn = online_teacher(clap_ckpt, clap_model, teacher_seed, cfg.device)
            final = main(cfg, online_teacher=fn, resume=resume)
        except (StoreError, StoreMismatch, CheckpointError, TeacherError, FileNotFoundError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)          # the message names the file and the problem
            raise typer.Exit(1) from None
        typer.echo(str(final))
