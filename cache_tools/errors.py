"""StoreError: the one error both stores raise; the message names the file and what is wrong."""
from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """A store that is missing, incomplete or not what it claims; the message names the file."""

    def __init__(self, path: Path | str, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")
