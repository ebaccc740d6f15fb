"""Run independent jobs (fine-tunes, ablation configurations) side by side on a CPU's cores.

A tiny-ViT fine-tune gains little from a second thread, so on a multi-core CPU up to `parallel`
spawned workers each take an equal share of the cores, each job's output going to its log file;
on a GPU or one core the jobs run one after the other here. Workers are spawned, not forked
(torch's threads do not survive a fork): `fn` must be a module-level function and a calling script
needs the `if __name__ == "__main__":` guard. Workers exit when the caller dies (pipeline.parent_watch).
A job's numbers depend on its thread count (float reduction order), not on its neighbours.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from pipeline.parent_watch import die_with_parent


def _call_logged(fn: Callable, threads: int, log: str, kw: dict):
    import torch
    torch.set_num_threads(threads)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        return fn(**kw)


def run_jobs(fn: Callable, jobs: dict[str, dict], logs: dict[str, Path], device: str = "cpu",
             parallel: int = 2, cores: int | None = None) -> dict:
    """{label: fn(**kwargs)} for every job; side by side on a multi-core CPU (see module docstring).
    `cores` defaults to os.cpu_count()."""
    cores = cores or os.cpu_count() or 1
    workers = min(parallel, len(jobs), cores)
    if device != "cpu" or workers < 2:
        return {label: fn(**kw) for label, kw in jobs.items()}
    threads = max(1, cores // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {label: pool.submit(_call_logged, fn, threads, str(logs[label]), kw) for label, kw in jobs.items()}
        for label in jobs:
            print(f"[side-by-side] {label}: {threads} thread(s), {workers} at a time, log {logs[label]}", flush=True)
        return {label: f.result() for label, f in futures.items()}
