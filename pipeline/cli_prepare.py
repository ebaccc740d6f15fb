"""CLI: `supmam prepare ...` (owner: readers / prepare). Parse, read the dataset, call pipeline.prepare."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

prepare_app = typer.Typer(no_args_is_help=True)

WORKERS = typer.Option(os.cpu_count() or 1, "--workers", help="worker processes (default: all cores)")
BLOCK = typer.Option(64, "--block-size", help="clips per resumable block (part file)")
OUT = typer.Option(..., "--out", help="clip store to write (F.h5)")


def _run(read, out: Path, workers: int, block_size: int) -> None:
    from cache_tools.errors import StoreError
    from pipeline.prepare import PrepareError, prepare, summary_line
    from pipeline.readers import LayoutError
    try:
        report = prepare(read(), out, workers=workers, block_size=block_size)
    except (LayoutError, StoreError, PrepareError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary_line(report))


@prepare_app.command("audioset")
def audioset(root: Path = typer.Option(..., "--root", help="AudioSet root (CSVs + audio/)"),
             split: Optional[str] = typer.Option(None, "--split", help="balanced_train | unbalanced_train | eval"),
             manifest: Optional[Path] = typer.Option(None, "--manifest", help="AST/AudioMAE JSON manifest"),
             out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """AudioSet segment CSVs (or a JSON manifest) -> clip store."""
    from pipeline.readers import read_audioset
    _run(lambda: read_audioset(root, split=split, manifest=manifest), out, workers, block_size)


@prepare_app.command("esc50")
def esc50(root: Path = typer.Option(..., "--root", help="ESC-50 root (meta/esc50.csv + audio/)"),
          out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """ESC-50 (all five folds, fold stored per clip) -> clip store."""
    from pipeline.readers import read_esc50
    _run(lambda: read_esc50(root), out, workers, block_size)


@prepare_app.command("spc2")
def spc2(root: Path = typer.Option(..., "--root", help="Speech Commands v0.02 root"),
         split: str = typer.Option(..., "--split", help="train | valid | test"),
         out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Speech Commands v0.02 (35 words) -> clip store."""
    from pipeline.readers import read_spc2
    _run(lambda: read_spc2(root, split), out, workers, block_size)


@prepare_app.command("spc1")
def spc1(root: Path = typer.Option(..., "--root", help="Speech Commands v0.01 root"),
         test_root: Optional[Path] = typer.Option(None, "--test-root", help="speech_commands_test_set_v0.01"),
         split: str = typer.Option(..., "--split", help="train | valid | test"),
         out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Speech Commands v0.01 as SUPERB's KS1 (12 classes) -> clip store."""
    from pipeline.readers import read_spc1
    _run(lambda: read_spc1(root, test_root, split), out, workers, block_size)


@prepare_app.command("all")
def all_(root: Path = typer.Option(Path("data/mini"), "--root", help="mini-data root"),
         out: Path = typer.Option(Path("data/stores"), "--out", help="folder for the stores"),
         workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Every mini store (AudioSet x3, ESC-50, SPC-2 x3, SPC-1 x3); complete stores are skipped."""
    from pipeline.prepare import mini_jobs
    for name, read in mini_jobs(root):
        _run(read, out / name, workers, block_size)
