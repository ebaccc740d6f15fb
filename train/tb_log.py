"""TensorBoard event files beside log.jsonl, as an option (`tensorboard=true`; off by default).

    tb = open_tensorboard(run_folder, start_step)     # None unless asked for; ConfigError without the package
    tb_write(tb, record)                              # every number of a log.jsonl line, on its step axis

The events go to <run folder>/tb/; a resumed run purges events after its checkpoint's update, as
log.jsonl is truncated there. Install with `pip install 'supmam-clap[tensorboard]'`.
"""
from __future__ import annotations

from pathlib import Path

from cache_tools.errors import ConfigError


def open_tensorboard(out: Path, start_step: int = 0, enabled: bool = True, write: bool = True):
    """A torch SummaryWriter on out/tb (None when not enabled; with write=False only the package check,
    for the ranks that do not log)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard=true needs the tensorboard package, which is not installed: "
                          "pip install 'supmam-clap[tensorboard]' (or leave tensorboard=false; log.jsonl "
                          "holds the same numbers)") from None
    if not write:
        return None
    return SummaryWriter(log_dir=str(Path(out) / "tb"), purge_step=start_step or None)


def tb_write(tb, rec: dict, prefix: str = "train") -> None:
    """Every finite number of a log record as a scalar at rec["step"]."""
    if tb is None:
        return
    for k, v in rec.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
            tb.add_scalar(f"{prefix}/{k}", v, rec["step"])
    tb.flush()
