"""AudioSet: segment CSVs + class_labels_indices.csv + an audio folder, or an AST/AudioMAE JSON manifest."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from pipeline.readers.spec import AUDIO_EXTENSIONS, ClipRecord, DatasetSpec, require
from cache_tools.errors import InputFileError

SPLITS = ("balanced_train", "unbalanced_train", "eval")
TARGET_LENGTH, CLIP_SECONDS = 1024, 10.0
EXPECTED = """\
  ROOT/class_labels_indices.csv        header `index,mid,display_name`
  ROOT/balanced_train_segments.csv     rows `YTID, start_seconds, end_seconds, "mid1,mid2"` (# comments)
  ROOT/unbalanced_train_segments.csv
  ROOT/eval_segments.csv
  ROOT/audio/**/{YTID | Y{YTID} | YTID_{start}_{end}}.{wav,flac,...}
or a JSON manifest {"data": [{"wav": "path", "labels": "mid1,mid2"}, ...]} plus
  ROOT/class_labels_indices.csv (or beside the manifest)"""
_SEGMENT_STEM = re.compile(r"^(?P<ytid>.+)_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")


def read_class_labels(path: Path) -> tuple[list[str], list[str]]:
    """class_labels_indices.csv -> (display names, MIDs), ordered by `index` (a UTF-8 BOM is accepted)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [(reader.line_num, r) for r in reader]
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0][1]):
        raise InputFileError(path.parent, f"{path.name} lacks the header `index,mid,display_name`", EXPECTED)
    parsed, seen = [], {}
    for line, r in rows:
        where = f"{path}:{line}"
        try:
            index = int(r["index"])
        except (TypeError, ValueError):
            raise InputFileError(where, f"index {r['index']!r} is not an integer") from None
        mid = (r["mid"] or "").strip()
        if not mid:
            raise InputFileError(where, f"empty mid")
        if mid in seen:
            raise InputFileError(where, f"mid {mid} is listed twice (first on line {seen[mid]})")
        seen[mid] = line
        parsed.append((index, mid, r["display_name"] or ""))
    parsed.sort()
    if [i for i, _, _ in parsed] != list(range(len(parsed))):
        raise InputFileError(path.parent, f"{path.name}: indices are not 0..{len(parsed) - 1} (each once)", EXPECTED)
    return [n for _, _, n in parsed], [m for _, m, _ in parsed]


def _labels(mids: str, mid_index: dict[str, int], where: str) -> list[int]:
    out = []
    for mid in (m.strip() for m in mids.split(",")):
        if not mid:
            continue
        if mid not in mid_index:
            raise InputFileError(where, f"label {mid!r} is not in class_labels_indices.csv")
        out.append(mid_index[mid])
    if not out:
        raise InputFileError(where, f"no labels")
    return sorted(set(out))


def _walk(top: str) -> list[str]:
    """Audio files under the folder `top` (recursive; os.scandir's entry types, no stat per file)."""
    out, stack = [], [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=True):
                    stack.append(e.path)
                elif os.path.splitext(e.name)[1].lower() in AUDIO_EXTENSIONS and e.is_file():
                    out.append(e.path)
    return out


def scan_audio(folder: Path, workers: int | None = None) -> list[Path]:
    """audio_files(folder) (the same sorted list), its subfolders walked by `workers` threads (default:
    the cores available): AS-2M's ~2 M files on a network file system are mostly waiting on metadata."""
    from concurrent.futures import ThreadPoolExecutor

    from cache_tools.targets.verify import default_workers

    with os.scandir(folder) as it:
        entries = list(it)
    files = [e.path for e in entries if not e.is_dir() and os.path.splitext(e.name)[1].lower() in AUDIO_EXTENSIONS
             and e.is_file()]
    subdirs = [e.path for e in entries if e.is_dir()]
    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        for found in pool.map(_walk, subdirs):
            files += found
    return sorted(map(Path, files))


def _index_audio(folder: Path, split: str | None = None) -> dict[str, list[tuple[float | None, Path, bool]]]:
    """YTID -> [(start value from the name or None, path, whether a folder on its path is named
    `split`)] for every audio file under `folder`."""
    index: dict[str, list[tuple[float | None, Path, bool]]] = {}
    for p in scan_audio(folder):
        in_split = split is not None and split in p.parts
        stem = p.stem
        index.setdefault(stem, []).append((None, p, in_split))
        if stem.startswith("Y"):
            index.setdefault(stem[1:], []).append((None, p, in_split))
        m = _SEGMENT_STEM.match(stem)
        if m:
            for ytid in {m["ytid"], m["ytid"][1:] if m["ytid"].startswith("Y") else m["ytid"]}:
                index.setdefault(ytid, []).append((float(m["start"]), p, in_split))
    return index


