"""Shared benchmark helpers: timing, sections that record their own errors, tables, JSON.

Every benchmark is a *section*: a function returning a dict of measurements. `run_section`
catches anything it raises and records `{"status": "error", "error": ...}` instead, so one
missing module never hides the other numbers. Figures that compare two paths are ratios
measured side by side in the same process, so machine load cancels out of them (mostly).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ on the path, not the repo
    sys.path.insert(0, str(REPO))


def rate(fn: Callable[[], object], items_per_call: int, min_time: float = 0.5, max_calls: int = 10**6,
         warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Items per second of `fn` (called repeatedly for at least `min_time` s after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if sync:
            sync()
        dt = time.perf_counter() - t0
        if dt >= min_time or calls >= max_calls:
            return calls * items_per_call / dt


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None when either side is missing."""
    if not a or not b:
        return None
    return round(a / b, 4)


def run_section(name: str, fn: Callable[..., dict], *args, **kwargs) -> dict:
    """Run one benchmark section; record its wall time and any error instead of raising."""
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
        out.setdefault("status", "ok")
    except Exception as e:  # noqa: BLE001 - a benchmark records failures, it does not stop
        out = {"status": "error", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(limit=6)}
        print(f"[bench] {name}: ERROR {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpu_model": _cpu_model()}
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        import numpy
        import torch
        info.update(torch=torch.__version__, numpy=numpy.__version__,
                    torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError as e:
        info["import_error"] = str(e)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: str | Path, data: dict) -> Path:
    """Atomic JSON write (cache_tools.atomic)."""
    from cache_tools.atomic import atomic_write_text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def print_table(rows: list[list], header: list[str]) -> str:
    """Plain fixed-width table (also returned as a string for the markdown file)."""
    cells = [[fmt(c) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def dir_bytes(path: str | Path) -> int:
    """Bytes on disk of a file or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def read_through(path: str | Path, block: int = 1 << 22) -> int:
    """Read every byte of a file/directory once so the page cache holds it (warm-cache numbers)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    n = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(block):
                n += len(chunk)
    return n
