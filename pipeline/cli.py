"""`supmam`: the command line. Each stage registers its commands from its own cli_* module."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # laion-clap's imports must never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import typer

from pipeline import cli_data, cli_finetune, cli_prepare, cli_pretrain, cli_targets

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Masked audio modeling with cached CLAP targets (MAM-CLAP, SupMAM, SupMAM-CLAP, AudioMAE).")
app.add_typer(cli_data.data_app, name="data", help="Built-in mini datasets.")
app.add_typer(cli_prepare.prepare_app, name="prepare", help="Audio folders -> HDF5 clip stores.")
app.add_typer(cli_targets.store_app, name="store", help="Inspect / verify clip and target stores.")
cli_targets.register(app)    # supmam targets
cli_pretrain.register(app)   # supmam pretrain
cli_finetune.register(app)   # supmam finetune / evaluate / demo / ablate

if __name__ == "__main__":
    app()
