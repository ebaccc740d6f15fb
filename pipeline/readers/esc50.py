"""ESC-50: meta/esc50.csv + audio/ (five folds; the store keeps every clip and its fold).

The CSV is read strictly: a UTF-8 BOM is accepted; every error names the CSV and its line; a
filename listed twice, two filenames with one clip id (the stem), and a filename that is absolute
or leaves audio/ (`..`) are refused.
"""
from __future__ import annotations

import csv
from pathlib import Path, PurePath

from pipeline.readers.spec import ClipRecord, DatasetSpec, require
from cache_tools.errors import InputFileError

TARGET_LENGTH, CLIP_SECONDS = 512, 5.0
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
EXPECTED = """\
  ROOT/meta/esc50.csv   columns filename,fold,target,category,esc10,src_file,take
  ROOT/audio/{filename}  e.g. audio/1-100032-A-0.wav"""


def safe_relative(name: str, where: str, inside: str) -> PurePath:
    """`name` as a relative path that stays inside its folder; InputFileError naming `where` otherwise."""
    path = PurePath(name.replace("\\", "/"))
    if not name.strip():
        raise InputFileError(where, f"empty filename")
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InputFileError(where, f"filename {name!r} is absolute; it must be relative to {inside}")
    if ".." in path.parts:
        raise InputFileError(where, f"filename {name!r} climbs out of {inside} (`..`); refusing it")
    return path


def _rows(meta: Path, root: Path) -> list[tuple[int, dict]]:
    """(line number, row) for every data row of the CSV (BOM accepted)."""
    with open(meta, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [(reader.line_num, r) for r in reader]
        header = reader.fieldnames or []
    if not set(COLUMNS) <= {h.strip() for h in header}:
        raise InputFileError(root, f"{meta} lacks the columns {','.join(COLUMNS)} (header: {','.join(header)})", EXPECTED)
    return [(line, {k.strip(): (v or "").strip() for k, v in r.items() if k is not None}) for line, r in rows]


def _int(row: dict, key: str, where: str) -> int:
    try:
        return int(row[key])
    except ValueError:
        raise InputFileError(where, f"column {key!r} is {row[key]!r}, not an integer") from None


def read_esc50(root: Path | str) -> DatasetSpec:
    """All ESC-50 clips; classes = distinct (target, category) sorted by target."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    require(root.is_dir(), root, "ESC-50 root does not exist", EXPECTED)
    require(meta.is_file(), root, "no meta/esc50.csv", EXPECTED)
    require((root / "audio").is_dir(), root, "no audio/ folder", EXPECTED)
    rows = _rows(meta, root)
    if not rows:
        raise InputFileError(root, f"{meta} lists no clips", EXPECTED)
    category_of: dict[int, str] = {}
    parsed, names_at, ids_at = [], {}, {}
    for line, r in rows:
        where = f"{meta}:{line}"
        target, fold, cat = _int(r, "target", where), _int(r, "fold", where), r["category"]
        if category_of.setdefault(target, cat) != cat:
            raise InputFileError(where, f"target {target} is both {category_of[target]!r} and {cat!r}")
        if not 1 <= fold <= 5:
            raise InputFileError(where, f"fold {fold} is not in 1..5")
        rel = safe_relative(r["filename"], where, f"{root / 'audio'}")
        if str(rel) in names_at:
            raise InputFileError(where, f"{rel} is listed twice (first on line {names_at[str(rel)]})")
        clip_id = rel.stem
        if clip_id in ids_at:
            raise InputFileError(where, f"{rel} and {ids_at[clip_id][1]} (line {ids_at[clip_id][0]}) "
                             f"map to one clip id {clip_id!r}")
        names_at[str(rel)], ids_at[clip_id] = line, (line, rel)
        parsed.append((clip_id, rel, target, fold))
    targets = sorted(category_of)
    position = {t: k for k, t in enumerate(targets)}
    names = [category_of[t] for t in targets]
    records, missing = [], []
    for clip_id, rel, target, fold in parsed:
        path = root / "audio" / rel
        if not path.is_file():
            missing.append(clip_id)
            continue
        records.append(ClipRecord(clip_id, path, position[target], fold=fold))
    return DatasetSpec("esc50", "all", names, list(names), False, TARGET_LENGTH, CLIP_SECONDS,
                       records, missing)
