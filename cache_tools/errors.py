"""User-facing errors: SupmamError is the one base class (bad input, bad store, bad config, missing
file); its message reads `<file>: <why>`. The CLI turns exactly these into `error: <msg>`, exit 1.
StoreError is what both stores raise."""
from __future__ import annotations

from pathlib import Path


def _restore(cls: type, args: tuple, state: dict) -> "SupmamError":
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class SupmamError(Exception):
    """A user-facing error: the input, store, config or file named in the message is wrong.

    Pickles without calling __init__ again, so a subclass with its own __init__ signature (StoreError,
    LayoutError) raised in a worker process reaches the parent as the same class and message."""

    def __reduce__(self):
        return _restore, (type(self), self.args, self.__dict__)


class StoreError(SupmamError):
    """A store that is missing, incomplete or not what it claims; the message names the file."""

    def __init__(self, path: Path | str, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: {why}")
