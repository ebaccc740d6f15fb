"""`supmam`: the command line, every command registered here in pipeline order (stage_one, stage_two,
use, runs).

Error policy: a SupmamError (its message names the file) or an OSError the file system gives for a
path the user chose (USER_ERRNOS) becomes `error: <file>: <why>` on stderr and exit code 1; any
other exception is a bug and keeps its traceback. The root group applies it, so `supmam`,
`python -m pipeline.app.cli` and CliRunner on `app` behave the same, side-by-side workers included.
"""
from __future__ import annotations

import errno
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # laion-clap's imports must never reach for the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from cache_tools.errors import SupmamError  # noqa: E402
from pipeline.app.cli import runs, stage_one, stage_two, use  # noqa: E402


# what the user's file system says about the paths they gave (a name too long, no permission, a full or
# read-only disk, a path through a file or a dangling link): one line naming the file, not a bug
USER_ERRNOS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
               errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


def _printable(text: str) -> str:
    """Non-UTF-8 bytes of a file name (kept as surrogates) as \\xNN, so the message itself can be printed."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Root(TyperGroup):
    """The root group: the error policy (module docstring) and `--help` in pipeline order."""

    def invoke(self, ctx):
        if callable(getattr(sys.stdout, "reconfigure", None)):     # a path with non-UTF-8 bytes prints escaped
            sys.stdout.reconfigure(errors="backslashreplace")    # (as stderr does), never a crash at the end
        try:
            return super().invoke(ctx)
        except SupmamError as e:
            typer.echo(f"error: {_printable(str(e))}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:
            if e.errno not in USER_ERRNOS:
                raise
            name = e.filename if e.filename is not None else "(file)"
            typer.echo(f"error: {_printable(os.fsdecode(name))}: {e.strerror}", err=True)
            raise typer.Exit(1) from None

    def list_commands(self, ctx) -> list[str]:
        return [name for name in COMMANDS if name in self.commands]   # typer puts groups after commands


def _group(help: str, commands: dict) -> typer.Typer:
    sub = typer.Typer(no_args_is_help=True, help=help)
    for name, fn in commands.items():
        sub.command(name)(fn)
    return sub


COMMANDS = {   # pipeline order; a typer.Typer is a group of subcommands
    "data": _group("Built-in mini datasets.", {"mini": stage_one.data_mini}),
    "prepare": _group("Audio folders -> HDF5 clip stores.", {
        "audioset": stage_one.prepare_audioset, "esc50": stage_one.prepare_esc50, "spc2": stage_one.prepare_spc2,
        "spc1": stage_one.prepare_spc1, "all": stage_one.prepare_all, "folder": stage_one.prepare_folder}),
    "targets": stage_one.targets,
    "store": _group("Inspect / verify clip and target stores.", {
        "inspect": stage_one.store_inspect, "verify": stage_one.store_verify}),
    "pretrain": stage_two.pretrain,
    "finetune": stage_two.finetune,
    "evaluate": stage_two.evaluate,
    "probe": stage_two.probe,
    "embed": use.embed,
    "export": use.export,
    "demo": runs.demo,
    "ablate": runs.ablate,
}
app = typer.Typer(cls=_Root, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Masked audio modeling with cached CLAP targets (MAM-CLAP, SupMAM, SupMAM-CLAP, AudioMAE).")
for _name, _cmd in COMMANDS.items():
    if isinstance(_cmd, typer.Typer):
        app.add_typer(_cmd, name=_name)
    else:
        app.command(_name)(_cmd)


def main() -> None:
    """The `supmam` console script (and `python -m pipeline.app.cli`): the app under the error policy."""
    app(prog_name="supmam")
