"""One figure per run from its JSON-lines log: loss and its parts, lr, and throughput on the update axis."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_NOT_CURVES = {"step", "epoch", "lr", "clips_per_s", "data_wait"}


def read_log(log_jsonl: str | Path) -> list[dict]:
    path = Path(log_jsonl)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training log here")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
    return rows


def plot_curves(log_jsonl: str | Path, png: str | Path, title: str | None = None) -> Path:
    """Loss (+ each numeric part), lr and clips/s against the update step; written to `png`."""
    rows = read_log(log_jsonl)
    if not rows:
        raise ValueError(f"{log_jsonl}: the log is empty, nothing to plot")
    steps = [r["step"] for r in rows]
    keys = [k for k in rows[0] if k not in _NOT_CURVES and isinstance(rows[0][k], (int, float))]
    fig, (ax_l, ax_lr, ax_s) = plt.subplots(3, 1, figsize=(7, 8), sharex=True,
                                            gridspec_kw={"height_ratios": [3, 1, 1]})
    for k in keys:
        ax_l.plot(steps, [r.get(k, float("nan")) for r in rows], label=k, lw=1.2 if k == "loss" else 0.9)
    ax_l.set_ylabel("loss")
    if all(r.get(k, 1) > 0 for r in rows for k in keys):
        ax_l.set_yscale("log")
    ax_l.legend(fontsize=8)
    ax_l.set_title(title or Path(log_jsonl).parent.name)
    ax_lr.plot(steps, [r.get("lr", float("nan")) for r in rows], color="tab:gray")
    ax_lr.set_ylabel("lr")
    ax_s.plot(steps, [r.get("clips_per_s", float("nan")) for r in rows], color="tab:green")
    ax_s.set_ylabel("clips/s")
    ax_s.set_xlabel("update")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
