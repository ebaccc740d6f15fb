"""Your own labelled audio -> a DatasetSpec ("custom"), for `supmam prepare folder`.

Two layouts:

  ROOT + a CSV (--labels): columns `file`, `label` and optionally `split` or `fold`
      file   the audio file, relative to ROOT (absolute paths and `..` are refused)
      label  a class name, or several separated by `;` (one such row makes the store multi-label)
      split  train | valid | test            fold  an integer 1..127 (cross-validation folds)
  ROOT/<class>/**/<file>  no CSV: one sub-folder per class (single-label, no split)

Classes are the distinct label names sorted (Python string order), so the store's label order is
the same whatever the order of the rows or of the file system; clips are sorted by clip id (the
file's path under ROOT). Any format the decoder reads (pipeline.audio_io), any rate, any channels.

Clip length (`choose_length`): unless given, the 95th percentile of the readable files' durations
(an actual clip's duration, numpy's "higher" percentile), rounded up to whole 10 ms fbank frames
and capped at AudioSet's 10.24 s; `target_length` is those frames rounded up to a whole encoder
patch (16 frames), at most 1024. Longer clips are cut, shorter ones zero-padded, as for ESC-50.

Errors (InputFileError / InputFileError, SupmamError subclasses naming the CSV and its line, or the
folder): a CSV without the needed columns, an unknown split or a bad fold, an empty label, a file
listed twice, a file outside ROOT, a label whose clips are all in valid/test (nothing to learn it
from), a class without any audio file.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf

from cache_tools.errors import InputFileError
from pipeline.readers.spec import (AUDIO_EXTENSIONS, ClipRecord, DatasetSpec, audio_files, require,
                                   require_utf8_names)

DATASET = "custom"
SPLITS = ("train", "valid", "test")
FRAME_SECONDS = 0.01      # fbank hop (10 ms)
PATCH_FRAMES = 16         # the encoders' patch along time: target_length is a multiple of it
MAX_FRAMES = 1024         # AudioSet's 10.24 s
PERCENTILE = 95
EXPECTED = """\
  ROOT/...                 your audio files (any format, rate, channels)
  labels.csv (--labels)    header `file,label` [+ `split` (train/valid/test) or `fold` (1..127)];
                           file relative to ROOT; label `dog` or `dog;bark` (multi-label)
  or, without --labels:    ROOT/<class name>/**/<audio file>   one sub-folder per class"""


@dataclass(frozen=True)
class _Row:
    line: int                    # CSV line (0: from a class folder)
    rel: str                     # path under ROOT, posix
    labels: tuple[str, ...]
    split: str | None = None
    fold: int | None = None


def read_folder(root: Path | str, labels: Path | str | None = None, target_length: int | None = None,
                clip_seconds: float | None = None) -> DatasetSpec:
    """The clips under `root`, labelled by the CSV `labels` or by their class folder (module docstring)."""
    root = Path(root)
    require(root.is_dir(), root, "folder does not exist", EXPECTED)
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise InputFileError(f"{labels}: labels CSV not found")
        rows, where = _csv_rows(labels), str(labels)
    else:
        rows, where = _folder_rows(root), str(root)
    present = [r for r in rows if (root / r.rel).is_file()]
    missing = sorted(r.rel for r in rows if not (root / r.rel).is_file())
    names = sorted({name for r in rows for name in r.labels})
    _check_classes(rows, present, names, where)
    multilabel = any(len(r.labels) > 1 for r in rows)
    index = {n: k for k, n in enumerate(names)}
    records = [ClipRecord(r.rel, root / r.rel, sorted(index[n] for n in r.labels) if multilabel else index[r.labels[0]],
                          fold=r.fold, split=r.split) for r in sorted(present, key=lambda r: r.rel)]
    seconds, frames, note = clip_length(records, target_length, clip_seconds)
    return DatasetSpec(DATASET, "all", names, list(names), multilabel, frames, seconds, records, missing, note=note)


# ---------------------------------------------------------------- the two layouts


def _csv_rows(path: Path) -> list[_Row]:
    try:
        raw = _csv_read(path)
    except UnicodeDecodeError as e:
        raise InputFileError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                             "save the CSV as UTF-8") from None
    if not raw:
        raise InputFileError(f"{path}:2: no rows after the header")
    rows, first_line = [], {}
    for line, r in raw:
        where = f"{path}:{line}"
        rel = _relative(r["file"], where)
        if rel in first_line:
            raise InputFileError(f"{where}: {rel} is listed twice (first on line {first_line[rel]})")
        first_line[rel] = line
        names = tuple(n.strip() for n in r["label"].split(";"))
        if not r["label"] or any(not n for n in names):
            raise InputFileError(f"{where}: empty label {r['label']!r} for {rel}")
        if len(set(names)) != len(names):
            raise InputFileError(f"{where}: label {r['label']!r} names a class twice")
        rows.append(_Row(line, rel, names, _split(r.get("split"), where), _fold(r.get("fold"), where)))
    return rows


def _csv_read(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: value}) of each row; InputFileError naming the line for a malformed CSV (a row
    with more fields than the header, a field over csv's 128 KiB limit, a stray quote)."""
    with open(path, newline="", encoding="utf-8-sig") as f:       # a BOM from spreadsheet exports is fine
        reader = csv.DictReader(f)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
            lacking = [c for c in ("file", "label") if c not in header]
            if lacking:
                raise InputFileError(f"{path}:1: no column {' or '.join(map(repr, lacking))} "
                                     f"(header: {','.join(header)[:200] or 'empty'})\nExpected:\n{EXPECTED}")
            if "split" in header and "fold" in header:
                raise InputFileError(f"{path}:1: has both `split` and `fold` columns; give one (a split, or "
                                     "cross-validation folds)")
            raw = []
            for r in reader:
                if None in r:                                     # DictReader's key for the extra fields
                    raise InputFileError(f"{path}:{reader.line_num}: {len(header) + len(r[None])} fields, the "
                                         f"header names {len(header)} ({','.join(header)[:200]})")
                raw.append((reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in r.items()}))
        except csv.Error as e:
            raise InputFileError(f"{path}:{reader.line_num + 1}: not a readable CSV row ({e})") from None
    return raw


