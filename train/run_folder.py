"""A run's folder, <run_dir>/<name>/: who may write it, and its log when a run resumes.

claim(out, resume, overwrite, is_main) -> None     ConfigError unless `out` may be written: a folder
    that holds a checkpoint (checkpoint*.pt, also in fold sub-folders) is a finished or interrupted
    run; a new run refuses to replace it unless told (`--overwrite`: the main rank deletes those
    checkpoints first), a resumed one (`--resume`) continues it.
truncate_log(path, step) -> None         keep log.jsonl's lines up to update `step`; a last line cut
    short by a kill (no newline, or not JSON) is dropped; a bad line before it is an error naming
    the file and the line.
"""
from __future__ import annotations

import json
from pathlib import Path

from cache_tools.errors import ConfigError


def checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint*.pt")) + sorted(out.glob("*/checkpoint*.pt")) if out.is_dir() else []


def claim(out: Path | str, resume: bool = False, overwrite: bool = False, is_main: bool = True) -> None:
    out = Path(out)
    held = checkpoints(out)
    if held and not resume and not overwrite:
        raise ConfigError(f"{out}: holds {held[0].relative_to(out)} from an earlier run; not overwriting it. "
                             "Pass --resume to continue that run, --overwrite to replace it, or another --name")
    if held and overwrite and not resume and is_main:
        for ck in held:                              # no stale final checkpoint beside the new run's
            ck.unlink()


def truncate_log(path: Path | str, step: int) -> None:
    path = Path(path)
    if not path.exists():
        return
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]                                   # a line the kill cut short (no newline yet)
    keep = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):                              # the last line, half written: drop it
                break
            raise ConfigError(f"{path}:{n}: not a JSON line ({e.msg}); delete the line to resume") from None
        if rec["step"] <= step:
            keep.append(line)
    path.write_text("".join(ln + "\n" for ln in keep))
