"""CLI: `supmam targets` and `supmam store ...` (owner: stage one)."""
import typer

store_app = typer.Typer(no_args_is_help=True)


def register(app: typer.Typer) -> None:
    pass
