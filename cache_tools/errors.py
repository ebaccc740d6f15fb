"""User-facing errors: SupmamError, the base the CLI turns into `error: <msg>` (exit 1), and the five
kinds a caller may catch: ConfigError (a setting, option or request), StoreError (a clip or target
store), InputFileError (an audio file, dataset folder or list), CheckpointError (a model file) and
Diverged (a run whose loss became non-finite). A message reads `<file>: <why>`."""
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
    InputFileError) raised in a worker process reaches the parent as the same class and message.
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


class ConfigError(SupmamError):
    """A setting, option, run folder or API argument that is wrong or does not fit the data."""


class InputFileError(SupmamError):
    """An input file, dataset folder or list that is missing, unreadable or not laid out as expected.

    `InputFileError(root, problem, expected)` reads `<root>: <problem>` plus the expected layout;
    `InputFileError(message)` takes a whole message (also how a DataLoader worker's error arrives)."""

    def __init__(self, root: Path | str, problem: str | None = None, expected: str = ""):
        if problem is None:
            super().__init__(str(root))
        elif expected:
            super().__init__(f"{root}: {problem}\nExpected layout:\n{expected.rstrip()}")
        else:
            super().__init__(f"{root}: {problem}")
        self.root = Path(root) if problem is not None else Path(str(self).partition(": ")[0])


class CheckpointError(SupmamError):
    """A checkpoint, export or teacher file that cannot (or must not) be loaded; the message names the file."""


class Diverged(SupmamError, FloatingPointError):
    """The training loss became NaN / inf: the settings (lr, clipping, amp) made the run diverge. The
    message names the run, the update and the checkpoint it can restart from; the CLI prints it as one line."""
