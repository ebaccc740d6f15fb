"""The built-in mini datasets, written in the real datasets' layouts so the real readers read them.

generate(root) writes ROOT/audioset, ROOT/esc50, ROOT/speech_commands_v0.02,
ROOT/speech_commands_v0.01 and ROOT/speech_commands_test_set_v0.01. Each dataset is built in a
temporary folder next to its final place, gets a marker file (MARKER: seed, scale, counts)
written last, and is then renamed into place: a rerun over a complete root writes nothing, an
interrupted one leaves only a temporary folder, which the next run deletes and rebuilds.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from cache_tools.errors import SupmamError


MARKER = ".supmam-minidata.json"
VERSION = 3
DATASETS = ("audioset", "esc50", "spc")  # "spc" = v0.02, v0.01 and the v0.01 test set
FOLDERS = {"audioset": ("audioset",), "esc50": ("esc50",),
           "spc": ("speech_commands_v0.02", "speech_commands_v0.01", "speech_commands_test_set_v0.01")}


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _build(root: Path, name: str, params: dict, write) -> tuple[dict, bool]:
    """Build ROOT/name with write(tmp_folder) -> counts, unless a complete one with the same params exists."""
    final = root / name
    marker = read_marker(final)
    if marker is not None and marker.get("params") == params:
        return marker["counts"], False
    if final.exists() and marker is None and any(final.iterdir()):
        raise SupmamError(f"{final}: exists, is not empty and has no {MARKER}; it is not a mini dataset "
                          f"written by `supmam data mini`, so it is left alone. Pick another --root.")
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted run left
    tmp.mkdir(parents=True)
    counts = write(tmp)
    (tmp / MARKER).write_text(json.dumps({"params": params, "counts": counts}, indent=1, sort_keys=True) + "\n")
    if final.exists():  # ours (it has a marker) but for other params, or empty
        shutil.rmtree(final)
    os.replace(tmp, final)
    return counts, True


def generate(root: str | Path, seed: int = 0, scale: float = 1.0, which=DATASETS, workers: int | None = None,
             verbose: bool = True) -> dict:
    """Write the mini datasets under root. Returns {folder: {"counts": ..., "written": bool, "seconds": s}}.

    Deterministic for (seed, scale): the same files, byte for byte, whatever `workers` is."""
    from tqdm import tqdm  # imported here: `import pipeline.minidata` stays light

    from pipeline.minidata.audioset import write_audioset
    from pipeline.minidata.esc50 import write_esc50
    from pipeline.minidata.speech_commands import (WORDS_V1, WORDS_V2, speakers_of, write_speech_commands,
                                                   write_test_set_v1)
    root = Path(root)
    unknown = set(which) - set(DATASETS)
    if unknown:
        raise SupmamError(f"unknown mini datasets {sorted(unknown)}; choose from {DATASETS}")
    if scale <= 0:
        raise SupmamError(f"--scale must be > 0, got {scale}")
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    params = {"seed": int(seed), "scale": float(scale), "version": VERSION}
    bar = (lambda xs: tqdm(xs, desc="audioset", unit="clip", leave=False)) if verbose else None
    jobs = []
    if "audioset" in which:
        jobs.append(("audioset", lambda out: write_audioset(out, seed, scale, workers, progress=bar)))
    if "esc50" in which:
        jobs.append(("esc50", lambda out: write_esc50(out, seed, scale)))
    if "spc" in which:
        jobs += [("speech_commands_v0.02", lambda out: write_speech_commands(out, WORDS_V2, seed, scale, workers)),
                 ("speech_commands_v0.01", lambda out: write_speech_commands(out, WORDS_V1, seed, scale, workers)),
                 ("speech_commands_test_set_v0.01", lambda out: write_test_set_v1(
                     out, seed, scale, workers, exclude_speakers=speakers_of(root / "speech_commands_v0.01")))]
    report = {}
    for name, write in jobs:
        t0 = time.perf_counter()
        counts, written = _build(root, name, params, write)
        report[name] = {"counts": counts, "written": written, "seconds": round(time.perf_counter() - t0, 2)}
        if verbose:
            state = f"written in {report[name]['seconds']:.1f} s" if written else "complete already, kept"
            print(f"{root / name}: {state}: {counts}")
    return report