def _relative(name: str, where: str) -> str:
    """`name` as a normalised posix path inside ROOT; InputFileError for empty, absolute or climbing names."""
    if not name:
        raise InputFileError(f"{where}: empty `file`")
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise InputFileError(f"{where}: file {name!r} is absolute; give it relative to the root folder")
    rel = PurePosixPath(os.path.normpath(text))
    if ".." in rel.parts:
        raise InputFileError(f"{where}: file {name!r} climbs out of the root folder (`..`); refusing it")
    return rel.as_posix()


def _split(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    if value not in SPLITS:
        raise InputFileError(f"{where}: split {value!r} is not one of {', '.join(SPLITS)}")
    return value


def _fold(value: str | None, where: str) -> int | None:
    if value is None:
        return None
    try:
        fold = int(value)
    except ValueError:
        raise InputFileError(f"{where}: fold {value!r} is not an integer") from None
    if not 1 <= fold <= 127:
        raise InputFileError(f"{where}: fold {fold} is not in 1..127")
    return fold


def _folder_rows(root: Path) -> list[_Row]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if loose:
        raise InputFileError(root, f"audio files outside a class folder ({', '.join(loose[:3])}); move them into "
                                "ROOT/<class>/ or label them with --labels", EXPECTED)
    require(bool(classes), root, "no class sub-folders (and no --labels CSV)", EXPECTED)
    rows = []
    require_utf8_names(classes, "class folder")
    for d in classes:
        files = audio_files(d)
        require_utf8_names(files)
        if not files:
            raise InputFileError(f"{d}: class {d.name!r} is empty: no audio file ({', '.join(AUDIO_EXTENSIONS)})")
        rows += [_Row(0, p.relative_to(root).as_posix(), (d.name,)) for p in files]
    return rows


# ---------------------------------------------------------------- checks and the clip length


def _check_classes(rows: list[_Row], present: list[_Row], names: list[str], where: str) -> None:
    """Every class has an audio file, and (with a split column) a training clip."""
    have = {n for r in present for n in r.labels}
    for name in names:
        if name not in have:
            lines = [r.line for r in rows if name in r.labels]
            raise InputFileError(f"{where}:{lines[0]}: class {name!r} is empty: none of its {len(lines)} listed "
                              f"files exists (lines {_few(lines)})")
    if not any(r.split for r in present):
        return
    for name in names:
        clips = [r for r in present if name in r.labels]
        if not any(r.split == "train" for r in clips):
            splits = sorted({r.split for r in clips})
            raise InputFileError(f"{where}:{clips[0].line}: label {name!r} appears only in {'/'.join(splits)} rows "
                              f"(lines {_few([r.line for r in clips])}), never in train: no model can learn it")


def _few(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")


def duration(path: Path) -> float | None:
    """Seconds of audio in `path` from its header (soundfile), else by decoding it; None if unreadable."""
    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # noqa: BLE001 - formats soundfile cannot read (m4a, opus, ...): decode instead
        from pipeline.audio_io import Unusable, decode_native
        try:
            x, sr = decode_native(path, None)                    # [n, channels] at the file's rate
        except (Unusable, OSError):
            return None
        return len(x) / sr


def choose_length(durations: list[float]) -> tuple[float, int]:
    """(clip_seconds, target_length) from the clips' durations: the module docstring's rule."""
    p = float(np.percentile(np.asarray(durations, dtype=np.float64), PERCENTILE, method="higher"))
    frames = min(MAX_FRAMES, max(1, math.ceil(round(p / FRAME_SECONDS, 6))))     # whole 10 ms frames
    return frames * FRAME_SECONDS, min(MAX_FRAMES, PATCH_FRAMES * math.ceil(frames / PATCH_FRAMES))


def clip_length(records: list[ClipRecord], target_length: int | None,
                clip_seconds: float | None) -> tuple[float, int, str]:
    """(clip_seconds, target_length, how they were decided) from the options or from the data."""
    if target_length is not None and (target_length <= 0 or target_length % PATCH_FRAMES):
        raise InputFileError(f"--target-length {target_length}: must be a positive multiple of {PATCH_FRAMES} "
                          "frames (the encoder's patch)")
    if target_length is not None and target_length > MAX_FRAMES:
        raise InputFileError(f"--target-length {target_length}: at most {MAX_FRAMES} frames (AudioSet's 10.24 s, "
                             "the encoders' window); longer files are cut")
    if clip_seconds is not None and not 0 < clip_seconds <= MAX_FRAMES * FRAME_SECONDS:
        raise InputFileError(f"--clip-seconds {clip_seconds}: must be a number of seconds in (0, "
                             f"{MAX_FRAMES * FRAME_SECONDS:g}] (the encoders' window); longer files are cut")
    if target_length is None and clip_seconds is None:
        known = [d for d in (duration(r.path) for r in records) if d is not None and d > 0]
        if not known:
            raise InputFileError(f"{records[0].path.parent if records else '?'}: no readable audio file to measure "
                              "the clip length from; give --clip-seconds or --target-length")
        seconds, frames = choose_length(known)
        return seconds, frames, (f"clip length {seconds:.2f} s, target_length {frames} frames: the "
                                 f"{PERCENTILE}th percentile of {len(known)} durations (median "
                                 f"{np.median(known):.2f} s, max {max(known):.2f} s)")
    if target_length is None:
        frames = PATCH_FRAMES * math.ceil(math.ceil(round(clip_seconds / FRAME_SECONDS, 6)) / PATCH_FRAMES)
        return clip_seconds, frames, f"clip length {clip_seconds:g} s (given), target_length {frames} frames"
    seconds = clip_seconds if clip_seconds is not None else target_length * FRAME_SECONDS
    return seconds, target_length, f"clip length {seconds:g} s, target_length {target_length} frames (given)"
