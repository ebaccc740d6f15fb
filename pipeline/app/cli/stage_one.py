"""Stage-one commands: `supmam data mini`, `prepare ...`, `targets`, `store inspect|verify`.

Each parses its options and calls one library function (pipeline.minidata, pipeline.prepare,
pipeline.targets, cache_tools.inspect); errors are left to the app's policy (pipeline.app.cli).
"""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

WORKERS = typer.Option(os.cpu_count() or 1, "--workers", help="worker processes (default: all cores)")
BLOCK = typer.Option(64, "--block-size", help="clips per resumable block (part file)")
OUT = typer.Option(..., "--out", help="clip store to write (F.h5)")


class MiniSet(str, Enum):
    audioset = "audioset"
    esc50 = "esc50"
    spc = "spc"


def data_mini(root: Path = typer.Option(Path("data/mini"), help="Folder to write the mini datasets into."),
              seed: int = typer.Option(0, help="Same seed (and scale) -> byte-identical files."),
              scale: float = typer.Option(1.0, min=1e-6, help="Multiplies every dataset's size (speakers, clips "
                                                              "per class)."),
              only: List[MiniSet] = typer.Option(list(MiniSet), help="Which datasets: audioset, esc50, spc."),
              workers: int = typer.Option(0, help="Speech-synthesis processes (0: up to 2)."),
              ) -> None:
    """Write the built-in mini AudioSet, ESC-50 and Speech Commands (v0.01, v0.02, SUPERB test set)."""
    from pipeline.minidata import generate
    generate(root, seed=seed, scale=scale, which=tuple(o.value for o in only), workers=workers or None)


def _prepare(read, out: Path, workers: int, block_size: int) -> None:
    from pipeline.prepare import prepare, summary_line
    typer.echo(summary_line(prepare(read(), out, workers=workers, block_size=block_size)))


