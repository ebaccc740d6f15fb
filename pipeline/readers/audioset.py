"""AudioSet: segment CSVs + class_labels_indices.csv + an audio folder, or an AST/AudioMAE JSON manifest."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from pipeline.readers import ClipRecord, DatasetSpec, LayoutError, audio_files, require

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
    """class_labels_indices.csv -> (display names, MIDs), ordered by `index`."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise LayoutError(path.parent, f"{path.name} lacks the header `index,mid,display_name`", EXPECTED)
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise LayoutError(path.parent, f"{path.name}: indices are not 0..{len(rows) - 1}", EXPECTED)
    return [r["display_name"] for r in rows], [r["mid"] for r in rows]


def _labels(mids: str, mid_index: dict[str, int], where: str) -> list[int]:
    out = []
    for mid in (m.strip() for m in mids.split(",")):
        if not mid:
            continue
        if mid not in mid_index:
            raise ValueError(f"{where}: label {mid!r} is not in class_labels_indices.csv")
        out.append(mid_index[mid])
    if not out:
        raise ValueError(f"{where}: no labels")
    return sorted(set(out))


def _index_audio(folder: Path) -> dict[str, list[tuple[float | None, Path]]]:
    """YTID -> [(start value from the name or None, path)] for every audio file under `folder`."""
    index: dict[str, list[tuple[float | None, Path]]] = {}
    for p in audio_files(folder):
        stem = p.stem
        index.setdefault(stem, []).append((None, p))
        if stem.startswith("Y"):
            index.setdefault(stem[1:], []).append((None, p))
        m = _SEGMENT_STEM.match(stem)
        if m:
            for ytid in {m["ytid"], m["ytid"][1:] if m["ytid"].startswith("Y") else m["ytid"]}:
                index.setdefault(ytid, []).append((float(m["start"]), p))
    return index


def _find(index: dict, ytid: str, start: float, split: str) -> Path | None:
    """The file of segment (ytid, start); files under a folder named after the split come first."""
    cands = sorted(index.get(ytid, []), key=lambda c: split not in c[1].parts)
    for value, path in cands:  # YTID_{start}_{end}: start in seconds or in milliseconds
        if value is not None and (abs(value - start) < 1e-3 or abs(value / 1000.0 - start) < 1e-3):
            return path
    named = [path for value, path in cands if value is None]
    return named[0] if named else None


def _read_segments(root: Path, split: str, mid_index: dict[str, int]) -> tuple[list[ClipRecord], list[str]]:
    csv_path = root / f"{split}_segments.csv"
    require(csv_path.is_file(), root, f"no segment list {csv_path.name} for split {split!r}", EXPECTED)
    require((root / "audio").is_dir(), root, "no audio/ folder", EXPECTED)
    index = _index_audio(root / "audio")
    records, missing, seen = [], [], set()
    with open(csv_path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            where = f"{csv_path}:{lineno}"
            if len(row) != 4:
                raise ValueError(f"{where}: expected `YTID, start, end, \"mids\"`, got {row}")
            ytid, start, end = row[0].strip(), float(row[1]), float(row[2])
            clip_id = f"{ytid}_{start:.3f}"
            if clip_id in seen:
                raise ValueError(f"{where}: segment {clip_id} listed twice")
            seen.add(clip_id)
            path = _find(index, ytid, start, split)
            if path is None:
                missing.append(clip_id)
                continue
            records.append(ClipRecord(clip_id, path, _labels(row[3], mid_index, where),
                                      duration=min(end - start, CLIP_SECONDS)))
    return records, missing


def _read_manifest(manifest: Path, mid_index: dict[str, int]) -> tuple[list[ClipRecord], list[str]]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LayoutError(manifest, f"not a readable JSON manifest with a `data` list ({e})", EXPECTED) from None
    records, missing, seen = [], [], set()
    for i, item in enumerate(data):
        where = f"{manifest}: data[{i}]"
        if not isinstance(item, dict) or "wav" not in item or "labels" not in item:
            raise ValueError(f"{where}: expected {{\"wav\": path, \"labels\": \"mid1,mid2\"}}, got {item!r}")
        wav = Path(item["wav"])
        cands = [wav] if wav.is_absolute() else [manifest.parent / wav, manifest.parent.parent / wav]
        path = next((c for c in cands if c.is_file()), None)
        clip_id = wav.stem
        if clip_id in seen:
            raise ValueError(f"{where}: clip {clip_id} listed twice")
        seen.add(clip_id)
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
        raise ValueError(f"{root}: give exactly one of split ({'|'.join(SPLITS)}) or manifest")
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
            raise ValueError(f"{root}: unknown AudioSet split {split!r}; known: {', '.join(SPLITS)}")
        records, missing = _read_segments(root, split, mid_index)
    return DatasetSpec("audioset", split, names, mids, True, TARGET_LENGTH, CLIP_SECONDS, records, missing)
