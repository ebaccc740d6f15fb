"""Text in our HDF5 files (clip stores, embedding files) without HDF5's global heap.

h5py writes a Python str, as an attribute or a string dataset, as a variable-length string: the
characters live in the file's global heap, and libhdf5 loops forever on a heap collection whose
objects were zeroed (CHANGELOG.md, issue 15). Fixed-length byte strings
live inside the attribute or dataset itself, so damage there reads as wrong text, which the
fingerprint, the JSON parsing and the format checks then refuse.

    f.attrs["dataset"] = text_attr("audioset")          # np.bytes_, UTF-8
    f.create_dataset("clip_id", data=fixed_utf8(ids))   # [n] S<longest>, UTF-8
    ids = read_text(f["clip_id"])                       # list[str]; older variable-length datasets too
    name = attr_str(f.attrs["dataset"])                 # str
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def fixed_utf8(strings: Iterable[str]) -> np.ndarray:
    """[n] fixed-length bytes (as long as the longest UTF-8 encoding, at least 1) of `strings`."""
    enc = [str(s).encode("utf-8") for s in strings]
    return np.array(enc, dtype=f"S{max([1, *map(len, enc)])}")


def text_attr(s: str) -> np.bytes_:
    """An attribute value for `s`: fixed-length UTF-8 bytes (the store readers decode bytes attrs)."""
    return np.bytes_(s.encode("utf-8"))


def attr_str(v) -> str | None:
    """An attribute read back as str (fixed-length bytes decoded; a str as it is; None stays None)."""
    return v.decode("utf-8") if isinstance(v, bytes) else v


def read_text(dset, sel=slice(None)) -> list[str] | str:
    """The strings of a fixed-length (UTF-8 bytes) or variable-length string dataset at `sel`."""
    got = dset.asstr("utf-8")[sel]
    return got if isinstance(got, str) else list(got)
