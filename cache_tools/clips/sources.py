"""What identifies each clip's source file, recorded by `prepare` and compared by `prepare` reruns,
`targets` and `store verify`, so a source that changed after the store was made is noticed.

Per clip (SOURCE_IDENTITY): source_size int64 (bytes), source_mtime_ns int64, source_sha256 S64
(hex). compare() stays cheap where nothing changed: equal size and mtime take the file as recorded
(one stat), a differing mtime costs one sha256 (a copy that only lost its mtime is the same file),
a differing size is a change unread. `targets` (which reads the file anyway) and `store verify`
compare deep, hashing every file (one replaced with its mtime kept); a `prepare` rerun by stat.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

SOURCE_IDENTITY = ("source_size", "source_mtime_ns", "source_sha256")


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path: Path | str, memo: dict | None = None) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256 hex) of `path`; memo (a dict) hashes a file once while its stat holds."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if memo is not None and key in memo:
        return memo[key]
    ident = (int(st.st_size), int(st.st_mtime_ns), sha256_file(path))
    if memo is not None:
        memo[key] = ident
    return ident


def compare(path: Path | str, recorded: tuple[int, int, str], memo: dict | None = None,
            deep: bool = False) -> str | None:
    """None if `path` is the file `recorded` describes (module docstring: what each check costs);
    else why not (missing, size, or content), one clause."""
    size, mtime_ns, digest = recorded
    try:
        st = os.stat(path)
    except OSError as e:
        return f"missing ({e.strerror})"
    if st.st_size != size:
        return f"changed since the store was made: {st.st_size} bytes, {size} when prepared"
    if st.st_mtime_ns == mtime_ns and not deep:
        return None
    try:
        now = file_identity(path, memo)[2]
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if now != digest:
        return f"changed since the store was made: sha256 {now[:12]}..., {digest[:12]}... when prepared"
    return None


def recorded_sources(store, root: Path | str | None = None) -> Iterator[tuple[Path, tuple[int, int, str]]]:
    """(file, recorded identity) for each distinct source file of a clip store with identities."""
    import h5py

    from cache_tools.h5_text import read_text
    base = Path(root if root is not None else store.attrs["source_root"])
    with h5py.File(store.path, "r") as f:
        rel = read_text(f["source_path"])
        size, mtime = f["source_size"][:], f["source_mtime_ns"][:]
        digest = f["source_sha256"][:]
    seen: set[str] = set()
    for i, r in enumerate(rel):
        if r in seen:
            continue
        seen.add(r)
        yield base / r, (int(size[i]), int(mtime[i]), digest[i].decode("ascii"))


def changed_sources(store, root: Path | str | None = None, deep: bool = False) -> tuple[list[str], int, int]:
    """(one line per source file that changed, files missing, files checked) for a clip store with
    source identities (store.has_source_identity); missing files are counted, not listed as changes
    (a store may travel without its sources)."""
    changed, missing, checked, memo = [], 0, 0, {}
    for path, rec in recorded_sources(store, root):
        why = compare(path, rec, memo, deep)
        checked += 1
        if why is not None and why.startswith("missing"):
            missing += 1
        elif why is not None:
            changed.append(f"{path}: {why}")
    return changed, missing, checked
