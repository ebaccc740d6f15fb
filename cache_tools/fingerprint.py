"""Content fingerprints that tie stores together (clip store -> target store -> checkpoints)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def clip_fingerprint(clip_ids: Iterable[str], feature_params: dict, target_length: int,
                     content: str | None = None) -> str:
    """sha256 over the ordered clip ids, the feature parameters, target_length and (stores with
    checksums) `content`, the digest of the clips' block checksums; 16 hex chars. Without
    `content` it is the fingerprint older stores carry."""
    h = hashlib.sha256()
    for cid in clip_ids:
        h.update(cid.encode("utf-8"))
        h.update(b"\0")
    h.update(json.dumps(feature_params, sort_keys=True).encode("utf-8"))
    h.update(f"\0target_length={int(target_length)}".encode("utf-8"))
    if content is not None:
        h.update(f"\0content={content}".encode("utf-8"))
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
