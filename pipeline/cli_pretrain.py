"""CLI: `supmam pretrain` (owner: stage two)."""
import typer



def register(app: typer.Typer) -> None:
    pass
