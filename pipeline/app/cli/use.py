"""Using a trained encoder: `supmam embed` (audio files -> embeddings) and `supmam export` (timm /
safetensors). Each parses its options and calls one library function (train.use.embed_files,
train.use.export); errors are left to the app's policy (pipeline.app.cli).
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer


class ExportFormat(str, Enum):
    timm = "timm"
    safetensors = "safetensors"


def embed(
    inputs: Optional[List[Path]] = typer.Argument(None, help="audio files and / or folders (searched recursively)"),
    ckpt: Path = typer.Option(..., "--ckpt", help="encoder: checkpoint.pt (pretrain / finetune), AudioMAE's "
                                                  ".pth, or a `supmam export` folder"),
    out: Path = typer.Option(..., "--out", help="HDF5 file to write (clip + frame embeddings)"),
    files_from: Optional[Path] = typer.Option(None, "--files-from", help="text file: one audio path per line"),
    layer: int = typer.Option(-1, "--layer", help="transformer block (0 = first, -1 = last, after the final norm)"),
    hop: Optional[float] = typer.Option(None, "--hop", help="seconds between windows of long clips "
                                                           "(default: the window, no overlap)"),
    max_seconds: float = typer.Option(3600.0, "--max-seconds", help="read at most this much of each file"),
    block_size: int = typer.Option(32, "--block-size", min=1, help="clips per resumable block"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
) -> None:
    """Audio files -> clip and frame embeddings in one HDF5 file (resumable; bad files skipped and listed)."""
    from cache_tools.atomic import check_name_room
    from train.use.embed import load_pretrained
    from train.use.embed_files import embed_files, summary_line
    check_name_room(out, ".report.json", ".parts", ".lock", ".tmp")
    enc = load_pretrained(ckpt, device=device)
    typer.echo(f"[embed] {ckpt}: {enc.depth} blocks x {enc.embed_dim}-d, window {enc.window_frames} frames; "
               f"normalisation {enc.norm_source}", err=True)
    report = embed_files(enc, inputs or [], out, layer=layer, hop=hop, max_seconds=max_seconds,
                         block_size=block_size, files_from=files_from)
    typer.echo(summary_line(report))


def export(
    ckpt: Path = typer.Option(..., "--ckpt", help="checkpoint.pt (pretrain / finetune) or AudioMAE's .pth"),
    fmt: ExportFormat = typer.Option(ExportFormat.timm, "--format", help="timm: config.json loads with "
                                     "timm.create_model('local-dir:OUT', pretrained=True); safetensors: "
                                     "weights + our config only"),
    out: Path = typer.Option(..., "--out", help="folder to write model.safetensors and config.json into"),
    overwrite: bool = typer.Option(False, "--overwrite", help="write into a non-empty folder export did not make "
                                   "(replaces model.safetensors and config.json there)"),
) -> None:
    """Encoder -> OUT/model.safetensors + OUT/config.json (normalisation stats included; no pickle)."""
    from cache_tools.atomic import check_name_room
    from train.use.embed import load_pretrained
    from train.use.export import write_export
    check_name_room(out, ".lock")
    enc = load_pretrained(ckpt)
    write_export(enc.vit, out, fmt.value, norm={"mean": enc.norm_mean, "std": enc.norm_std,
                                                "source": enc.norm_source}, source=str(ckpt), overwrite=overwrite)
    typer.echo(f"{out}: model.safetensors + config.json ({fmt.value}; normalisation {enc.norm_source})")
