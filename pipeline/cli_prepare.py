"""CLI: `supmam prepare ...` (owner: readers / prepare)."""
import typer

prepare_app = typer.Typer(no_args_is_help=True)
