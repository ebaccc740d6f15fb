"""safe_torch_load: the one way this project reads a torch file. `weights_only=True`, always.

A checkpoint is a pickle, and a pickle can run code; `torch.load(weights_only=True)` builds only
tensors, plain containers and the types allow-listed for that one call (torch's `safe_globals`
context, never a process-wide `add_safe_globals`). The allow-lists name exactly what real files
hold:

  OURS       numpy's legacy RNG state in our pretraining checkpoints (`np.random.get_state()`:
             a uint32 [624] ndarray), see train/pretrain/run.py `rng_state`
  AUDIOMAE   `argparse.Namespace`: AudioMAE's util/misc.py `save_model` stores `'args': args`
  LAION_CLAP numpy float64 scalars: laion-clap's training/main.py saves `optimizer.state_dict()`,
             whose param_groups' `lr` its training/scheduler.py `cosine_lr` sets from `np.cos`

Anything else is refused: `<file>: holds <type>, which is not on the allow-list; not loading it`.
A zip with compressed entries (torch never writes them) or entries claiming more bytes than the file
is refused before torch.load, so what it expands is bounded by the file's size.
Files that are not torch files at all (empty, text, random bytes, truncated) get one line naming
the file and what it looks like. Errors are StoreError (a SupmamError).
"""
from __future__ import annotations

import argparse
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from cache_tools.errors import StoreError

_NP_ARRAY = (np.core.multiarray._reconstruct, np.ndarray, np.dtype)
OURS = (*_NP_ARRAY, type(np.dtype(np.uint32)))
AUDIOMAE = (argparse.Namespace,)
LAION_CLAP = (np.core.multiarray.scalar, np.dtype, type(np.dtype(np.float64)))

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"               # torch's legacy (non-zip) format: pickled magic number first
_REFUSED = (re.compile(r"GLOBAL (\S+) was not an allowed global"),
            re.compile(r"but got <class '([^']+)'>"),
            re.compile(r"Unsupported global: (?:GLOBAL )?(\S+)"))


def _looks_like(head: bytes) -> str:
    """A few words on what a file that is not a torch checkpoint seems to be."""
    text = head[:48].decode("utf-8", errors="replace")
    if all(c.isprintable() or c in "\r\n\t" for c in text) and "\ufffd" not in text:
        return f"a text file starting {text[:24]!r}"
    return f"binary data starting {head[:8]!r}"


def _refused_type(message: str) -> str | None:
    for pattern in _REFUSED:
        if m := pattern.search(message):
            return m.group(1).rstrip(".,")
    return None


def safe_torch_load(path: Path | str, allow: tuple = (), map_location="cpu"):
    """torch.load(path, weights_only=True) with `allow` (a tuple of the constants above) permitted
    for this call only. StoreError naming the file for anything that is not a clean torch file."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(path, "file not found")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise StoreError(path, "empty file (0 bytes), not a torch checkpoint")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        raise StoreError(path, f"not a torch checkpoint: {_looks_like(head)}")
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        raise StoreError(path, f"truncated or damaged torch checkpoint ({path.stat().st_size} bytes; "
                               "its zip directory is missing)")
    if head.startswith(_ZIP_MAGIC):
        _check_zip_entries(path)
    try:
        with torch.serialization.safe_globals(list(dict.fromkeys(allow))), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # torch's "pickle protocol N" notes on junk
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        kind = _refused_type(str(e))
        if kind is not None:
            raise StoreError(path, f"holds {kind}, which is not on the allow-list; not loading it") from None
        raise StoreError(path, f"not a loadable torch checkpoint ({_last_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - zip / pickle / storage errors of a damaged file: one line
        raise StoreError(path, f"truncated or damaged torch checkpoint ({type(e).__name__}: {_last_line(e)})") from None


def _check_zip_entries(path: Path) -> None:
    """torch.save stores every zip entry uncompressed, so what torch.load expands is bounded by the
    file itself. A compressed entry (a 1 MB deflate stream can claim 1 GiB) or a directory claiming
    more bytes than the file holds is refused before torch reads a byte of it."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        raise StoreError(path, f"truncated or damaged torch checkpoint (zip directory: {e})") from None
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise StoreError(path, f"holds {len(packed)} compressed entries ({packed[0]}, ...); torch never "
                               "writes them, so this is not a torch checkpoint; not loading it")
    claimed = sum(i.file_size for i in infos)
    if claimed > size:
        raise StoreError(path, f"its zip directory claims {claimed} bytes of entries, more than the file's "
                               f"{size}; not loading it")


def _last_line(e: BaseException) -> str:
    """The informative line of torch's message (its weights-only errors end in boilerplate)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()] or [type(e).__name__]
    at = next((i for i, s in enumerate(lines) if "WeightsUnpickler error:" in s), None)
    if at is None:
        return lines[-1][:200]
    rest = lines[at].split("WeightsUnpickler error:", 1)[1].strip()
    return (rest or (lines[at + 1] if at + 1 < len(lines) else "unreadable pickle"))[:200]
