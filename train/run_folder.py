"""A run's folder, <run_dir>/<name>/: who may write it, and its log when a run resumes.

A folder holding a run's results (checkpoint*.pt, last.pt or metrics.json, also in fold folders)
is a finished or interrupted run: a new run refuses it unless told `--overwrite` (every file a run
writes there is deleted first, so no old last.pt or log survives beside the new run) or `--resume`
(the settings must match, except RESUMABLE ones whose data is checked by fingerprint). The main
rank holds `<out>.lock` meanwhile, so a second writer is refused at once.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cache_tools.errors import ConfigError
from cache_tools.writer_lock import writer_lock

HELD = ("checkpoint*.pt", "last.pt", "metrics.json")           # a folder with one of these holds a run
RUN_FILES = HELD + ("log.jsonl", "eval.jsonl", "results.md", "split.json", "config.json", "*.png")
# what a resumed run may change: where it runs and where the stores lie (their fingerprints are checked)
FIRST = ("task", "preset", "init", "ckpt")                        # named first when they differ
RESUMABLE = {"device", "num_workers", "run_dir", "stores", "train_clips", "valid_clips", "test_clips", "name",
             "log_every", "eval_batch_size", "cache_dir", "embed_batch_size",
             "clips", "targets", "ckpt_every", "compile", "tensorboard", "accum_steps"}   # the last six: pretraining


def _files(out: Path, patterns: tuple[str, ...]) -> list[Path]:
    if not out.is_dir():
        return []
    return [p for pat in patterns for p in sorted(out.glob(pat)) + sorted(out.glob(f"*/{pat}")) if p.is_file()]


def checkpoints(out: Path) -> list[Path]:
    return _files(Path(out), ("checkpoint*.pt",))


def claim(out: Path | str, resume: bool = False, overwrite: bool = False, is_main: bool = True) -> None:
    """ConfigError unless `out` may be written (the module docstring's rule); with `overwrite` the main
    rank first deletes every RUN_FILES file there."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out}: exists and is not a folder (a run folder is a plain folder); choose another --name")
    held = _files(out, HELD)
    if held and not resume and not overwrite:
        raise ConfigError(f"{out}: holds {held[0].relative_to(out)} from an earlier run; not overwriting it. "
                          "Pass --resume to continue that run, --overwrite to replace it, or another --name")
    if held and overwrite and not resume and is_main:
        for f in _files(out, RUN_FILES):             # nothing of the old run beside the new one (no old last.pt)
            f.unlink()


@contextmanager
def claimed(out: Path | str, stage: str, resume: bool = False, overwrite: bool = False,
            is_main: bool = True) -> Iterator[Path]:
    """One writer per run folder: the main rank holds `<out>.lock` while the block runs; claim() under it."""
    out = Path(out)
    with ExitStack() as stack:
        if is_main:
            stack.enter_context(writer_lock(out, stage))
        claim(out, resume, overwrite, is_main)
        yield out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for each setting (dotted) that differs, RESUMABLE keys left out."""
    a, b = _flat(json.loads(json.dumps(old))), _flat(json.loads(json.dumps(new)))
    keys = sorted(a.keys() | b.keys(), key=lambda k: (k not in FIRST, FIRST.index(k) if k in FIRST else 0, k))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys
            if k.split(".")[0] not in RESUMABLE and a.get(k) != b.get(k)]


def check_resume_config(out: Path | str, cfg: dict, stage: str) -> None:
    """ConfigError (one line, nothing written) if `out/config.json` records other settings than `cfg`."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("config")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ConfigError(f"{path}: not a run's config.json ({e}); cannot check --resume against it") from None
    if not isinstance(old, dict):
        raise ConfigError(f"{path}: holds no `config`; cannot check --resume against it")
    diff = config_diff(old, cfg)
    if diff:
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        raise ConfigError(f"{path}: --resume with other settings than the run was started with: "
                          f"{'; '.join(diff[:3])}{more}. Resume with the same settings, or start a new "
                          f"{stage} run (--overwrite or another --name)")


def check_saved_config(path: Path | str, saved: dict | None, cfg: dict) -> None:
    """ConfigError if the checkpoint at `path` recorded other settings (`saved`) than `cfg`."""
    diff = config_diff(saved or {}, cfg)
    if diff:
        raise ConfigError(f"{path}: written with other settings than this run's: {'; '.join(diff[:3])}; "
                          "resume with the run's settings, or --overwrite / another --name")


def truncate_log(path: Path | str, step: int) -> None:
    """Keep log.jsonl's lines up to update `step`; a last line cut short by a kill (no newline, or not
    JSON) is dropped, a bad line before it is an error naming the file and the line."""
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
