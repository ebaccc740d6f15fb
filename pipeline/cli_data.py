"""CLI: `supmam data ...` (owner: mini datasets)."""
from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(no_args_is_help=True)


@data_app.command("mini")
def mini(root: Path = typer.Option(Path("data/mini"), help="Folder to write the mini datasets into."),
         seed: int = typer.Option(0, help="Same seed (and scale) -> byte-identical files."),
         scale: float = typer.Option(1.0, help="Multiplies every dataset's size (speakers, clips per class)."),
         only: list[str] = typer.Option(["audioset", "esc50", "spc"], help="Which datasets: audioset, esc50, spc."),
         workers: int = typer.Option(0, help="Speech-synthesis processes (0: up to 2)."),
         ) -> None:
    """Write the built-in mini AudioSet, ESC-50 and Speech Commands (v0.01, v0.02, SUPERB test set)."""
    from pipeline.minidata import generate
    try:
        generate(root, seed=seed, scale=scale, which=tuple(only), workers=workers or None)
    except (ValueError, FileExistsError) as err:
        raise typer.BadParameter(str(err)) from err
