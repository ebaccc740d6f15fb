"""kill -9 of a `prepare` parent, or of a `demo` / `ablate` running jobs side by side, leaves no pool
worker running (pipeline.parent_watch: they exit when their parent dies)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures_audio import make_esc50

REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    """Pids of the multiprocessing workers whose parent is `pid` (from /proc; psutil may not be
    installed): spawned workers run `spawn_main`, forked ones share the parent's command line."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmd:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it holds no memory and runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def sleeper(seconds: float) -> float:
    """A side-by-side job that outlives the test unless it is taken along."""
    time.sleep(seconds)
    return seconds


def _kill_parent_then_no_worker_remains(script: str, args: list[str], done: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the parent never started its two workers"
            time.sleep(0.01)
        time.sleep(0.3)                                            # the workers are busy on their jobs
        assert all(_alive(w) for w in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not done.exists(), "the run finished before it could be killed"
        gone_by = time.monotonic() + 5.0
        while any(_alive(w) for w in workers) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert [w for w in workers if _alive(w)] == []
    finally:                                                       # never leave this test's processes behind
        proc.kill()
        proc.wait()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_kill_minus_nine_of_prepare_takes_its_workers_along(tmp_path):
    root = make_esc50(tmp_path / "esc", per_fold=3)                # 45 clips, one block each
    script = ("import sys; from pipeline.prepare import prepare; from pipeline.readers import read_esc50; "
              "from tests.slowed import slow_prepare_blocks; slow_prepare_blocks(); "   # ~11 s on two workers
              "prepare(read_esc50(sys.argv[1]), sys.argv[2], workers=2, block_size=1, progress=False)")
    _kill_parent_then_no_worker_remains(script, [str(root), str(tmp_path / "esc50.h5")], tmp_path / "esc50.h5")


def test_kill_minus_nine_of_side_by_side_jobs_takes_their_workers_along(tmp_path):
    script = ("import sys, pathlib; from pipeline.app.side_by_side import run_jobs; "
              "from tests.test_prepare_orphans import sleeper; d = pathlib.Path(sys.argv[1]); "
              "run_jobs(sleeper, {'a': {'seconds': 120}, 'b': {'seconds': 120}}, "
              "{'a': d / 'a.log', 'b': d / 'b.log'}, parallel=2, cores=2); (d / 'done').touch()")
    _kill_parent_then_no_worker_remains(script, [str(tmp_path)], tmp_path / "done")
