"""Synthetic stores for the benchmarks: the same numbers written as a raw .npy, a target store,
a clip store and audio files, deterministic for a seed.

The target/clip stores go through the team's writers (cache_tools) when those exist, so the
benchmark measures the real on-disk layout; the raw .npy of the same array is the baseline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import common  # noqa: F401  (puts the repo on sys.path)


def blocks(n: int, shape: tuple, seed: int, dtype=np.float16, block: int = 128, scale: float = 1.0):
    """Yield (start, array[b, *shape]) covering n items; item i's values depend only on (seed, block)."""
    for start in range(0, n, block):
        b = min(block, n - start)
        rng = np.random.default_rng([seed, start])
        yield start, (rng.standard_normal((b, *shape), dtype=np.float32) * scale).astype(dtype)


def rows(shape: tuple, seed: int, start: int, stop: int, dtype=np.float16, block: int = 128) -> np.ndarray:
    """Items [start, stop) of the same sequence `blocks` yields (generates only the blocks needed)."""
    first = start // block * block
    parts = []
    for b0 in range(first, stop, block):
        rng = np.random.default_rng([seed, b0])
        parts.append(rng.standard_normal((block, *shape), dtype=np.float32).astype(dtype))
    return np.concatenate(parts)[start - first:stop - first]  # [stop-start, *shape]


def write_npy(path: Path, n: int, shape: tuple, seed: int, dtype=np.float16, scale: float = 1.0) -> Path:
    """Raw .npy [n, *shape] written through a memmap (the baseline reader opens it with mmap_mode)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *shape))
    for start, x in blocks(n, shape, seed, dtype, scale=scale):
        mm[start:start + len(x)] = x  # [b, *shape]
    mm.flush()
    del mm
    return path


def write_target_store(path: Path, n: int, grid=(32, 2), dim: int = 768, seed: int = 0,
                       clips_per_shard: int = 256, fingerprint: str = "bench0000000000") -> Path:
    """Target store [n, Tt, Ft, D] fp16 through cache_tools.targets.store (init, whole shards, finalize).

    Clip i holds the same numbers as row i of write_npy(..., shape=(*grid, dim), seed=seed)."""
    from cache_tools.targets import store as ts
    from pipeline.teacher import HTSAT_MEL
    identity = {"teacher": "synthetic (bench)", "checkpoint": None, "checkpoint_sha256": f"untrained:seed={seed}",
                "clip_fingerprint": fingerprint, "teacher_mel": dict(HTSAT_MEL)}
    ts.init_store(path, n, grid, dim, identity, clips_per_shard=clips_per_shard)
    w = ts.ShardWriter(path)
    shape = (*grid, dim)
    for k in range(w.num_shards):
        r = w.clips(k)
        w.write(k, rows(shape, seed, r.start, r.stop))  # [n_k, Tt, Ft, D]
    if not ts.finalize(path):
        raise RuntimeError(f"{path}: synthetic target store did not finalize")
    return path


def write_clip_store(path: Path, n: int, target_length: int = 1024, seconds: float = 10.0,
                     num_classes: int = 10, seed: int = 0, block: int = 64) -> Path:
    """Clip store with fbank [n, T, 128] fp16, wave [n, S] int16, multi-hot labels, via
    cache_tools.clips.store's part files + assemble (the path `supmam prepare` takes)."""
    from cache_tools.clips import store as cs
    from pipeline.features import FBANK_PARAMS, NORM_STATS
    s = int(seconds * 16000)
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, num_classes)) < 0.2).astype(np.uint8)  # [n, C] multi-hot
    parts = cs.open_parts(path, {"bench": "synthetic", "n": n, "seed": seed})
    fbs = blocks(n, (target_length, 128), seed, scale=4.0, block=block)
    waves = blocks(n, (s,), seed + 1, np.float32, scale=0.1, block=block)
    for b, ((start, fb), (_, wv)) in enumerate(zip(fbs, waves)):
        wv16 = np.clip(wv * 32767, -32768, 32767).astype(np.int16)  # [b, S]
        ids = [f"clip{i:06d}" for i in range(start, start + len(fb))]
        cs.write_part(parts, b, ids, fb - 4.0, wv16, labels[start:start + len(fb)], None, [])
    mean, std = NORM_STATS["audioset"]
    attrs = dict(dataset="audioset", split="bench", multilabel=True,
                 class_names=[f"class {k}" for k in range(num_classes)],
                 class_ids=[f"/m/bench{k}" for k in range(num_classes)], target_length=target_length,
                 clip_seconds=seconds, feature_params=dict(FBANK_PARAMS), norm_mean=mean, norm_std=std)
    cs.assemble(path, -(-n // block), attrs, {"store": str(path), "synthetic": True})
    return path


def write_wavs(folder: Path, n: int, seconds: float = 10.0, sr: int = 44100, channels: int = 2,
               seed: int = 0) -> list[Path]:
    """n noisy tone wav files (44.1 kHz stereo by default, so decoding has to downmix and resample)."""
    import soundfile as sf
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    paths = []
    for i in range(n):
        f0 = 110 * 2 ** rng.uniform(0, 4)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(len(t))  # [S]
        x = np.stack([x, 0.8 * x], axis=1)[:, :channels]  # [S, ch]
        p = folder / f"clip{i:04d}.wav"
        sf.write(p, x.astype(np.float32), sr, subtype="PCM_16")
        paths.append(p)
    return paths


def logging_hash(real, log: Path, what=lambda path: path):
    """`real` (a file hash function) wrapped to append `<pid> <what(path)>` to `log` on every call: what
    every process, forked DataLoader workers included, hashed (bench scale and tests/test_scale.py)."""
    import os

    def counting(path):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {what(path)}\n")
        return real(path)
    return counting

