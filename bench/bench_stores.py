"""Store benchmarks: target-store and clip-store reads against a raw .npy memmap of the same
numbers (and zarr-python), and bytes per clip of each store. Called by bench_cpu.py.

Warm page cache: every file is read once in full before timing (common.read_through), so the
figures compare the readers, not the disk. Reads are random (seeded) clip indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import common, synthetic

GRID, DIM = (32, 2), 768          # laion-clap HTSAT-tiny token map of a 10 s clip (Tt, Ft), D


def target_reads(tmp: Path, n: int, min_time: float, batch: int = 64) -> dict:
    """TargetStore vs raw .npy memmap vs zarr-python: random single clips and batches of `batch`."""
    import zarr

    from cache_tools.targets.store import TargetStore
    tmp.mkdir(parents=True, exist_ok=True)
    shape = (*GRID, DIM)
    npy = synthetic.write_npy(tmp / "targets.npy", n, shape, seed=0)
    zpath = synthetic.write_target_store(tmp / "targets.zarr", n, GRID, DIM, seed=0,
                                         clips_per_shard=max(1, min(n, 512)))
    warm = common.read_through(npy) + common.read_through(zpath)
    mm = np.load(npy, mmap_mode="r")                                   # [N,Tt,Ft,D] f16
    store = TargetStore(zpath)
    store.read(np.arange(0, n, store.k))                               # each shard's one-time sha256 check
    arr = zarr.open_array(str(zpath / "targets"), mode="r")
    check = np.random.default_rng(1).integers(0, n, 8)
    identical = bool(np.array_equal(store.read(check), mm[check]) and np.array_equal(arr[int(check[0])], mm[check[0]]))

    rng = np.random.default_rng(0)
    singles = iter(rng.integers(0, n, 10**7).tolist())
    batches = (rng.integers(0, n, batch) for _ in iter(int, 1))        # endless [batch] index arrays
    r = {
        "single_npy": common.rate(lambda: np.array(mm[next(singles)]), 1, min_time),
        "single_targetstore": common.rate(lambda: store[next(singles)], 1, min_time),
        "single_zarr": common.rate(lambda: arr[next(singles)], 1, min_time, max_calls=200),
        "batch_npy": common.rate(lambda: mm[next(batches)], batch, min_time),      # fancy index copies
        "batch_targetstore": common.rate(lambda: store.read(next(batches)), batch, min_time),
        "batch_zarr": common.rate(lambda: arr.oindex[next(batches)], batch, min_time, max_calls=20),
    }
    return {"clips": n, "clip_shape": list(shape), "dtype": "float16", "batch": batch,
            "store_bytes": common.dir_bytes(zpath), "npy_bytes": npy.stat().st_size,
            "warm_cache_bytes_read": warm, "identical_to_npy": identical,
            "memmap_path": bool(store._mappable),
            "clips_per_s": {k: round(v, 1) for k, v in r.items()},
            "ratio_single_targetstore_vs_npy": common.ratio(r["single_targetstore"], r["single_npy"]),
            "ratio_single_zarr_vs_npy": common.ratio(r["single_zarr"], r["single_npy"]),
            "ratio_batch_targetstore_vs_npy": common.ratio(r["batch_targetstore"], r["batch_npy"]),
            "ratio_batch_zarr_vs_npy": common.ratio(r["batch_zarr"], r["batch_npy"]),
            "_store_path": str(zpath)}


def shard_check(tmp: Path, clips: int, repeats: int = 3) -> dict:
    """What TargetStore's first read of a shard costs with its sha256 check (verify=True, the
    default) and without: one shard of `clips` clips (1365 = ~128 MiB, the default shard size), warm
    page cache; median of `repeats` fresh readers."""
    import time

    from cache_tools.targets.store import TargetStore, shard_file
    zpath = synthetic.write_target_store(tmp / "shard.zarr", clips, GRID, DIM, seed=0, clips_per_shard=clips)
    nbytes = common.read_through(shard_file(zpath, 0))

    def first_read(verify: bool) -> float:
        times = []
        for _ in range(repeats):
            (zpath / "progress" / "verified.json").unlink(missing_ok=True)   # a shard never verified before
            store = TargetStore(zpath, verify=verify)
            t0 = time.perf_counter()
            store[clips // 2]
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    checked, unchecked = first_read(True), first_read(False)
    return {"shard_mib": round(nbytes / 2**20, 1), "first_read_ms_verified": round(1e3 * checked, 1),
            "first_read_ms_unverified": round(1e3 * unchecked, 2),
            "sha256_gib_per_s": round(nbytes / 2**30 / max(checked - unchecked, 1e-9), 2),
            "ratio_first_read_verified_vs_unverified": common.ratio(checked, unchecked)}


def clip_reads(tmp: Path, n: int, min_time: float, target_length: int = 1024, seconds: float = 10.0) -> dict:
    """ClipStore.fbank(i) / .wave(i) vs a raw .npy memmap holding the same arrays."""
    import h5py

    from cache_tools.clips.store import ClipStore
    tmp.mkdir(parents=True, exist_ok=True)
    path = synthetic.write_clip_store(tmp / "clips.h5", n, target_length, seconds, seed=0)
    fb_npy, wv_npy = tmp / "fbank.npy", tmp / "wave.npy"
    with h5py.File(path, "r") as f:                                    # same numbers, raw layout
        fb = np.lib.format.open_memmap(fb_npy, "w+", np.float16, f["fbank"].shape)  # [N,T,128]
        wv = np.lib.format.open_memmap(wv_npy, "w+", np.int16, f["wave"].shape)     # [N,S]
        for s in range(0, n, 64):
            fb[s:s + 64], wv[s:s + 64] = f["fbank"][s:s + 64], f["wave"][s:s + 64]
        fb.flush(), wv.flush()
        del fb, wv
    for p in (path, fb_npy, wv_npy):
        common.read_through(p)
    store = ClipStore(path)
    fb, wv = np.load(fb_npy, mmap_mode="r"), np.load(wv_npy, mmap_mode="r")
    identical = bool(np.array_equal(store.fbank(n - 1), fb[n - 1]) and np.array_equal(store.wave(0), wv[0]))
    idx = iter(np.random.default_rng(0).integers(0, n, 10**7).tolist())
    h5 = h5py.File(path, "r")
    ds = h5["fbank"]  # a dataset handle kept open: what ClipStore.fbank could reach
    r = {"fbank_npy": common.rate(lambda: np.array(fb[next(idx)]), 1, min_time),
         "fbank_clipstore": common.rate(lambda: store.fbank(next(idx)), 1, min_time),
         "fbank_h5py_open_dataset": common.rate(lambda: ds[next(idx)], 1, min_time),
         "wave_npy": common.rate(lambda: np.array(wv[next(idx)]), 1, min_time),
         "wave_clipstore": common.rate(lambda: store.wave(next(idx)), 1, min_time)}
    return {"clips": n, "target_length": target_length, "wave_samples": int(seconds * 16000),
            "identical_to_npy": identical, "store_bytes": path.stat().st_size,
            "clips_per_s": {k: round(v, 1) for k, v in r.items()},
            "ratio_fbank_clipstore_vs_npy": common.ratio(r["fbank_clipstore"], r["fbank_npy"]),
            "ratio_wave_clipstore_vs_npy": common.ratio(r["wave_clipstore"], r["wave_npy"]),
            "ratio_fbank_h5py_open_dataset_vs_npy": common.ratio(r["fbank_h5py_open_dataset"], r["fbank_npy"]),
            "_store_path": str(path)}


def storage(target: dict, clips: dict, patch: int = 16, n_mels: int = 128, target_length: int = 1024) -> dict:
    """Bytes per clip on disk of each store vs per-patch targets at the student's grid (10 s clip).

    Per-patch targets would hold one D-vector per student patch: (T/p) x (n_mels/p) x D values."""
    tp, fp = target_length // patch, n_mels // patch
    per_patch = tp * fp * DIM                                         # values per clip (64x8x768)
    t_bytes = target["store_bytes"] / target["clips"]
    c_bytes = clips["store_bytes"] / clips["clips"]
    return {"student_grid": [tp, fp], "teacher_grid": list(GRID), "dim": DIM,
            "target_store_bytes_per_clip": round(t_bytes), "target_raw_bytes_per_clip": int(np.prod(GRID)) * DIM * 2,
            "clip_store_bytes_per_clip": round(c_bytes),
            "clip_store_fbank_bytes_per_clip": clips["target_length"] * n_mels * 2,
            "clip_store_wave_bytes_per_clip": clips["wave_samples"] * 2,
            "per_patch_fp32_bytes_per_clip": per_patch * 4, "per_patch_fp16_bytes_per_clip": per_patch * 2,
            "ratio_target_store_vs_per_patch_fp32": common.ratio(t_bytes, per_patch * 4),
            "ratio_target_store_vs_per_patch_fp16": common.ratio(t_bytes, per_patch * 2),
            "ratio_clip_store_vs_per_patch_fp32": common.ratio(c_bytes, per_patch * 4),
            "audioset_2m_target_store_gb": round(t_bytes * 2e6 / 1e9, 1),
            "audioset_2m_per_patch_fp16_gb": round(per_patch * 2 * 2e6 / 1e9, 1)}
