"""kill -9 of a `prepare` parent leaves no pool worker running (they exit when their parent dies)."""
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
    """Pids whose parent is `pid` (from /proc; psutil may not be installed)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it holds no memory and runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_kill_minus_nine_of_prepare_takes_its_workers_along(tmp_path):
    root = make_esc50(tmp_path / "esc", per_fold=3)                # 45 clips, one block each
    script = ("import sys; from pipeline.prepare import prepare; from pipeline.readers import read_esc50; "
              "prepare(read_esc50(sys.argv[1]), sys.argv[2], workers=2, block_size=1, progress=False)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), str(tmp_path / "esc50.h5")], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "prepare never started its two workers"
            time.sleep(0.01)
        time.sleep(0.3)                                            # the workers are busy on their blocks
        assert all(_alive(w) for w in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "esc50.h5").exists(), "the run finished before it could be killed"
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
