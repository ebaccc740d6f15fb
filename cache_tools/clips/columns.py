"""Per-clip columns of a clip store read lazily, so opening a store keeps nothing N-sized: the clip
ids (one numpy bytes array, read on first use) and label counts (read in blocks of rows)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cache_tools.h5_text import fixed_utf8

if TYPE_CHECKING:
    from cache_tools.clips.store import ClipStore


def label_counts(store: "ClipStore", block: int = 65536) -> np.ndarray:
    """int64 [C]: clips per class, read in blocks of rows (memory bounded by `block`, not N)."""
    counts = np.zeros(store.num_classes, np.int64)
    for lo in range(0, len(store), block):
        lab = store._row("labels", slice(lo, lo + block))
        counts += lab.sum(0, dtype=np.int64) if store.multilabel else np.bincount(lab, minlength=store.num_classes)
    return counts


def label_blocks(store: "ClipStore", rows: np.ndarray | None = None, block: int = 65536):
    """`store.labels` of `rows` (None: every clip), in that order, `block` rows at a time: a pass over
    the labels never holds [N, C] (1 GB at AS-2M) at once. Each block reads the span its rows cover, or
    (rows scattered wider than 4x the block) just those rows."""
    if rows is None:
        for lo in range(0, len(store), block):
            yield store._row("labels", slice(lo, lo + block))
        return
    rows = np.asarray(rows, dtype=np.int64)
    for lo in range(0, len(rows), block):
        ix = rows[lo:lo + block]
        if len(ix) == 0:
            continue
        first, last = int(ix.min()), int(ix.max()) + 1
        if last - first <= 4 * len(ix):
            yield store._row("labels", slice(first, last))[ix - first]
        else:
            uniq, inv = np.unique(ix, return_inverse=True)
            yield store._row("labels", uniq)[inv]                   # h5py reads an increasing index list


class ClipIds(Sequence):
    """A store's clip ids as a read-only sequence of str, read on first use as one numpy bytes array
    [N] S<longest> (no Python object per id: forked workers share its pages; about 20 bytes a clip)."""

    def __init__(self, store: "ClipStore"):
        self._store, self._raw = store, None

    def __getstate__(self):
        return {"_store": self._store, "_raw": None}

    def raw(self) -> np.ndarray:
        """[N] S<w>: the UTF-8 bytes of every id (older stores' variable-length strings converted once)."""
        if self._raw is None:
            got = self._store._row("clip_id", slice(None))
            self._raw = got if got.dtype.kind == "S" else fixed_utf8(s.decode("utf-8") if isinstance(s, bytes)
                                                                     else s for s in got)
        return self._raw

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [b.decode("utf-8") for b in self.raw()[i]]
        return bytes(self.raw()[i]).decode("utf-8")

    def __iter__(self):
        raw = self.raw()
        for lo in range(0, len(raw), 65536):
            yield from (b.decode("utf-8") for b in raw[lo:lo + 65536])

    def __eq__(self, other) -> bool:
        if isinstance(other, ClipIds):
            return np.array_equal(self.raw(), other.raw())
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"ClipIds({len(self)} clips of {self._store.path})"
