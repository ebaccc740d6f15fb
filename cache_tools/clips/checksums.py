"""Clip-store checksums: sha256 per block of clips, computed by prepare's workers as they write each
part, stored by `assemble`, checked by `store verify` (in parallel); their digest goes into the clip
store's fingerprint (content, not only ids).

A block's sha256 runs over each of its clips in store order: the clip's fbank row, wave row and
labels row, as little-endian bytes. Dataset `checksums` S64 [B] (hex); `checksum_rows` int64 [B+1]
gives each block's first clip: a part's kept clips in runs of CHECKSUM_BLOCK (with prepare's default
block size and nothing skipped, the same blocks and digests as stores without `checksum_rows`, which
have CHECKSUM_BLOCK clips per block).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

from cache_tools.h5_text import text_attr

CHECKSUM_BLOCK = 64                 # clips per checksum
CHECKSUM_ABOUT = f"sha256 per {CHECKSUM_BLOCK} clips over each clip's fbank, wave and labels row (little-endian)"
CHECKSUM_PARTS_ABOUT = (f"sha256 per block (checksum_rows: its first clip) over each clip's fbank, wave and labels "
                        f"row (little-endian); blocks are each part's clips in runs of {CHECKSUM_BLOCK}")


def _row_bytes(x: np.ndarray) -> np.ndarray:
    """[n, ...] -> [n, bytes] little-endian rows, so digests do not depend on the machine."""
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    return x.reshape(len(x), -1).view(np.uint8)


class BlockChecksums:
    """sha256 per CHECKSUM_BLOCK consecutive clips, fed clips in store order in runs of any length."""

    def __init__(self, block: int | None = CHECKSUM_BLOCK):
        self.block = block                  # None: one digest over everything added (a part's block)
        self.digests: list[str] = []
        self._h, self._in = hashlib.sha256(), 0

    def add(self, fbank: np.ndarray, wave: np.ndarray, labels: np.ndarray) -> None:
        fb, wv, lab = _row_bytes(fbank), _row_bytes(wave), _row_bytes(labels.reshape(len(labels), -1))
        for i in range(len(fb)):
            for row in (fb[i], wv[i], lab[i]):
                self._h.update(row)
            self._in += 1
            if self._in == self.block:
                self.digests.append(self._h.hexdigest())
                self._h, self._in = hashlib.sha256(), 0

    def finish(self) -> list[str]:
        if self._in:
            self.digests.append(self._h.hexdigest())
            self._h, self._in = hashlib.sha256(), 0
        return self.digests


def part_summary(fbank: np.ndarray, wave: np.ndarray, labels: np.ndarray) -> dict:
    """What assembly needs of a part besides its rows: its checksums (clip_checksums: one per
    CHECKSUM_BLOCK of its clips, newline-separated) and the fbank sums behind the store's stats;
    computed where the part is written (pool workers)."""
    sums = BlockChecksums()
    if len(fbank):                                                 # a part whose clips were all skipped: none
        sums.add(fbank, wave, labels)
    fb = fbank.astype(np.float64)                                  # [n,T,F]
    return {"sha256": text_attr("\n".join(sums.finish())),
            "fbank_sum": float(fb.sum()), "fbank_sumsq": float((fb * fb).sum()), "fbank_count": int(fb.size)}


def read_part_summary(f: h5py.File) -> dict:
    """part_summary of an open part: its attrs, or recomputed (parts written before they held them)."""
    if "sha256" in f.attrs:
        return {k: f.attrs[k] for k in ("sha256", "fbank_sum", "fbank_sumsq", "fbank_count")}
    return part_summary(f["fbank"][:], f["wave"][:], f["labels"][:])


def block_rows_of_parts(counts: list[int]) -> np.ndarray:
    """int64 [B+1]: checksum blocks are each part's clips in runs of CHECKSUM_BLOCK (the last run shorter)."""
    starts, offset = [], 0
    for c in counts:
        starts += range(offset, offset + c, CHECKSUM_BLOCK)
        offset += c
    return np.array(starts + [offset], np.int64)


def content_digest(digests: list[str]) -> str:
    """One sha256 over the ordered block checksums: what the fingerprint takes of the contents."""
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def old_store_note(path: Path | str) -> str | None:
    """A note for a store written before checksums existed (nothing to verify; not a failure), else None."""
    with h5py.File(path, "r") as f:
        if "checksums" in f:
            return None
    return (f"{path}: no checksums (old store): its contents cannot be verified; "
            "rebuild it with `supmam prepare` to add them")


def block_rows(f: h5py.File) -> np.ndarray | None:
    """int64 [B+1]: block b covers clips rows[b]..rows[b+1]-1. Stores assembled from parts record it
    (`checksum_rows`: one block per part); older ones have CHECKSUM_BLOCK clips per block. None: the
    recorded checksums do not fit the store."""
    n, recorded = len(f["fbank"]), len(f["checksums"])
    if "checksum_rows" in f:
        rows = np.asarray(f["checksum_rows"][:], np.int64)
        ok = len(rows) == recorded + 1 and rows[0] == 0 and rows[-1] == n and np.all(np.diff(rows) > 0)
        return rows if ok else None
    block = int(f.attrs.get("checksum_block", CHECKSUM_BLOCK))
    if block != CHECKSUM_BLOCK or recorded != -(-n // block):
        return None
    return np.minimum(np.arange(recorded + 1, dtype=np.int64) * block, n)


def _check_blocks(path: str, blocks: list[int]) -> list[int]:
    """The blocks among `blocks` whose recomputed sha256 differs from the recorded one."""
    bad = []
    with h5py.File(path, "r") as f:
        rows, recorded = block_rows(f), f["checksums"]
        for b in blocks:
            sums = BlockChecksums(block=None)
            lo, hi = int(rows[b]), int(rows[b + 1])
            sums.add(f["fbank"][lo:hi], f["wave"][lo:hi], f["labels"][lo:hi])
            if sums.finish() != [recorded[b].decode("ascii")]:
                bad.append(b)
    return bad


def verify_checksums(path: Path | str, workers: int | None = None) -> list[str]:
    """Problems found by recomputing every block's checksum (empty: contents intact, or an old store
    without checksums: see old_store_note); `workers` processes (default: the cores available), each
    reading its own contiguous run of blocks."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from cache_tools.targets.verify import default_workers

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "checksums" not in f:
            return []
        rows, n, recorded = block_rows(f), len(f["fbank"]), len(f["checksums"])
    if rows is None:
        return [f"{path}: checksums describe {recorded} blocks, which do not cover the store's {n} clips"]
    workers = max(1, min(workers or default_workers(), recorded // 16 or 1))
    runs = [r.tolist() for r in np.array_split(np.arange(recorded), workers) if len(r)]
    if workers == 1:
        bad = _check_blocks(str(path), runs[0] if runs else [])
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            bad = [b for part in pool.map(_check_blocks, [str(path)] * len(runs), runs) for b in part]
    return [f"{path}: clips {rows[b]}..{rows[b + 1] - 1} corrupt (block {b} fails its sha256)" for b in bad]
