"""Mini ESC-50 in the real layout: ROOT/esc50/meta/esc50.csv + audio/{fold}-{src_file}-{take}-{target}.wav.

5 s, 44.1 kHz mono clips of a subset of ESC-50's real categories with their real target numbers;
5 folds, every fold holding every class; clips cut from one source share a fold (as in ESC-50).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.minidata.dsp import limit, place, pink_noise, rng_for, write_wav
from pipeline.minidata.sources import animal, clock_ticks, instrument, siren

SR, SECONDS, FOLDS = 44100, 5.0, 5
# (category, ESC-50 target, in ESC-10) -- the real numbering of ESC-50's meta/esc50.csv
CLASSES = (("dog", 0, True), ("rooster", 1, True), ("pig", 2, False), ("cow", 3, False), ("frog", 4, False),
           ("cat", 5, False), ("sheep", 8, False), ("clock_tick", 38, True), ("siren", 42, False),
           ("church_bells", 46, False))
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


def _event(rng: np.random.Generator, category: str) -> np.ndarray:
    """One sound of the category, mono float32 at SR, at most SECONDS long."""
    if category == "clock_tick":
        return clock_ticks(rng, SECONDS, SR)
    if category == "siren":
        return siren(rng, float(rng.uniform(2.0, SECONDS)), SR)
    if category == "church_bells":
        return instrument(rng, "tubular_bells", float(rng.uniform(3.0, SECONDS)), SR)
    return animal(rng, category, float(rng.uniform(1.5, SECONDS)), SR)


def _clip(rng: np.random.Generator, category: str) -> np.ndarray:
    """float32 [SECONDS * SR]: one or two events of the class over a faint noise floor."""
    clip = np.zeros(int(SECONDS * SR), np.float32)
    for _ in range(1 if rng.random() < 0.7 else 2):
        x = _event(rng, category)
        x = x / (np.sqrt(np.mean(x ** 2)) + 1e-9)
        place(clip, x * float(rng.uniform(0.5, 1.0)), int(rng.integers(0, max(1, len(clip) - len(x)))))
    clip += pink_noise(rng, len(clip)) * float(10 ** (-rng.uniform(30, 50) / 20))
    return limit(clip, target_rms=float(rng.uniform(0.03, 0.15)))


def write_esc50(out: Path, seed: int, scale: float) -> dict:
    """Writes out/meta/esc50.csv and out/audio/*.wav. Returns counts."""
    per_class = min(26 * FOLDS, max(FOLDS, round(8 * scale)))  # takes are letters A..Z
    rng = rng_for(seed, "esc50", "src_files")
    src_ids = [int(s) for s in rng.choice(np.arange(10000, 300000), size=len(CLASSES) * FOLDS, replace=False)]
    rows = []
    for c, (category, target, esc10) in enumerate(CLASSES):
        for j in range(per_class):
            fold, take = j % FOLDS + 1, chr(ord("A") + j // FOLDS)
            src = src_ids[c * FOLDS + fold - 1]  # one source per (class, fold): its takes stay in the fold
            name = f"{fold}-{src}-{take}-{target}.wav"
            write_wav(out / "audio" / name, _clip(rng_for(seed, "esc50", name), category), SR)
            rows.append((name, fold, target, category, str(esc10), src, take))
    rows.sort()
    (out / "meta").mkdir(parents=True, exist_ok=True)
    with open(out / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return {"clips": len(rows), "classes": len(CLASSES), "folds": FOLDS}
