"""Gradient share of the classification term (issue 22, item 1): ||grad lambda*L_cls|| / ||grad L_target||
on the encoder's parameters (the part both objectives share), for each reading of Eq. 1 and Eq. 2,
at the start and after `--steps` updates of the mini preset on synthetic mini data.

    .venv/bin/python bench/grad_share.py --rows ROW --out bench/grad-share.json   # one row: 4.5-14 min (2-core VM)
    .venv/bin/python bench/grad_share.py --rows clap-sum/softmax-tau10 --steps 5  # one row, quick check

Data (built once under --data): 200 clips of 10 s (T = 1024), 527 classes of which 20 occur, 1-4
labels per clip, fbank with class-dependent bands; targets a fake teacher's [32, 2, 768] tokens
(active classes' embeddings over a per-token noise floor, LayerNorm'd without affine: unit variance
per token, the scale of HTSAT's final LayerNorm output). The ratio is the mean over 4 fixed batches of
16 clips, each with its own fixed mask, model in training mode.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.stores import write_clip_store, write_target_store   # noqa: E402

N, T, C, ACTIVE, GRID, DIM, SR = 200, 1024, 527, 20, (32, 2), 768, 16000
MEL = {"sr": 48000, "n_mels": 64, "fmin": 50, "fmax": 14000, "window_seconds": 10.0, "htk": False}
# (name, preset, overrides): SupMAM-CLAP at the paper's lambda 1e-4 (Y_v from the encoder), SupMAM at 0.01
# Eq. 2's readings: BCE (the old presets, tau 1) averaged or summed over classes; softmax CE at SupMAE's tau 10
READINGS = {"bce-mean": ["model.cls_reduction=mean", "model.tau=1.0"],
            "bce-sum": ["model.cls_reduction=sum", "model.tau=1.0"],
            "softmax-tau10": ["model.cls_reduction=softmax", "model.tau=10.0"]}
ROWS = {**{f"clap-{d}/{r}": ("supmam-clap-mini", [f"model.clap_dim_reduction={d}", "model.lambda_cls=1e-4",
                                                   "model.clap_visible_from=encoder", *o])
           for d in ("mean", "sum") for r, o in READINGS.items()},
        **{f"rec/{r}": ("supmam-mini", ["model.lambda_cls=0.01", *o]) for r, o in READINGS.items()}}


def build_data(root: Path) -> tuple[Path, Path]:
    clips, targets = root / "as-mini.h5", root / "as-mini.targets.zarr"
    if clips.exists() and targets.exists():
        return clips, targets
    rng = np.random.default_rng(0)
    active = rng.choice(C, ACTIVE, replace=False)
    labels = np.zeros((N, C), np.uint8)
    for i in range(N):
        labels[i, rng.choice(active, rng.integers(1, 5), replace=False)] = 1
    t, f = np.arange(T)[:, None] / T, np.arange(128)[None, :] / 128
    band = {c: np.cos(2 * np.pi * (1 + k) * 3 * f) * 2 for k, c in enumerate(active)}   # [1,128] per class
    env = {c: (np.sin(2 * np.pi * (k + 1) * t) > 0) for k, c in enumerate(active)}        # [T,1] per class
    fbank = np.stack([np.sin(2 * np.pi * (3 * t + 2 * f)) * 2 - 6 + rng.normal(0, .3, (T, 128))
                      + sum(band[c] * env[c] for c in np.flatnonzero(labels[i]))
                      for i in range(N)]).astype(np.float16)                                 # [N,T,128]
    write_clip_store(clips, fbank, np.zeros((N, int(10 * SR)), np.int16), labels, [f"c{i}" for i in range(C)],
                     dataset="audioset", split="unbalanced", norm_mean=-6.0, norm_std=2.5)
    emb = rng.normal(0, 1, (C, DIM))
    x = rng.normal(0, 1, (N, *GRID, DIM))                                                     # noise floor
    for i in range(N):
        for k, c in enumerate(np.flatnonzero(labels[i])):
            on = np.sin(2 * np.pi * (k + 1) * np.arange(GRID[0]) / GRID[0]) > -0.5            # [Tt]
            x[i, on] += 1.5 * emb[c]
    x = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)                            # LayerNorm, no affine
    ident = {"teacher": "fake-ln-teacher", "checkpoint": None, "checkpoint_sha256": "untrained:seed=0",
             "teacher_mel": MEL, "clip_fingerprint": __import__("cache_tools.clips.store", fromlist=["x"])
             .ClipStore(clips).fingerprint}
    write_target_store(targets, x.astype(np.float16), ident, clips_per_shard=50)
    return clips, targets


def share(parts, batches=4, b=16) -> float:
    """Mean over fixed batches of ||grad lambda L_cls|| / ||grad L_target|| on the encoder's parameters."""
    model = parts.model
    params = [q for q in model.encoder.parameters() if q.requires_grad]
    lam, out = model.cfg.lambda_cls, []
    data = parts_dataset(parts)
    model.train()
    for k in range(batches):
        items = [data[i] for i in range(k * b, (k + 1) * b)]
        x = torch.stack([it["fbank"] for it in items])                               # [b,1,T,128]
        labels = torch.stack([it["label"] for it in items])                          # [b,C]
        targets = valid = None
        if parts.targets is not None:
            grid = torch.stack([it["targets"] for it in items])                      # [b,Tt,Ft,D]
            targets, valid = parts.targets(grid, torch.stack([it["index"] for it in items]))
        gen = torch.Generator().manual_seed(1000 + k)
        _, p, _ = model(x, targets=targets, labels=labels, generator=gen, valid=valid)
        tgt = sum(p[n] for n in ("rec", "clap") if n in p)
        g_t = torch.autograd.grad(tgt, params, retain_graph=True, allow_unused=True)
        g_c = torch.autograd.grad(lam * p["cls"], params, allow_unused=True)
        norm = lambda gs: torch.sqrt(sum((g.double() ** 2).sum() for g in gs if g is not None))  # noqa: E731
        out.append((norm(g_c) / norm(g_t)).item())
    return float(np.mean(out))