def _find(index: dict, ytid: str, start: float, split: str, where: str) -> Path | None:
    """The file of segment (ytid, start): a name carrying the start, else the plain YTID name; files
    under a folder named after the split come first. Two files at the same rank: InputFileError."""
    cands = index.get(ytid, [])
    for in_split in (True, False):                          # YTID_{start}_{end}: start in s or in ms
        level = [(value, path) for value, path, where in cands if where == in_split]
        timed = sorted({path for value, path in level if value is not None
                        and (abs(value - start) < 1e-3 or abs(value / 1000.0 - start) < 1e-3)})
        named = sorted({path for value, path in level if value is None})
        for group in (timed, named):
            if len(group) > 1:
                raise InputFileError(where, f"{len(group)} files map to segment {ytid} at {start:g} s: "
                                 f"{', '.join(str(p) for p in group[:4])}; keep one")
            if group:
                return group[0]
    return None


def _segment(row: list[str], where: str) -> tuple[str, float, float]:
    """(YTID, start, end) of one segment row; InputFileError naming the CSV and line."""
    if len(row) != 4:
        raise InputFileError(where, f"expected `YTID, start, end, \"mids\"`, got {row}")
    ytid = row[0].strip()
    try:
        start, end = float(row[1]), float(row[2])
    except ValueError:
        raise InputFileError(where, f"start / end {row[1]!r}, {row[2]!r} are not numbers") from None
    if not ytid or not 0 <= start < end:
        raise InputFileError(where, f"bad segment {row[:3]} (need a YTID and 0 <= start < end)")
    return ytid, start, end


def _read_segments(root: Path, split: str, mid_index: dict[str, int]) -> tuple[list[ClipRecord], list[str]]:
    csv_path = root / f"{split}_segments.csv"
    require(csv_path.is_file(), root, f"no segment list {csv_path.name} for split {split!r}", EXPECTED)
    require((root / "audio").is_dir(), root, "no audio/ folder", EXPECTED)
    index = _index_audio(root / "audio", split)
    records, missing, seen = [], [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, skipinitialspace=True)
        for row in reader:
            if not row or row[0].lstrip().startswith("#"):
                continue
            where = f"{csv_path}:{reader.line_num}"
            ytid, start, end = _segment(row, where)
            clip_id = f"{ytid}_{start:.3f}"
            if clip_id in seen:
                raise InputFileError(where, f"segment {clip_id} listed twice (first on line {seen[clip_id]})")
            seen[clip_id] = reader.line_num
            path = _find(index, ytid, start, split, where)
            if path is None:
                missing.append(clip_id)
                continue
            records.append(ClipRecord(clip_id, path, _labels(row[3], mid_index, where),
                                      duration=min(end - start, CLIP_SECONDS)))
    return records, missing


def _read_manifest(manifest: Path, mid_index: dict[str, int]) -> tuple[list[ClipRecord], list[str]]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8-sig"))["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputFileError(manifest, f"not a readable JSON manifest with a `data` list ({e})", EXPECTED) from None
    records, missing, seen = [], [], {}
    for i, item in enumerate(data):
        where = f"{manifest}: data[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("wav"), str) or "labels" not in item:
            raise InputFileError(where, f"expected {{\"wav\": path, \"labels\": \"mid1,mid2\"}}, got {item!r}")
        wav = Path(item["wav"])        # absolute paths are what AST / AudioMAE manifests hold: allowed
        if not wav.is_absolute() and ".." in wav.parts:
            raise InputFileError(where, f"{item['wav']!r} climbs out of the manifest's folders (`..`); refusing it")
        cands = [wav] if wav.is_absolute() else [manifest.parent / wav, manifest.parent.parent / wav]
        path = next((c for c in cands if c.is_file()), None)
        clip_id = wav.stem
        if clip_id in seen:
            raise InputFileError(where, f"{item['wav']} and {seen[clip_id][1]} (data[{seen[clip_id][0]}]) "
                             f"map to one clip id {clip_id!r}")
        seen[clip_id] = (i, item["wav"])
        labels = _labels(str(item["labels"]), mid_index, where)
        if path is None:
            missing.append(clip_id)
        else:
            records.append(ClipRecord(clip_id, path, labels))
    return records, missing


def read_audioset(root: Path | str, split: str | None = None, manifest: Path | str | None = None) -> DatasetSpec:
    """AudioSet split from segment CSVs (`split`) or from an AST/AudioMAE JSON `manifest`."""
    root = Path(root)
    require(root.is_dir(), root, "AudioSet root does not exist", EXPECTED)
    if (split is None) == (manifest is None):
        raise InputFileError(root, f"give exactly one of split ({'|'.join(SPLITS)}) or manifest")
    labels_csv = root / "class_labels_indices.csv"
    if manifest is not None and not labels_csv.is_file():
        labels_csv = Path(manifest).parent / "class_labels_indices.csv"
    require(labels_csv.is_file(), root, "no class_labels_indices.csv", EXPECTED)
    names, mids = read_class_labels(labels_csv)
    mid_index = {m: i for i, m in enumerate(mids)}
    if manifest is not None:
        manifest = Path(manifest)
        require(manifest.is_file(), manifest, "manifest does not exist", EXPECTED)
        records, missing = _read_manifest(manifest, mid_index)
        split = split or manifest.stem
    else:
        if split not in SPLITS:
            raise InputFileError(root, f"unknown AudioSet split {split!r}; known: {', '.join(SPLITS)}")
        records, missing = _read_segments(root, split, mid_index)
    return DatasetSpec("audioset", split, names, mids, True, TARGET_LENGTH, CLIP_SECONDS, records, missing)
