"""Files written whole or not at all: write a temporary file beside the target, fsync it, rename it
over the target, fsync the folder (so the rename itself survives a crash).

`atomic_path(out)` yields the temporary path for any writer that takes one (h5py, torch.save);
on an error inside the block it is deleted and the target left as it was. The file gets the mode
any other tool would give it (0666 less the umask), not mkstemp's 0600.
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
        stem = path.name if len(os.fsencode(path.name)) <= 200 else os.fsdecode(os.fsencode(path.name)[:200])
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.", suffix=".tmp")   # fits NAME_MAX (255)
        os.close(fd)
        tmp = name
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp (and safetensors) make 0600; others may read it
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def check_name_room(path: Path | str, *suffixes: str) -> None:
    """ConfigError, before any work, if `path`'s name plus the longest of `suffixes` (the sibling files a
    command writes beside it: `.report.json`, `.lock`, ...) exceeds the file system's name limit."""
    path = Path(path)
    try:
        limit = os.pathconf(path.parent if path.parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max((len(os.fsencode(path.name + s)) for s in ("", *suffixes)), default=0)
    if longest > limit:
        from cache_tools.errors import ConfigError
        raise ConfigError(f"{path}: the name is too long: with the files written beside it "
                          f"({', '.join(path.name[:12] + '...' + s for s in suffixes)}) it needs {longest} bytes, "
                          f"more than the {limit} a file name may have here; choose a shorter name")


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
