"""ESC-50: meta/esc50.csv + audio/ (five folds; the store keeps every clip and its fold)."""
from __future__ import annotations

import csv
from pathlib import Path

from pipeline.readers import ClipRecord, DatasetSpec, LayoutError, require

TARGET_LENGTH, CLIP_SECONDS = 512, 5.0
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
EXPECTED = """\
  ROOT/meta/esc50.csv   columns filename,fold,target,category,esc10,src_file,take
  ROOT/audio/{filename}  e.g. audio/1-100032-A-0.wav"""


def read_esc50(root: Path | str) -> DatasetSpec:
    """All ESC-50 clips; classes = distinct (target, category) sorted by target."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    require(root.is_dir(), root, "ESC-50 root does not exist", EXPECTED)
    require(meta.is_file(), root, "no meta/esc50.csv", EXPECTED)
    require((root / "audio").is_dir(), root, "no audio/ folder", EXPECTED)
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not set(COLUMNS) <= set(rows[0]):
        raise LayoutError(root, f"{meta} lacks the columns {','.join(COLUMNS)}", EXPECTED)
    category_of: dict[int, str] = {}
    for i, r in enumerate(rows, 2):
        target, cat = int(r["target"]), r["category"]
        if category_of.setdefault(target, cat) != cat:
            raise ValueError(f"{meta}:{i}: target {target} is both {category_of[target]!r} and {cat!r}")
        if not 1 <= int(r["fold"]) <= 5:
            raise ValueError(f"{meta}:{i}: fold {r['fold']} is not in 1..5")
    targets = sorted(category_of)
    position = {t: k for k, t in enumerate(targets)}
    names = [category_of[t] for t in targets]
    records, missing = [], []
    for r in rows:
        path = root / "audio" / r["filename"]
        clip_id = Path(r["filename"]).stem
        if not path.is_file():
            missing.append(clip_id)
            continue
        records.append(ClipRecord(clip_id, path, position[int(r["target"])], fold=int(r["fold"])))
    return DatasetSpec("esc50", "all", names, list(names), False, TARGET_LENGTH, CLIP_SECONDS,
                       records, missing)
