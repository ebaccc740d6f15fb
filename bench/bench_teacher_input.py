"""Stage one's teacher input: loader cost per clip of each input, and (--targets) the whole stage.

    python bench/bench_teacher_input.py --clips data/stores/audioset_unbalanced_train.h5 [--targets OUT]

loader: ms per clip of one DataLoader item, one process, one torch thread: the old 16 kHz item
(pipeline.targets.WaveDataset), the source read at 48 kHz (decode + channel mean + soxr_hq), the
16 kHz fallback upsampled. --targets: make_targets clips/s (HTSAT-tiny, seeded weights, batch 8,
1 worker, CPU) with teacher_input auto and clipstore, into OUT/<mode>.zarr (deleted first).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo on sys.path)
import torch


def loader_ms(clips) -> dict:
    from pipeline.targets import WaveDataset
    from pipeline.teacher_audio import TeacherInputDataset

    out = {}
    for name, ds in [("wave16k", WaveDataset(clips)), ("source", TeacherInputDataset(clips, 48000)),
                     ("fallback", TeacherInputDataset(clips, 48000, sources=False))]:
        ds[0]                                                     # imports, file handles
        t0 = time.perf_counter()
        kinds = collections.Counter(ds[i][2] for i in range(len(clips)))
        out[name] = {"ms_per_clip": round((time.perf_counter() - t0) / len(clips) * 1000, 2), "kinds": dict(kinds)}
    return out


def targets_rate(clips_path: Path, out: Path) -> dict:
    from pipeline.targets import make_targets

    res = {}
    for mode in ("auto", "clipstore"):
        dest = out / f"{mode}.zarr"
        shutil.rmtree(dest, ignore_errors=True)
        t0 = time.perf_counter()
        s = make_targets(clips_path, dest, seed=0, batch_size=8, workers=1, teacher_input=mode)
        res[mode] = {"clips_per_s": round(s["clips"] / (time.perf_counter() - t0), 3), "inputs": s["teacher_input"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--targets", type=Path, default=None, help="also time the whole stage, stores here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from cache_tools.clips.store import ClipStore

    result = {"clips": str(a.clips), "loader": loader_ms(ClipStore(a.clips))}
    if a.targets:
        result["targets"] = targets_rate(a.clips, a.targets)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
