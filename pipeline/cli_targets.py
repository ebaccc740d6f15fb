"""CLI: `supmam targets` and `supmam store ...` (owner: stage one)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

store_app = typer.Typer(no_args_is_help=True)


@store_app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="A clip store (.h5) or target store (.zarr).")) -> None:
    """Describe a clip store or target store."""
    from cache_tools.inspect import inspect_store
    from cache_tools.errors import StoreError

    try:
        typer.echo(inspect_store(path))
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


@store_app.command("verify")
def verify(path: Path = typer.Argument(..., help="A clip store (.h5) or target store (.zarr)."),
           clips: Optional[Path] = typer.Option(None, help="Clip store the targets must have been made from.")) -> None:
    """Recompute shard checksums, report incomplete / corrupt shards, check the clip fingerprint."""
    from cache_tools.inspect import verify_store

    problems = verify_store(path, clips)
    for p in problems:
        typer.echo(f"error: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: OK")


def targets(clips: Path = typer.Option(..., help="Clip store (HDF5) to run the teacher over."),
            out: Path = typer.Option(..., help="Target store to write (Zarr v3 directory)."),
            clap_ckpt: Optional[Path] = typer.Option(None, help="laion-clap checkpoint; none: seeded random weights."),
            clap_model: str = typer.Option("HTSAT-tiny", help="HTSAT-tiny | HTSAT-base."),
            fusion: bool = typer.Option(False, "--fusion", help="Fusion model (checkpoints trained with fusion)."),
            batch_size: int = typer.Option(8, min=1),
            device: str = typer.Option("cpu", help="cpu | cuda (under torchrun: this rank's GPU)."),
            clips_per_shard: Optional[int] = typer.Option(None, min=1, help="Default: ~128 MiB shards."),
            compression: Optional[str] = typer.Option(None, help="None (memory-mappable) or zstd."),
            workers: int = typer.Option(2, min=0, help="DataLoader workers reading the clip store."),
            seed: int = typer.Option(0, help="Seed of the random teacher weights when there is no checkpoint.")) -> None:
    """Clip store -> target store: run the CLAP teacher once over every clip (resumable; torchrun shards)."""
    from cache_tools.clip_store import ClipStore
    from cache_tools.errors import StoreError
    from pipeline.targets import build_targets
    from pipeline.teacher import ClapTeacher, TeacherError

    if device.startswith("cuda"):
        import os
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device == "cuda" else device
    try:
        store = ClipStore(clips)
        teacher = ClapTeacher.from_checkpoint(clap_ckpt, model=clap_model, fusion=fusion, seed=seed, device=device,
                                              amp_dtype="fp16" if device.startswith("cuda") else None)
        build_targets(store, out, teacher, checkpoint=str(clap_ckpt) if clap_ckpt else None, batch_size=batch_size,
                      device=device, clips_per_shard=clips_per_shard, workers=workers, compression=compression)
    except (StoreError, TeacherError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)      # names the file and the problem
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("targets")(targets)