def parts_dataset(parts):
    from train.data import PretrainDataset
    cfg = parts.cfg
    return PretrainDataset(cfg.clips, cfg.targets if "clap" in cfg.model.objectives else None)


def run_row(name: str, clips: Path, targets: Path, runs: Path, steps: int) -> dict:
    from train.pretrain.config import load_pretrain_config
    from train.pretrain.run import build, train
    preset, ovs = ROWS[name]
    cfg = load_pretrain_config(preset, [f"clips={clips}", f"targets={targets}", f"run_dir={runs}",
                                        f"name={name.replace('/', '_')}", "device=cpu", "amp=off", "num_workers=0",
                                        f"max_steps={steps}", "log_every=10", "ckpt_every=100000", *ovs])
    t0 = time.time()
    parts = build(cfg, overwrite=True)
    start = share(parts)
    train(parts)
    end = share(parts)
    return {"row": name, "preset": preset, "overrides": ovs, "share_start": start, f"share_after_{steps}": end,
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="all", help=f"comma-separated of {', '.join(ROWS)} (or all)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "supmam-grad-share")
    ap.add_argument("--out", type=Path, default=None, help="append rows to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.data.mkdir(parents=True, exist_ok=True)
    clips, targets = build_data(a.data)
    rows = list(ROWS) if a.rows == "all" else a.rows.split(",")
    done = json.loads(a.out.read_text()) if a.out and a.out.exists() else []
    for name in rows:
        r = run_row(name, clips, targets, a.data / "runs", a.steps)
        print(json.dumps(r), flush=True)
        done = [d for d in done if d["row"] != name] + [r]                        # a rerun replaces its row
        if a.out:
            a.out.write_text(json.dumps(done, indent=1) + "\n")


if __name__ == "__main__":
    main()
