"""Clip-store checksums: sha256 per block of CHECKSUM_BLOCK clips, written by `assemble`, checked
by `store verify`; their digest goes into the clip store's fingerprint (content, not only ids).

A block's sha256 runs over each of its clips in store order: the clip's fbank row, wave row and
labels row, as little-endian bytes. Dataset `checksums` S64 [ceil(N / CHECKSUM_BLOCK)] (hex).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

CHECKSUM_BLOCK = 64                 # clips per checksum
CHECKSUM_ABOUT = f"sha256 per {CHECKSUM_BLOCK} clips over each clip's fbank, wave and labels row (little-endian)"


def _row_bytes(x: np.ndarray) -> np.ndarray:
    """[n, ...] -> [n, bytes] little-endian rows, so digests do not depend on the machine."""
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    return x.reshape(len(x), -1).view(np.uint8)


class BlockChecksums:
    """sha256 per CHECKSUM_BLOCK consecutive clips, fed clips in store order in runs of any length."""

    def __init__(self):
        self.digests: list[str] = []
        self._h, self._in = hashlib.sha256(), 0

    def add(self, fbank: np.ndarray, wave: np.ndarray, labels: np.ndarray) -> None:
        fb, wv, lab = _row_bytes(fbank), _row_bytes(wave), _row_bytes(labels.reshape(len(labels), -1))
        for i in range(len(fb)):
            for row in (fb[i], wv[i], lab[i]):
                self._h.update(row)
            self._in += 1
            if self._in == CHECKSUM_BLOCK:
                self.digests.append(self._h.hexdigest())
                self._h, self._in = hashlib.sha256(), 0

    def finish(self) -> list[str]:
        if self._in:
            self.digests.append(self._h.hexdigest())
            self._h, self._in = hashlib.sha256(), 0
        return self.digests


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


def verify_checksums(path: Path | str) -> list[str]:
    """Problems found by recomputing every block's checksum (empty: contents intact, or an old store
    without checksums: see old_store_note)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        if "checksums" not in f:
            return []
        recorded = [d.decode("ascii") for d in f["checksums"][:]]
        block, n = int(f.attrs.get("checksum_block", CHECKSUM_BLOCK)), len(f["fbank"])
        if block != CHECKSUM_BLOCK or len(recorded) != -(-n // block):
            return [f"{path}: checksums describe {len(recorded)} blocks of {block} clips, the store holds {n} clips"]
        bad = []
        for b, want in enumerate(recorded):
            sums = BlockChecksums()
            rows = slice(b * block, min(n, (b + 1) * block))
            sums.add(f["fbank"][rows], f["wave"][rows], f["labels"][rows])
            if sums.finish() != [want]:
                bad.append(b)
    return [f"{path}: clips {b * block}..{min(n, (b + 1) * block) - 1} corrupt (block {b} fails its sha256)"
            for b in bad]
