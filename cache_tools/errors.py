"""User-facing errors: SupmamError is the one base class (bad input, bad store, bad config, missing
file); its message reads `<file>: <why>`. The CLI turns exactly these into `error: <msg>`, exit 1.
StoreError is what both stores raise."""
from __future__ import annotations

import re
from pathlib import Path

# torch.utils.data re-raises a worker's exception as `cls("Caught <cls> in DataLoader worker process
# N.\nOriginal Traceback ...\n<module>.<cls>: <message>")` (torch/_utils.py ExceptionWrapper.reraise)
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _restore(cls: type, args: tuple, state: dict) -> "SupmamError":
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


def worker_message(text: str) -> str:
    """The original one-line message inside torch's DataLoader re-raise text (else `text`)."""
    if not _WORKER.match(text):
        return text
    last = [s for s in text.rstrip().splitlines() if s.strip()][-1]
    name, sep, message = last.partition(": ")
    return message if sep and re.fullmatch(r"[\w.]+", name) else last


class SupmamError(Exception):
    """A user-facing error: the input, store, config or file named in the message is wrong.

    Pickles without calling __init__ again, so a subclass with its own __init__ signature (StoreError,
    LayoutError) raised in a worker process reaches the parent as the same class and message.
    Constructible from one string too (every subclass): that is how a DataLoader worker's exception
    reaches the parent, and the traceback text it carries is cut back to the original one line."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (worker_message(args[0]),)
        super().__init__(*args)

    def __reduce__(self):
        return _restore, (type(self), self.args, self.__dict__)


class StoreError(SupmamError):
    """A store that is missing, incomplete or not what it claims; the message names the file."""

    def __init__(self, path: Path | str, why: str | None = None):
        if why is None:                  # one string: a whole message (a DataLoader worker re-raise)
            super().__init__(str(path))
            path, why = Path(str(self).partition(": ")[0]), str(self).partition(": ")[2]
        else:
            super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why
