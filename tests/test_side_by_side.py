"""pipeline.app.side_by_side: jobs run in spawned workers with their share of the cores, each job's
output lands in its own log, results come back under their labels; on a GPU they run in turn."""
from __future__ import annotations

import os

import pytest

from cache_tools.errors import StoreError
from pipeline.app.side_by_side import run_jobs


def job(value: int, fail: bool = False, store_error: bool = False) -> dict:
    import torch
    print(f"job {value} says hello")
    if fail:
        raise ValueError(f"job {value} failed")
    if store_error:
        raise StoreError(f"/data/job{value}.h5", "not a clip store")
    return {"value": value * 10, "pid": os.getpid(), "threads": torch.get_num_threads()}


def test_jobs_run_side_by_side_with_logs(tmp_path):
    jobs = {"a": {"value": 1}, "b": {"value": 2}, "c": {"value": 3}}
    logs = {k: tmp_path / "logs" / f"{k}.log" for k in jobs}
    out = run_jobs(job, jobs, logs, device="cpu", parallel=2, cores=2)
    assert [out[k]["value"] for k in "abc"] == [10, 20, 30]
    assert all(out[k]["pid"] != os.getpid() for k in out)            # in worker processes
    assert len({out[k]["pid"] for k in out}) <= 2                      # at most two workers
    assert all(out[k]["threads"] == 1 for k in out)                    # 2 cores / 2 workers
    for k, v in zip("abc", (1, 2, 3)):
        assert logs[k].read_text() == f"job {v} says hello\n"


def test_gpu_jobs_run_in_turn_here(tmp_path, capsys):
    out = run_jobs(job, {"a": {"value": 4}}, {"a": tmp_path / "a.log"}, device="cuda", cores=8)
    assert out["a"]["pid"] == os.getpid() and not (tmp_path / "a.log").exists()
    assert "job 4 says hello" in capsys.readouterr().out


def test_a_failing_job_raises_its_error(tmp_path):
    with pytest.raises(ValueError, match="job 2 failed"):
        run_jobs(job, {"a": {"value": 1}, "b": {"value": 2, "fail": True}},
                 {k: tmp_path / f"{k}.log" for k in "ab"}, cores=2)


def test_a_user_error_in_a_worker_reaches_the_parent_as_itself(tmp_path):
    """StoreError's __init__ takes (path, why): it must still cross the process boundary intact, so
    the CLI prints it as `error: <file>: <why>` instead of a traceback."""
    with pytest.raises(StoreError) as err:
        run_jobs(job, {"a": {"value": 1}, "b": {"value": 2, "store_error": True}},
                 {k: tmp_path / f"{k}.log" for k in "ab"}, cores=2)
    assert type(err.value) is StoreError and str(err.value) == "/data/job2.h5: not a clip store"
    assert err.value.path.name == "job2.h5" and err.value.why == "not a clip store"
