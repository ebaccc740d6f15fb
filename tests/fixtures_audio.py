"""Tiny dataset trees in each dataset's real layout, written with soundfile (for the reader/prepare tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def tone(seconds: float, sr: int = SR, freq: float = 440.0, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A noisy tone, [n] or [n, channels] float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def write_wav(path: Path, data: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


ESC_CLASSES = {0: "dog", 1: "rooster", 3: "pouring_water"}   # a gap in targets: index = position


def make_esc50(root: Path, per_fold: int = 1) -> Path:
    """ESC-50 layout: meta/esc50.csv + audio/, 5 folds x classes x per_fold clips of 5 s."""
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    k = 0
    for fold in range(1, 6):
        for target, cat in ESC_CLASSES.items():
            for take in "ABCDEFG"[:per_fold]:
                name = f"{fold}-{1000 + k}-{take}-{target}.wav"
                write_wav(root / "audio" / name, tone(5.0, freq=200 + 50 * target, seed=k))
                rows.append(f"{name},{fold},{target},{cat},False,{1000 + k},{take}")
                k += 1
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def make_spc(root: Path, words: list[str], per_word: int = 3, noise_seconds: tuple = (12.5,)) -> Path:
    """Speech Commands layout: word folders, _background_noise_, validation/testing lists.

    File n of each word: n == 0 -> validation list, n == 1 -> testing list, others train.
    """
    valid, test = [], []
    for i, w in enumerate(words):
        for n in range(per_word):
            rel = f"{w}/{i:02x}{n:06x}_nohash_0.wav"
            write_wav(root / rel, tone(1.0 if n % 2 == 0 else 0.8, freq=300 + 40 * i, seed=i * 100 + n))
            (valid if n == 0 else test if n == 1 else []).append(rel)
    for j, secs in enumerate(noise_seconds):
        write_wav(root / "_background_noise_" / f"noise_{j}.wav", tone(secs, freq=50, seed=900 + j))
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def make_spc1_test(root: Path, folders: list[str], per_folder: int = 2) -> Path:
    """SUPERB's speech_commands_test_set_v0.01 layout: one folder per class (incl. _unknown_, _silence_)."""
    for i, f in enumerate(folders):
        for n in range(per_folder):
            write_wav(root / f / f"t{i:02d}{n}_nohash_0.wav", tone(1.0, freq=500 + 20 * i, seed=5000 + 10 * i + n))
    return root


AS_CLASSES = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal"),
              ("/m/01b_21", "Cough, sneeze"), ("/t/dd00088", "Inside, small room")]


def make_audioset(root: Path) -> dict:
    """AudioSet layout: class_labels_indices.csv, the three segment CSVs, audio/ with all name forms."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["index,mid,display_name"] + [f'{i},{m},"{n}"' for i, (m, n) in enumerate(AS_CLASSES)]
    (root / "class_labels_indices.csv").write_text("\n".join(lines) + "\n")
    segments = {  # ytid, start, end, mids, file name (None: no file -> missing)
        "balanced_train": [("abc_DEF-123", 30.0, 40.0, "/m/09x0r,/m/04rlf", "abc_DEF-123_30.000_40.000.wav"),
                           ("-x-y_z", 0.0, 10.0, "/m/0jbk", "Y-x-y_z.wav"),
                           ("Qq1", 12.5, 22.5, "/m/01b_21,/t/dd00088", "sub/Qq1_12500_22500.flac"),
                           ("nofile", 0.0, 10.0, "/m/09x0r", None)],
        "unbalanced_train": [("Plain01", 5.0, 15.0, "/m/04rlf", "Plain01.wav")],
        "eval": [("Ev1", 1.0, 11.0, "/t/dd00088,/m/09x0r", "Ev1_1.000_11.000.wav")],
    }
    for k, (split, rows) in enumerate(segments.items()):
        text = ["# Segments csv created Sun Mar  5 10:54:25 2017",
                f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=5, num_positive_labels=7",
                "# YTID, start_seconds, end_seconds, positive_labels"]
        for j, (ytid, s, e, mids, name) in enumerate(rows):
            text.append(f'{ytid}, {s:.3f}, {e:.3f}, "{mids}"')
            if name:
                write_wav(root / "audio" / name, tone(10.0, freq=250 + 60 * j, seed=10 * k + j))
        (root / f"{split}_segments.csv").write_text("\n".join(text) + "\n")
    return segments


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Bad and awkward files: name -> path. corrupt/empty/truncated/nan/silent must be skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["corrupt"] = folder / "corrupt.wav"
    files["corrupt"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(200)))
    files["empty"] = folder / "empty.wav"
    files["empty"].write_bytes(b"")
    good = write_wav(folder / "full.wav", tone(2.0, seed=7))
    files["truncated"] = folder / "truncated.wav"
    files["truncated"].write_bytes(good.read_bytes()[: 44 + 16000])   # header says 2 s, data holds 0.5 s
    good.unlink()
    nan = tone(1.0, seed=8)
    nan[100:200] = np.nan
    files["nan"] = write_wav(folder / "nan.wav", nan, subtype="FLOAT")
    files["silent"] = write_wav(folder / "silent.wav", np.zeros(SR, np.float32))
    files["stereo"] = write_wav(folder / "stereo.wav", tone(1.0, seed=9, channels=2))
    files["sr44k"] = write_wav(folder / "sr44k.wav", tone(1.0, sr=44100, seed=10), sr=44100)
    return files
