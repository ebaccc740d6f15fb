"""`make bench`'s "scale" section: the per-start, per-process and per-disk costs of docs/scale.md,
measured at three store sizes so the 2 M-clip projection rests on measured unit costs.

    .venv/bin/python bench/bench_scale.py --sizes 1000 4000 16000 --out bench/results-scale.json

Per size N (synthetic stores: 1 s clips, T=128, AudioSet's 527 classes; targets 8x2x768 fp16):
  integrity   bytes hashed by the main process and by 2 DataLoader workers over one pass of the
              pretraining loader: a store never verified (every process hashes what it reads: the
              old behaviour) vs after verify_on_node (local rank 0 once); sha256 GB/s of 1 and 2
              threads reading the files; a second start (stat only) in ms
  prepare     part writing (the workers' share: rows + checksums + sums) and assembly (copy only) in
              s; peak disk of the output folder / final store (sampled at each removal and every 2 ms)
  memory      bytes a process keeps after opening the stores and building the dataset (tracemalloc),
              and what the old open kept (labels [N, 527] and the clip ids as Python str);
              class-balance weights' peak: one-shot float64 product vs blocks
  verify      `store verify` of the clip store, 1 vs 2 processes
  scan        AudioSet audio scan: audio_files (rglob + stat) vs scan_audio (threads over scandir)
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402

from bench import common  # noqa: E402

C, T, S, BLOCK = 527, 128, 16000, 64            # classes, frames, samples, clips per part
GRID, DIM = (8, 2), 768


def _folder_bytes(d: Path) -> int:
    return sum(os.stat(os.path.join(r, f)).st_size for r, _, fs in os.walk(d) for f in fs
               if os.path.exists(os.path.join(r, f)))


def write_parts(path: Path, n: int, seed: int = 0) -> tuple[float, float]:
    """n clips as prepare's workers leave them (part files); (seconds writing rows, seconds of which
    computing checksums and sums). Labels multi-hot [n, 527]."""
    from cache_tools.clips import store as cs
    rng = np.random.default_rng(seed)
    d = cs.open_parts(path, {"bench": "scale", "n": n})
    t_all = t_sum = 0.0
    for b, lo in enumerate(range(0, n, BLOCK)):
        k = min(BLOCK, n - lo)
        fb = (rng.standard_normal((k, T, 128), np.float32) * 4 - 4).astype(np.float16)
        wv = rng.integers(-3000, 3000, (k, S), dtype=np.int16)
        lab = (rng.random((k, C)) < 0.01).astype(np.uint8)
        t0 = time.perf_counter()
        cs.part_summary(fb, wv, lab)
        t_sum += time.perf_counter() - t0
        cs.write_part(d, b, [f"Y{lo + i:011d}_{i % 300}.000" for i in range(k)], fb, wv, lab, None, [])
        t_all += time.perf_counter() - t0
    return t_all, t_sum


def prepare_section(tmp: Path, n: int) -> dict:
    from cache_tools.clips import store as cs
    from pipeline.features import FBANK_PARAMS
    out = tmp / "clips.h5"
    t_write, t_sum = write_parts(out, n)
    peak, done = [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _folder_bytes(tmp))
            time.sleep(0.002)
    real_unlink = Path.unlink
    Path.unlink = lambda self, *a, **k: (peak.__setitem__(0, max(peak[0], _folder_bytes(tmp))),
                                         real_unlink(self, *a, **k))[1]
    th = threading.Thread(target=poll)
    th.start()
    attrs = dict(dataset="audioset", split="bench", multilabel=True, class_names=[f"c{k}" for k in range(C)],
                 class_ids=[f"/m/{k}" for k in range(C)], target_length=T, clip_seconds=1.0,
                 feature_params=dict(FBANK_PARAMS), norm_mean=-4.27, norm_std=4.57)
    t0 = time.perf_counter()
    try:
        cs.assemble(out, -(-n // BLOCK), attrs, {"store": str(out)})
    finally:
        t_asm = time.perf_counter() - t0
        done.set()
        th.join()
        Path.unlink = real_unlink
    size = out.stat().st_size
    return {"store_mb": round(size / 1e6, 1), "write_parts_s": round(t_write, 2),
            "checksums_and_sums_in_workers_s": round(t_sum, 2), "assemble_copy_s": round(t_asm, 2),
            "assemble_mb_per_s": round(size / 1e6 / t_asm, 1), "peak_disk_over_store": round(peak[0] / size, 3),
            "peak_disk_over_store_before": 2.0}


def memory_section(tmp: Path, n: int) -> dict:
    import h5py

    from cache_tools.clips.store import ClipStore
    from cache_tools.h5_text import read_text
    from train.data import PretrainDataset
    from train.finetune.data import class_balance_weights
    clips = tmp / "clips.h5"
    PretrainDataset(clips)[0]                                    # warm: imports and h5py's own caches
    gc.collect()
    tracemalloc.start()
    ds = PretrainDataset(clips)
    ds[n - 1]
    kept_now = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del ds
    gc.collect()
    tracemalloc.start()
    with h5py.File(clips, "r") as f:                             # what the old ClipStore kept at open
        old = (f["labels"][:], read_text(f["clip_id"]))
    kept_before = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    labels = ClipStore(clips).labels
    del old
    gc.collect()
    tracemalloc.start()
    np.asarray(labels, np.float64) @ (1000.0 / (labels.sum(0) + 0.01))   # the old one-shot weights
    w_before = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    class_balance_weights(ClipStore(clips).label_blocks)       # as fine-tuning does: blocks from the file
    w_now = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ids = ClipStore(clips).clip_ids.raw()
    return {"open_kept_bytes": kept_now, "open_kept_bytes_before": kept_before,
            "open_bytes_per_clip_before": round(kept_before / n, 1), "clip_ids_array_bytes_per_clip": ids.itemsize,
            "weights_peak_bytes": w_now, "weights_peak_bytes_before": w_before}


def verify_section(tmp: Path, n: int) -> dict:
    from cache_tools.clips.checksums import verify_checksums
    out = {}
    for w in (1, 2):
        t0 = time.perf_counter()
        assert verify_checksums(tmp / "clips.h5", workers=w) == []
        out[f"clip_verify_s_{w}_proc"] = round(time.perf_counter() - t0, 2)
    return out


def integrity_section(tmp: Path, n: int) -> dict:
    from bench import synthetic
    from cache_tools.targets import verify as shard_verify
    from cache_tools.targets.store import TargetStore
    from train.data import PretrainDataset, StepBatchSampler, build_loader, verify_on_node
    clips = tmp / "clips.h5"
    from cache_tools.clips.store import ClipStore
    fp = ClipStore(clips).fingerprint
    z = synthetic.write_target_store(tmp / "t.zarr", n, GRID, DIM, clips_per_shard=170, fingerprint=fp)
    store_bytes = sum(f.stat().st_size for f in (z / "targets" / "c").rglob("*") if f.is_file())
    log = tmp / "hashed.log"
    real = shard_verify.hash_file
    shard_verify.hash_file = synthetic.logging_hash(real, log, os.path.getsize)

    def one_pass() -> tuple[int, int]:
        log.unlink(missing_ok=True)
        ds = PretrainDataset(clips, z)
        sampler = StepBatchSampler(len(ds), 64, 1, 0, 1, seed=0)
        for _ in build_loader(ds, sampler, num_workers=2, pin_memory=False, seed=0):
            pass
        rows = [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []
        main = sum(int(b) for p, b in rows if p == str(os.getpid()))
        return main, sum(int(b) for _, b in rows) - main
    try:
        before = one_pass()                                      # never verified: each process hashes
        old = time.time() - 3600
        for f in (z / "targets" / "c").rglob("*"):
            if f.is_file():
                os.utime(f, (old, old))
        (z / "progress" / "verified.json").unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        t0 = time.perf_counter()
        verify_on_node([z], 0, workers=1)
        t1 = time.perf_counter()
        (z / "progress" / "verified.json").unlink(missing_ok=True)
        verify_on_node([z], 0, workers=2)
        t2 = time.perf_counter()
        after = one_pass()
        t3 = time.perf_counter()
        assert verify_on_node([z], 0) == 0
        t_restart = time.perf_counter() - t3
    finally:
        shard_verify.hash_file = real
    return {"store_mb": round(store_bytes / 1e6, 1), "shards": TargetStore(z).num_shards,
            "hashed_by_main_before_mb": round(before[0] / 1e6, 1), "hashed_by_workers_before_mb": round(before[1] / 1e6, 1),
            "hashed_by_main_after_mb": round(after[0] / 1e6, 1), "hashed_by_workers_after_mb": round(after[1] / 1e6, 1),
            "sha256_gb_per_s_1_thread": round(store_bytes / 1e9 / (t1 - t0), 2),
            "sha256_gb_per_s_2_threads": round(store_bytes / 1e9 / (t2 - t1), 2),
            "second_start_ms": round(1e3 * t_restart, 1)}


def scan_section(tmp: Path, n: int) -> dict:
    from pipeline.readers import audio_files
    from pipeline.readers.audioset import scan_audio
    root = tmp / "audio"
    for i in range(n):
        d = root / f"part{i % 16:02d}"
        if i < 16:
            d.mkdir(parents=True)
        (d / f"Y{i:011d}_{i % 300}.000_{i % 300 + 10}.000.wav").touch()
    t0 = time.perf_counter()
    a = audio_files(root)
    t1 = time.perf_counter()
    b = scan_audio(root, workers=2)
    t2 = time.perf_counter()
    assert a == b
    return {"files": n, "audio_files_s": round(t1 - t0, 3), "scan_audio_s": round(t2 - t1, 3)}


def run(sizes, tmp: Path) -> dict:
    import torch
    torch.set_num_threads(1)
    rows = {}
    for n in sizes:
        d = tmp / f"n{n}"
        d.mkdir(parents=True, exist_ok=True)
        r = {"prepare": prepare_section(d, n)}
        r["memory"] = memory_section(d, n)
        r["verify"] = verify_section(d, n)
        r["integrity"] = integrity_section(d, n)
        r["scan"] = scan_section(d, n)
        rows[str(n)] = r
        print(f"[scale] {n} clips: {r}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="scale section: costs in N, processes and shards (docs/scale.md)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--out", default="bench/results-scale.json")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="supmam-scale-"))
    t0 = time.perf_counter()
    try:
        rows = run(args.sizes, tmp)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    res = {"machine": common.machine_info(), "sizes": args.sizes, "rows": rows,
           "wall_s": round(time.perf_counter() - t0, 1)}
    common.write_json(args.out, res)
    print(f"wrote {args.out} ({res['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
