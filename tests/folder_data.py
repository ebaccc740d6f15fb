"""Your-own-data layouts for the tests (`supmam prepare folder`): a folder of audio in mixed formats,
rates and channel counts, labelled by a CSV or by class sub-folders. Each class is a noisy tone at
its own frequency, so even a tiny random encoder separates the classes.

  write_clip(path, freqs, seconds, k)         one clip (format from the suffix; rate / channels vary with k)
  csv_dataset(root, per_split, ...)            single-label CSV with a `split` column
  multilabel_dataset(root, n)                  multi-label CSV (`a;b`) with a `fold` column
  folder_dataset(root, per_class)              one sub-folder per class, no CSV
  chance(store, indices)                       the score of an uninformed classifier on those clips
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = {"zebra": 3600.0, "ant": 300.0, "mole": 1200.0}     # not in sorted order on purpose
FORMATS = ((".wav", 16000, 1), (".flac", 22050, 2), (".ogg", 8000, 1), (".wav", 44100, 2))


def write_clip(path: Path, freqs: list[float], seconds: float, k: int) -> Path:
    """A tone (or a sum of tones) in noise; format from FORMATS[k % 4] (rate and channels differ)."""
    suffix, sr, channels = FORMATS[k % len(FORMATS)]
    path = path.with_suffix(suffix)
    rng = np.random.default_rng(k)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(0.25 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs) + 0.03 * rng.standard_normal(len(t))
    x = (x / max(1, len(freqs))).astype(np.float32)                   # [n]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.stack([x, 0.7 * x], 1) if channels == 2 else x, sr)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def csv_dataset(root: Path, per_split=(6, 2, 2), seed: int = 0, shuffle: bool = False) -> Path:
    """ROOT/audio/... + ROOT/labels.csv (file,label,split), per_split clips of each class in train /
    valid / test; durations 0.45-0.7 s. Returns the CSV path."""
    rows, k = [], 0
    for name, freq in CLASSES.items():
        for split, n in zip(("train", "valid", "test"), per_split):
            for _ in range(n):
                p = write_clip(root / "audio" / name / f"c{k:03d}", [freq], 0.45 + 0.25 * ((k * 7) % 10) / 10, k)
                rows.append([p.relative_to(root).as_posix(), name, split])
                k += 1
    if shuffle:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    return _write_csv(root / "labels.csv", ["file", "label", "split"], rows)


def multilabel_dataset(root: Path, n: int = 30, folds: int = 3) -> Path:
    """ROOT/x/*.{wav,...} + ROOT/tags.csv (file,label,fold): clip k holds one or two classes' tones."""
    names = list(CLASSES)
    rows = []
    for k in range(n):
        tags = [names[k % 3]] + ([names[(k + 1) % 3]] if k % 2 else [])
        p = write_clip(root / "x" / f"m{k:03d}", [CLASSES[t] for t in tags], 0.5, k)
        rows.append([p.relative_to(root).as_posix(), ";".join(tags), 1 + k % folds])
    return _write_csv(root / "tags.csv", ["file", "label", "fold"], rows)


def folder_dataset(root: Path, per_class: int = 10) -> Path:
    """ROOT/<class>/<clip>: one sub-folder per class, no CSV."""
    k = 0
    for name, freq in CLASSES.items():
        for _ in range(per_class):
            write_clip(root / name / f"f{k:03d}", [freq], 0.5, k)
            k += 1
    return root


def chance(labels: np.ndarray, multilabel: bool) -> float:
    """Majority-class accuracy, or for mAP the mean positive rate over classes with positives."""
    labels = np.asarray(labels)
    if multilabel:
        rate = labels.astype(np.float64).mean(0)                      # [C]
        return float(rate[rate > 0].mean())
    return float(np.bincount(labels).max() / len(labels))
