"""Disk space: check before writing, and turn a full disk into one line, `<path>: disk full (need ~N GB, have M GB)`.

h5py on a full file system can crash the process (a bus error on tmpfs) instead of raising, so
the writers check free space before each large write; an ENOSPC that still happens (another
process filled the disk) becomes the same StoreError. Partial work stays where it was (finished
part files, finished shards), so a rerun after freeing space resumes.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from cache_tools.errors import StoreError


def free_bytes(path: Path | str) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def disk_full(path: Path | str, need: int) -> StoreError:
    return StoreError(path, f"disk full (need ~{_gb(need)}, have {_gb(free_bytes(path))}); "
                            "free some space and rerun: finished work is kept")


def require_space(path: Path | str, need: int) -> None:
    """StoreError naming `path` unless the file system holding it has `need` bytes free."""
    if free_bytes(path) < need:
        raise disk_full(path, need)


def is_disk_full(e: BaseException) -> bool:
    """An OSError for a full disk (errno ENOSPC / EDQUOT, or h5py's text carrying errno 28)."""
    if not isinstance(e, OSError):
        return False
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or f"errno = {errno.ENOSPC}," in text