def prepare_audioset(root: Path = typer.Option(..., "--root", help="AudioSet root (CSVs + audio/)"),
                     split: Optional[str] = typer.Option(None, "--split",
                                                         help="balanced_train | unbalanced_train | eval"),
                     manifest: Optional[Path] = typer.Option(None, "--manifest", help="AST/AudioMAE JSON manifest"),
                     out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """AudioSet segment CSVs (or a JSON manifest) -> clip store."""
    from pipeline.readers import read_audioset
    _prepare(lambda: read_audioset(root, split=split, manifest=manifest), out, workers, block_size)


def prepare_esc50(root: Path = typer.Option(..., "--root", help="ESC-50 root (meta/esc50.csv + audio/)"),
                  out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """ESC-50 (all five folds, fold stored per clip) -> clip store."""
    from pipeline.readers import read_esc50
    _prepare(lambda: read_esc50(root), out, workers, block_size)


def prepare_spc2(root: Path = typer.Option(..., "--root", help="Speech Commands v0.02 root"),
                 split: str = typer.Option(..., "--split", help="train | valid | test"),
                 out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Speech Commands v0.02 (35 words) -> clip store."""
    from pipeline.readers import read_spc2
    _prepare(lambda: read_spc2(root, split), out, workers, block_size)


def prepare_spc1(root: Path = typer.Option(..., "--root", help="Speech Commands v0.01 root"),
                 test_root: Optional[Path] = typer.Option(None, "--test-root", help="speech_commands_test_set_v0.01"),
                 split: str = typer.Option(..., "--split", help="train | valid | test"),
                 out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Speech Commands v0.01 as SUPERB's KS1 (12 classes) -> clip store."""
    from pipeline.readers import read_spc1
    _prepare(lambda: read_spc1(root, test_root, split), out, workers, block_size)


def prepare_folder(root: Path = typer.Option(..., "--root", help="folder of your audio files (any format)"),
                   labels: Optional[Path] = typer.Option(None, "--labels", help="CSV: file,label[,split|fold]; "
                                                         "label `a;b` = multi-label; none: one sub-folder per class"),
                   target_length: Optional[int] = typer.Option(None, "--target-length", help="fbank frames per clip "
                                                               "(a multiple of 16); default: from the data"),
                   clip_seconds: Optional[float] = typer.Option(None, "--clip-seconds", help="seconds per clip; "
                                                                "default: from the data (95th percentile)"),
                   out: Path = OUT, workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Your own labelled audio (a CSV or a class-per-folder tree) -> one clip store, per-clip split/fold kept
    (`supmam finetune --task custom --clips OUT`, `supmam probe --task custom --clips OUT`)."""
    from pipeline.readers.folder import read_folder

    def read():
        spec = read_folder(root, labels, target_length, clip_seconds)
        typer.echo(f"{out}: {len(spec.records)} clips, {spec.num_classes} classes "
                   f"({'multi-label' if spec.multilabel else 'single-label'}); {spec.note}")
        return spec
    _prepare(read, out, workers, block_size)


def prepare_all(root: Path = typer.Option(Path("data/mini"), "--root", help="mini-data root"),
                out: Path = typer.Option(Path("data/stores"), "--out", help="folder for the stores"),
                workers: int = WORKERS, block_size: int = BLOCK) -> None:
    """Every mini store (AudioSet x3, ESC-50, SPC-2 x3, SPC-1 x3); complete stores are skipped."""
    from pipeline import prepare
    prepare.prepare_all(root, out, workers=workers, block_size=block_size)


def targets(clips: Path = typer.Option(..., help="Clip store (HDF5) to run the teacher over."),
            out: Path = typer.Option(..., help="Target store to write (Zarr v3 directory)."),
            clap_ckpt: Optional[Path] = typer.Option(None, help="laion-clap checkpoint; none: seeded random weights."),
            clap_model: str = typer.Option("HTSAT-tiny", help="HTSAT-tiny | HTSAT-base."),
            fusion: bool = typer.Option(False, "--fusion", help="Fusion model (checkpoints trained with fusion)."),
            batch_size: int = typer.Option(8, min=1),
            device: str = typer.Option("cpu", help="cpu | cuda (under torchrun: this rank's GPU)."),
            clips_per_shard: Optional[int] = typer.Option(None, min=1, help="Default: ~128 MiB shards."),
            compression: Optional[str] = typer.Option(None, help="None (memory-mappable) or zstd."),
            workers: Optional[int] = typer.Option(None, min=0, help="DataLoader workers decoding the clips' "
                                                  "sources (default: this rank's share of the cores, less one)."),
            seed: int = typer.Option(0, help="Seed of the random teacher weights (no checkpoint)."),
            teacher_input: str = typer.Option("auto", help="auto: each clip read again from its source file at "
                                              "48 kHz where reachable (else its 16 kHz wave); clipstore: always "
                                              "the 16 kHz wave, upsampled (docs/fidelity.md)."),
            source_root: Optional[Path] = typer.Option(None, help="Folder that now holds the clip store's "
                                                       "sources (default: the source_root it records).")) -> None:
    """Clip store -> target store: run the CLAP teacher once over every clip (resumable; torchrun shards)."""
    from pipeline.targets import make_targets
    make_targets(clips, out, clap_ckpt=clap_ckpt, clap_model=clap_model, fusion=fusion, seed=seed, device=device,
                 batch_size=batch_size, clips_per_shard=clips_per_shard, workers=workers, compression=compression,
                 teacher_input=teacher_input, source_root=source_root)


def store_inspect(path: Path = typer.Argument(..., help="A clip store (.h5) or target store (.zarr).")) -> None:
    """Describe a clip store or target store."""
    from cache_tools.inspect import inspect_store
    typer.echo(inspect_store(path))


def store_verify(path: Path = typer.Argument(..., help="A clip store (.h5) or target store (.zarr)."),
                 clips: Optional[Path] = typer.Option(None, help="Clip store the targets must have been made from.")
                 ) -> None:
    """Recompute shard checksums, report incomplete / corrupt shards, check the clip fingerprint."""
    from cache_tools.inspect import verify_store
    notes: list[str] = []
    problems = verify_store(path, clips, notes)
    for n in notes:
        typer.echo(f"note: {n}")
    for p in problems:
        typer.echo(f"error: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: OK")
