"""writer_lock: one writer per output. `<out>.lock` next to the output, taken without waiting.

A second `prepare` on the same --out (or `targets` on the same store) is refused at once instead of
racing the first over the same temp and part files. The lock is an OS file lock (filelock: flock),
so it dies with its process: a `kill -9`ed run leaves at most an unlocked `.lock` file, which the
next run simply takes.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from cache_tools.errors import StoreError


def lock_path(out: Path | str) -> Path:
    return Path(f"{Path(out)}.lock")


@contextmanager
def writer_lock(out: Path | str, stage: str) -> Iterator[Path]:
    """Hold `<out>.lock` for the block; StoreError naming the output and the lock if another process holds it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StoreError(out, f"another `{stage}` run is writing it (it holds {path}); "
                              "refusing to start a second writer") from None
    try:
        yield path
    finally:
        lock.release()
