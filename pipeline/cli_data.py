"""CLI: `supmam data ...` (owner: mini datasets)."""
import typer

data_app = typer.Typer(no_args_is_help=True)
