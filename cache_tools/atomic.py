"""Files written whole or not at all: write a temporary file beside the target, fsync it, rename it
over the target, fsync the folder (so the rename itself survives a crash).

    with atomic_path(out) as tmp:          # any writer that takes a path: h5py, torch.save, ...
        torch.save(state, tmp)
    atomic_write_text(report, text)        # the stores' reports, job descriptions, completion records

On an error inside the block the temporary file is deleted and the target is left as it was.
The file gets the mode any other tool would give it (0666 less the user's umask), not mkstemp's 0600.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_file(path: Path | str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set-and-restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str, tmp: Path | str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on a clean exit it replaces `path`.

    `tmp` names the temporary file (a caller that cleans up stale ones by name); by default a fresh
    `.<name>.<random>.tmp` in the same folder."""
    path = Path(path)
    if tmp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())        # mkstemp makes 0600; others may read what we write
        finally:
            os.close(fd)
        tmp = name
    tmp = Path(tmp)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
