"""SupmamError: every user-facing error (message '<file>: <why>'); StoreError: the one both stores raise."""
from __future__ import annotations

from pathlib import Path


class SupmamError(Exception):
    """User-facing error: the CLI prints `error: <message>` and exits 1; message '<file>: <why>'."""


class StoreError(SupmamError):
    """A store that is missing, incomplete or not what it claims; the message names the file."""

    def __init__(self, path: Path | str, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")
