"""Where a target store keeps things on disk (the `targets` array's shard files and attrs), for the
writer, the reader and the shard verifier alike, without importing zarr."""
from __future__ import annotations

import json
from pathlib import Path

from cache_tools.errors import StoreError

ARRAY = "targets"


def shard_file(path, k: int) -> Path:
    return Path(path) / ARRAY / "c" / str(k) / "0" / "0" / "0"


def read_attrs(path) -> dict:
    """The `targets` array's attrs, read from its zarr.json (no zarr import needed)."""
    meta = Path(path) / ARRAY / "zarr.json"
    if not meta.is_file():
        raise StoreError(path, f"not a target store: {meta} is missing (write one with `supmam targets`)")
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except json.JSONDecodeError as e:
        raise StoreError(path, f"{meta} is not valid JSON ({e})") from e
