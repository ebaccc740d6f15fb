"""End-to-end runs: `supmam demo` (the whole chain on the mini data) and `supmam ablate` (the
paper's ablations from one target store). Each calls its library function (pipeline.app.demo,
pipeline.app.ablate); errors, also those of side-by-side workers, follow the app's policy (pipeline.app.cli).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def demo(data: Path = typer.Option(Path("data/mini"), help="mini-data root"),
         stores: Path = typer.Option(Path("data/stores"), help="clip / target stores folder"),
         runs: Path = typer.Option(Path("runs"), help="runs folder"),
         seed: int = typer.Option(0), clap_ckpt: Optional[Path] = typer.Option(None, help="laion-clap checkpoint"),
         device: str = typer.Option("cpu"), scale: float = typer.Option(1.0, help="mini-data scale")) -> None:
    """The whole chain on the built-in mini data, ending in one summary table (runs/demo/summary.md)."""
    from pipeline.app.demo import run_demo
    run_demo(data, stores, runs, seed=seed, clap_ckpt=clap_ckpt, device=device, scale=scale)


def ablate(stores: Path = typer.Option(Path("data/stores"), help="clip / target stores folder"),
           runs: Path = typer.Option(Path("runs/ablate"), help="runs folder for the sweep"),
           seed: int = typer.Option(0), device: str = typer.Option("cpu"),
           tables: str = typer.Option("all", help="comma list of: table2, table3, table4, table5 (the paper's), "
                                                  "clap-lambda, options (interpretation sweeps); or paper, all"),
           steps: Optional[int] = typer.Option(None, help="pretraining updates per run (default: preset's)")) -> None:
    """Paper Tables 2-5 on the mini data: sweeps that reuse ONE target store (checksums checked)."""
    from pipeline.app.ablate import run_ablation
    run_ablation(stores, runs, seed=seed, device=device, tables=tables, steps=steps)
