"""User-facing errors: SupmamError is the one base class (bad input, bad store, bad config, missing
file); its message reads `<file>: <why>`. The CLI turns exactly these into `error: <msg>`, exit 1.
StoreError is what both stores raise."""
from __future__ import annotations

from pathlib import Path


class SupmamError(Exception):
    """A user-facing error: the input, store, config or file named in the message is wrong.

    Subclasses that know the file pass `<file>: <why>` as the message (or use StoreError's form)."""


class StoreError(SupmamError):
    """A store that is missing, incomplete or not what it claims; the message names the file."""

    def __init__(self, path: Path | str, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")
