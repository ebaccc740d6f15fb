"""CLI: `supmam data ...` and `supmam prepare ...` (owner: data/prepare)."""
import typer

data_app = typer.Typer(no_args_is_help=True)
prepare_app = typer.Typer(no_args_is_help=True)
