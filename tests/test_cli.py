"""The `supmam` app: every command registered in pipeline order, and one error policy: a user error
(SupmamError) is `error: <file>: <why>` on stderr with exit code 1 and no traceback; a bug raises
with its traceback. Run as the console script runs it (`python -m pipeline.app.cli`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from pipeline.app.cli import app


REPO = Path(__file__).resolve().parent.parent
PIPELINE_ORDER = ["data", "prepare", "targets", "store", "pretrain", "finetune", "evaluate", "probe", "embed",
                  "export", "demo", "ablate"]


def supmam(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline.app.cli ARGS` (or a script that ends in main()) from the repo root."""
    cmd = [sys.executable, "-m", "pipeline.app.cli", *args] if code is None else [sys.executable, "-c", code, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_commands_are_registered_in_pipeline_order():
    root = typer.main.get_command(app)
    assert root.list_commands(None) == PIPELINE_ORDER
    assert sorted(root.commands) == sorted(PIPELINE_ORDER)
    assert root.commands["prepare"].list_commands(None) == ["audioset", "esc50", "spc2", "spc1", "all",
                                                                  "folder"]
    assert root.commands["store"].list_commands(None) == ["inspect", "verify"]
    help_text = CliRunner().invoke(app, ["--help"]).output       # one row per command: name, spaces, help
    listed = [m for m in re.findall(r"^\W*([a-z]+) {2,}\S", help_text, re.M) if m in PIPELINE_ORDER]
    assert listed == PIPELINE_ORDER


def test_missing_and_garbage_stores_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file")
    for args, named in ((["store", "inspect", str(tmp_path / "nope.zarr")], tmp_path / "nope.zarr"),
                        (["targets", "--clips", str(garbage), "--out", str(tmp_path / "t.zarr")], garbage),
                        (["ablate", "--stores", str(tmp_path), "--runs", str(tmp_path / "runs")],
                         tmp_path / "audioset_unbalanced_train.targets.zarr")):
        r = supmam(*args)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"error: {named}: "), r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "runs").exists()


def test_a_bug_raises_with_its_traceback():
    # a library function that fails with a plain exception (a bug, not a user error)
    code = ("import sys, cache_tools.inspect as ins\n"
            "def broken(path): raise ZeroDivisionError('a bug')\n"
            "ins.inspect_store = broken\n"
            "from pipeline.app.cli import main\n"
            "sys.argv[0] = 'supmam'\n"
            "main()\n")
    r = supmam("store", "inspect", "x.h5", code=code)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "ZeroDivisionError: a bug" in r.stderr
    assert "error: " not in r.stderr


def test_cli_runner_on_app_follows_the_same_policy(tmp_path):
    r = CliRunner().invoke(app, ["store", "inspect", str(tmp_path / "nope.h5")])
    assert r.exit_code == 1 and r.output.startswith(f"error: {tmp_path / 'nope.h5'}: ")
