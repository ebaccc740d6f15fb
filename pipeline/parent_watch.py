"""Pool workers that exit when their parent dies: a `kill -9` of `prepare`, `demo` or `ablate`
must not leave spawned workers running (and holding cores) behind it.

    ProcessPoolExecutor(n, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))

Linux's PR_SET_PDEATHSIG sends the worker SIGKILL when the thread that spawned it exits; a daemon
thread that watches the parent pid covers the other platforms (and a parent that died before the
prctl took effect)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1          # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Call first thing in a worker process: from now on the worker ends when process `parent` does."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:                                    # died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)
