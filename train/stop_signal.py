"""A clean stop on SIGTERM / SIGUSR1, as schedulers send before a job's time runs out (SLURM
`--signal=USR1@180`, a preemption's SIGTERM): the loop finishes the update it is in, writes the
checkpoint, and the process exits with EXIT_REQUEUE so the job script can requeue it; `--resume`
then continues with the losses an uninterrupted run would have had (docs/scale.md, "Multi-node").

    with StopOnSignal() as stop:
        while step < end:
            ...one update...
            if stop.agreed(step): checkpoint; break      # every rank stops after the same update

Pretraining stops after any update; fine-tuning too, and `--resume` continues mid-epoch (the sampler
skips what the epoch had done). Their DataLoader workers ignore both signals
(train.data.stoppable_worker_init): the main process ends them when the loop returns
(train.data.shutdown_workers). A stopped fine-tuning loop raises StopRequested up to run_finetune.
"""
from __future__ import annotations

import signal
import threading

import torch

EXIT_REQUEUE = 75          # sysexits' EX_TEMPFAIL: "try again later" (a plain `python` launch exits with it)
STOPPED = "stopped.json"   # in the run folder while a signal-stopped run awaits --resume (job scripts test it)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
CHECK_EVERY = 10           # updates between the ranks' agreement (one tiny all-reduce) under DDP


class StopOnSignal:
    """Context manager: while inside, SIGTERM / SIGUSR1 only set `signum` (main thread only;
    elsewhere it installs nothing). The previous handlers come back on exit."""

    def __init__(self, signals=SIGNALS):
        self.signals, self.signum, self._old = tuple(signals), None, {}

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def agreed(self, step: int, device: torch.device | None = None, every: int = CHECK_EVERY) -> bool:
        """Whether to stop after update `step`: this process's signal, or under DDP any rank's,
        compared every `every` updates (so all ranks stop after the same update; every rank must
        make the same calls)."""
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()):
            return self.signum is not None
        if step % every:
            return False
        flag = torch.tensor([0 if self.signum is None else int(self.signum)], device=device or "cpu")
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


class StopRequested(Exception):
    """A loop stopped on a signal after its update, state saved at `state`: the run's entry point
    writes STOPPED and exits with EXIT_REQUEUE."""

    def __init__(self, signal_name: str, step: int, state: str):
        super().__init__(f"{signal_name} received: stopped after update {step}, state {state}")
        self.signal_name, self.step, self.state = signal_name, step, state


def ignore_in_worker() -> None:
    """DataLoader worker: leave SIGTERM / SIGUSR1 to the main process (which ends its workers)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
