"""Content fingerprints that tie stores together (clip store -> target store -> checkpoints)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def assignment_digest(folds: np.ndarray | None, splits: np.ndarray | None) -> str | None:
    """sha256 over each clip's fold [N] and split code [N] (int8, in store order), or None when the
    store has neither: which clips train and which test is part of what a store is."""
    if folds is None and splits is None:
        return None
    h = hashlib.sha256()
    for name, x in (("fold", folds), ("split", splits)):
        if x is not None:
            h.update(f"{name}:{len(x)}:".encode("ascii"))
            h.update(np.ascontiguousarray(x, dtype=np.int8).tobytes())
    return h.hexdigest()


def clip_fingerprint(clip_ids: Iterable[str], feature_params: dict, target_length: int,
                     content: str | None = None, assignment: str | None = None) -> str:
    """sha256 over the ordered clip ids, the feature parameters, target_length, (stores with checksums)
    `content`, the digest of the clips' block checksums, and (stores with folds or a split column)
    `assignment`, their assignment_digest; 16 hex chars. Without the last two it is the fingerprint of
    a store without checksums, so such stores keep theirs."""
    h = hashlib.sha256()
    for cid in clip_ids:
        h.update(cid.encode("utf-8"))
        h.update(b"\0")
    h.update(json.dumps(feature_params, sort_keys=True).encode("utf-8"))
    h.update(f"\0target_length={int(target_length)}".encode("utf-8"))
    if content is not None:
        h.update(f"\0content={content}".encode("utf-8"))
    if assignment is not None:
        h.update(f"\0assignment={assignment}".encode("utf-8"))
    return h.hexdigest()[:16]


def json_fingerprint(obj) -> str:
    """sha256 of a JSON-able object (sorted keys); 16 hex chars."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def file_sha256(path) -> str | None:
    """sha256 hex of a file's bytes (read in 4 MiB blocks); None if it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
