"""Target-store integrity once per node: hash each shard file once, remember what was hashed.

A shard is hashed by reading its file (not through a memory map), in parallel over shards, and
checked against the sha256 its completion record holds. Each shard that passed is remembered in a
small JSON beside the store, `T.zarr/progress/verified.json` (written atomically; where the store
cannot be written, under $XDG_CACHE_HOME/supmam/verified/): its size, mtime_ns, inode and recorded
sha256. A later check hashes only shards whose file changed since (any of those four differs), so a
restart, every rank's reader and every DataLoader worker cost one `stat` per shard, no reading.

Racy entries (git's rule): a shard whose mtime lies within RACY_SECONDS of the check is not
remembered, since a rewrite inside the same timestamp tick could keep size and mtime.

    bad = verify_shards(path, num)            # [(shard, message)]; [] = every shard good
    cache = VerifiedCache(path, records, num) # what a reader consults: cache.trusted(k) -> bool
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cache_tools.atomic import atomic_write_text
from cache_tools.targets.layout import read_attrs, shard_file

CACHE_FORMAT = "supmam-verified/1"
RACY_SECONDS = 2.0
HASHED: list[str] = []       # files hashed by this process (tests and the bench count them)


def default_workers() -> int:
    """The cores this process may run on (a SLURM / cgroup mask included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:    # not Linux
        return max(1, os.cpu_count() or 1)


def hash_file(path: Path) -> str:
    """sha256 hex of a file read in 8 MiB blocks (hashlib releases the GIL: threads run in parallel)."""
    HASHED.append(str(path))
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()


def _stat(f: Path) -> tuple[int, int, int]:
    """(size, mtime_ns, inode) of a file, (-1, -1, -1) if it does not exist."""
    try:
        s = f.stat()
    except FileNotFoundError:
        return -1, -1, -1
    return s.st_size, s.st_mtime_ns, s.st_ino


class VerifiedCache:
    """Per-shard arrays [S] (size, mtime_ns, inode, recorded sha256) of shards that passed a hash."""

    def __init__(self, store, records: dict, num: int):
        self.store, self.records, self.num = Path(store), records, int(num)
        self.files = [shard_file(self.store, k) for k in range(self.num)]
        self.want = np.array([(records.get(str(k)) or {}).get("sha256") or "" for k in range(self.num)], dtype="S64")
        self.size = np.full(self.num, -2, np.int64)        # -2: never verified
        self.mtime = np.zeros(self.num, np.int64)
        self.ino = np.zeros(self.num, np.uint64)
        self._load()

    def path(self) -> Path:
        return self.store / "progress" / "verified.json"

    def fallback_path(self) -> Path:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        key = hashlib.sha256(str(self.store.resolve()).encode()).hexdigest()[:16]
        return base / "supmam" / "verified" / f"{key}.json"

    def _load(self) -> None:
        for p in (self.path(), self.fallback_path()):
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if d.get("format") != CACHE_FORMAT or len(d.get("size", ())) != self.num:
                continue
            same = np.array([s.encode() for s in d["sha256"]], dtype="S64") == self.want
            known = same & (np.asarray(d["size"], np.int64) >= -1)
            self.size[known] = np.asarray(d["size"], np.int64)[known]
            self.mtime[known] = np.asarray(d["mtime_ns"], np.int64)[known]
            self.ino[known] = np.asarray(d["ino"], np.uint64)[known]

    def trusted(self, k: int) -> bool:
        """Shard k passed a hash and its file is unchanged since (one stat)."""
        if self.size[k] == -2:
            return False
        size, mtime, ino = _stat(self.files[k])
        return (size, mtime, ino) == (int(self.size[k]), int(self.mtime[k]), int(self.ino[k]))

    def remember(self, k: int, st: tuple[int, int, int]) -> None:
        if st[1] > (time.time() - RACY_SECONDS) * 1e9:      # racy: hash again next time
            return
        self.size[k], self.mtime[k], self.ino[k] = st

    def save(self) -> None:
        """Write the arrays (merged over what another process wrote meanwhile is not needed: a lost
        entry only costs a hash). Read-only store: the per-user fallback file."""
        text = json.dumps({"format": CACHE_FORMAT, "store": str(self.store), "size": self.size.tolist(),
                           "mtime_ns": self.mtime.tolist(), "ino": self.ino.tolist(),
                           "sha256": [s.decode() for s in self.want]})
        for p in (self.path(), self.fallback_path()):
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(p, text)
                return
            except OSError:
                continue


def check_shard(cache: VerifiedCache, k: int, trust: bool = True) -> str | None:
    """Hash shard k unless the cache trusts it (and `trust`); a problem message or None. Remembers a pass."""
    if trust and cache.trusted(k):
        return None
    f, want = cache.files[k], cache.want[k].decode() or None
    st = _stat(f)
    if want is None:                                          # an all-empty shard: no file
        return None if st[0] == -1 else f"shard {k} has a file but its record says it has none"
    if st[0] == -1:
        return f"shard {k} is missing (its completion record names a file)"
    got = hash_file(f)
    if got != want:
        return f"shard {k} is corrupt: its sha256 {got} differs from the recorded {want}"
    cache.remember(k, st)
    return None


def verify_shards(store, num: int, records: dict | None = None, workers: int | None = None,
                  shards=None, trust: bool = True) -> list[tuple[int, str]]:
    """Hash every one of the `num` shards (or `shards`) the cache does not trust, `workers` threads at a time (default:
    the cores available); [(shard, problem)] sorted by shard. Passes are remembered beside the store;
    trust=False hashes every shard (`supmam store verify`: bit rot keeps size and mtime)."""
    records = read_attrs(store).get("shards", {}) if records is None else records
    cache = VerifiedCache(store, records, num)
    todo = list(range(cache.num) if shards is None else shards)
    with ThreadPoolExecutor(max(1, workers or default_workers())) as pool:
        found = list(pool.map(lambda k: (k, check_shard(cache, k, trust)), todo))
    cache.save()
    return [(k, msg) for k, msg in found if msg]
