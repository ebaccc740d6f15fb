"""CLI: `supmam finetune`, `evaluate`, `demo`, `ablate` (owner: fine-tuning)."""
import typer



def register(app: typer.Typer) -> None:
    pass
