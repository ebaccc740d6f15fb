"""A clip store's contents checked before a run uses them, once per change of the file.

`verified(path)` recomputes every block checksum on first use (a corrupt block is a StoreError
naming the store and the clips) and records a store that passed in `F.h5.verified.json` beside it
(or under $XDG_CACHE_HOME/supmam/verified/): size, mtime_ns, inode and fingerprint, so a later use
of the unchanged file costs one stat. A store modified within RACY_SECONDS of the check is not
recorded: a rewrite inside one timestamp tick could keep its stat (git's racy rule).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from cache_tools.atomic import atomic_write_text
from cache_tools.clips.checksums import verify_checksums
from cache_tools.errors import StoreError

FORMAT = "supmam-clip-verified/1"
RACY_SECONDS = 2.0


def _records(path: Path) -> list[Path]:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return [Path(f"{path}.verified.json"), base / "supmam" / "verified" / f"clips-{key}.json"]


def _stamp(path: Path, fingerprint: str) -> dict:
    st = path.stat()
    return {"format": FORMAT, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
            "fingerprint": fingerprint}


def trusted(path: Path | str, fingerprint: str) -> bool:
    """The store passed a full check and is unchanged since (one stat)."""
    path = Path(path)
    now = _stamp(path, fingerprint)
    for rec in _records(path):
        try:
            if json.loads(rec.read_text()) == now:
                return True
        except (OSError, ValueError):
            continue
    return False


def verified(path: Path | str, fingerprint: str, workers: int | None = None) -> bool:
    """StoreError if a block of the store fails its checksum; True if it was hashed now, False if a
    record says it passed and its file is unchanged."""
    path = Path(path)
    if trusted(path, fingerprint):
        return False
    before = _stamp(path, fingerprint)
    problems = verify_checksums(path, workers)
    if problems:
        more = f" (+{len(problems) - 1} more blocks)" if len(problems) > 1 else ""
        why = problems[0].split(": ", 1)[1] if ": " in problems[0] else problems[0]
        raise StoreError(path, f"{why}{more}; the store is damaged: rebuild it with `supmam prepare` "
                               "(`supmam store verify` lists every bad block)")
    if before == _stamp(path, fingerprint) and before["mtime_ns"] <= (time.time() - RACY_SECONDS) * 1e9:
        for rec in _records(path):
            try:
                rec.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(rec, json.dumps(before))
                break
            except OSError:
                continue
    return True
