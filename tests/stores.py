"""Small stores for the tests, written with the real writers: a clip store through
cache_tools.clips.store (one part, then assemble), a target store through cache_tools.targets.store
(init, every shard, finalize), and the contents the tests put in them.

Test modules take their stores from here (never from each other):
  write_clip_store / write_target_store    any arrays -> a complete store
  write_clips / write_targets              pretraining: tone clips (T=128) and a fake teacher's targets
  class_store / spc_stores                 fine-tuning: clips a tiny ViT can tell apart (T=64)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache_tools.clips import store as cs
from cache_tools.targets import store as ts
from cache_tools.names import clip_store_name

FEATS = {"num_mel_bins": 128, "frame_shift": 10}


def write_clip_store(path: Path, fbank: np.ndarray, wave: np.ndarray, labels: np.ndarray, class_names: list[str],
                     folds: np.ndarray | None = None, ids: list[str] | None = None,
                     sources: dict[str, np.ndarray] | None = None, **attrs) -> cs.ClipStore:
    """fbank [N,T,128] f16, wave [N,S] i16, labels [N] class ids or [N,C] multi-hot -> a complete clip
    store at `path`. `sources`: cache_tools.clips.store.SOURCE_DATASETS, each [N] (as `prepare` records
    them). `attrs` override the root attributes (dataset, split, norm_mean, ...)."""
    n, multilabel = len(labels), np.ndim(labels) == 2
    ids = ids or [f"clip{i:04d}" for i in range(n)]
    d = cs.open_parts(path, {"test": str(path)})
    cs.write_part(d, 0, ids, fbank, wave, labels.astype(np.uint8 if multilabel else np.int64), folds, [],
                  sources=sources)
    base = dict(dataset="spc2", split="train", multilabel=bool(multilabel), class_names=class_names,
                class_ids=class_names, target_length=fbank.shape[1], feature_params=FEATS,
                norm_mean=-6.8, norm_std=5.5)
    cs.assemble(path, 1, {**base, **attrs}, report={})
    return cs.ClipStore(path)


def write_target_store(path: Path, x: np.ndarray, identity: dict, clips_per_shard: int = 4,
                       compression: str | None = None, finish: bool = True) -> Path:
    """x [N,Tt,Ft,D] f16 -> a target store at `path` (finalized unless finish=False)."""
    ts.init_store(path, len(x), x.shape[1:3], x.shape[3], identity, clips_per_shard=clips_per_shard,
                  compression=compression)
    w = ts.ShardWriter(path)
    for k in range(w.num_shards):
        r = w.clips(k)
        w.write(k, x[r.start:r.stop])                                  # [n_k,Tt,Ft,D]
    if finish:
        assert ts.finalize(path)
    return path


# ---------------------------------------------------------------- pretraining: clips and targets

T, SR, SECONDS, C = 128, 16000, 1.0, 3      # frames, sample rate, clip length, classes
GRID, DIM = (8, 2), 16                      # a small fake teacher grid (Tt, Ft) and token dim
TEACHER_MEL = {"sr": 48000, "n_mels": 64, "fmin": 50, "fmax": 14000, "window_seconds": 10.0, "htk": False}
# a tiny MAM that pretrains on these stores in seconds (pretraining config overrides)
TINY_PRETRAIN = ["model.encoder=tiny", "model.encoder_depth=1", "model.decoder_depth=1",
                 "model.decoder_dim=32", "model.decoder_heads=2", "model.cls_hidden=32",
                 "num_workers=0", "device=cpu", "amp=off", "log_every=1", "warmup_steps=2", "min_lr=0",
                 "allow_untrained_teacher=true"]


def fake_teacher(wave: torch.Tensor) -> torch.Tensor:
    """wave [B,S] float -> [B,Tt,Ft,D] float16: elementwise in fixed samples (exact on any batch)."""
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, wave.shape[1], (GRID[0] * GRID[1] * DIM,), generator=g)
    scale = torch.rand(GRID[0] * GRID[1] * DIM, generator=g) * 40 + 5
    out = torch.sin(wave[:, idx.to(wave.device)] * scale.to(wave.device))      # [B,Tt*Ft*D]
    return out.reshape(-1, *GRID, DIM).to(torch.float16)                      # [B,Tt,Ft,D]


def write_clips(path: Path, n: int, seed: int = 0, prefix: str = "clip", class_names: list[str] | None = None) -> Path:
    """A clip store of n structured clips (class-dependent tones in the fbank and the wave); C classes
    named c0, c1, ... unless `class_names` (C of them) says otherwise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % C
    t = np.arange(T)[:, None] / T
    f = np.arange(128)[None, :] / 128
    common = np.sin(2 * np.pi * (3 * t + 2 * f)) * 3 - 4                      # [T,128] shared structure
    fbank = np.stack([common + np.cos(2 * np.pi * (1 + c) * 5 * f) + rng.normal(0, .1, (T, 128))
                      for c in labels]).astype(np.float16)                     # [n,T,128]
    s = np.arange(int(SR * SECONDS)) / SR
    wave = np.stack([0.3 * np.sin(2 * np.pi * (200 * (1 + c)) * s) + rng.normal(0, .05, s.size)
                     for c in labels])
    wave = (np.clip(wave, -1, 1) * 32767).astype(np.int16)                    # [n,S]
    write_clip_store(path, fbank, wave, labels, class_names or [f"c{i}" for i in range(C)],
                     ids=[f"{prefix}{i:03d}" for i in range(n)], norm_mean=-4.0, norm_std=2.0)
    return path


def write_targets(path: Path, clips_path: Path, teacher=fake_teacher, **identity) -> Path:
    """The fake teacher's targets for every clip of `clips_path`, as stage one writes them
    (`identity` overrides the store's teacher identity attrs, e.g. checkpoint_sha256)."""
    clips = cs.ClipStore(clips_path)
    waves = torch.from_numpy(np.stack([clips.wave(i) for i in range(len(clips))]).astype(np.float32) / 32768.0)
    ident = {"teacher": "fake-teacher", "checkpoint": None, "checkpoint_sha256": "untrained:seed=7",
             "teacher_mel": TEACHER_MEL, "clip_fingerprint": clips.fingerprint, **identity}
    return write_target_store(path, teacher(waves).numpy(), ident)           # [N,Tt,Ft,D]


# ---------------------------------------------------------------- fine-tuning: labelled clips

FINETUNE_T = 64          # frames per clip (4 x 8 patches): fast, and a multiple of 16


def easy_fbank(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """[N, T, 128] log-mel-like noise; class c adds a loud band at frequency slot c and a loud
    on/off pattern with period 2(c+1) frames (visible inside every patch)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(-7.0, 1.0, size=(len(labels), FINETUNE_T, 128))
    band, t = 128 // num_classes, np.arange(FINETUNE_T)
    for i, c in enumerate(labels):
        x[i, :, c * band:(c + 1) * band] += 6.0
        x[i, (t // (c + 1)) % 2 == 0, :] += 4.0
    return x.astype(np.float16)


def class_store(path: Path, labels: np.ndarray, class_names: list[str], folds=None, dataset: str = "spc2",
                split: str = "train", fbank: np.ndarray | None = None, seed: int = 0) -> cs.ClipStore:
    """A store of len(labels) clips ([N] class ids or [N,C] multi-hot) with `easy_fbank` features."""
    if fbank is None:
        fbank = easy_fbank(labels.argmax(1) if labels.ndim == 2 else labels, len(class_names), seed)
    return write_clip_store(path, fbank, np.zeros((len(labels), 160), np.int16), labels, class_names, folds=folds,
                            ids=[f"{split}-{i:04d}" for i in range(len(labels))], dataset=dataset, split=split)


def spc_stores(root: Path, task: str, num_classes: int, per_class=(8, 3, 3)) -> list[str]:
    """`<task>_{train,valid,test}.h5` under root, per_class clips of each class in each; the class names."""
    names = [f"w{c}" for c in range(num_classes)]
    for split, k, seed in zip(("train", "valid", "test"), per_class, (0, 1, 2)):
        class_store(root / clip_store_name(task, split), np.repeat(np.arange(num_classes), k), names,
                    dataset=task, split=split, seed=seed)
    return names


# ---------------------------------------------------------------- fine-tuning: clips with their real waves

def wave_clips(n: int, seed: int, seconds: float = 1.0, short_every: int = 3) -> list[np.ndarray]:
    """n int16 waves at 16 kHz: class-dependent tones in noise; every `short_every`-th clip is shorter
    than `seconds` (the store zero-pads it), as real Speech Commands and AudioSet clips can be."""
    rng = np.random.default_rng(seed)
    full = int(SR * seconds)
    out = []
    for i in range(n):
        m = full - int(rng.integers(1000, full // 3)) if i % short_every == short_every - 1 else full
        t = np.arange(m) / SR
        w = 0.2 * np.sin(2 * np.pi * (150 + 90 * i) * t) + rng.normal(0, 0.03, m)
        out.append((np.clip(w, -1, 1) * 32767).astype(np.int16))      # [m]
    return out


def wave_store(path: Path, waves: list[np.ndarray], labels: np.ndarray, class_names: list[str], target_length: int,
               samples: int, ids: list[str] | None = None, record_lengths: bool = False, **attrs) -> cs.ClipStore:
    """A clip store whose fbank is AudioMAE's fbank of each wave (cache_tools.fbank, as `prepare` writes
    it) and whose wave is that wave zero-padded to `samples`; `record_lengths`: with the source
    datasets `prepare` writes (wave_length = each wave's length), else without (an older store)."""
    from cache_tools.fbank import FBANK_PARAMS, fbank
    fb = np.stack([fbank(w.astype(np.float32) / 32768.0, target_length).numpy() for w in waves])  # [N,T,128]
    padded = np.stack([np.pad(w, (0, samples - len(w))) for w in waves])                          # [N,S]
    base = dict(feature_params=dict(FBANK_PARAMS), norm_mean=-6.845978, norm_std=5.5654526)
    sources = None
    if record_lengths:
        n = len(waves)
        sources = {"source_path": np.array([f"w{i}.wav" for i in range(n)], dtype=object),
                   "source_start": np.zeros(n), "source_seconds": np.array([len(w) / SR for w in waves]),
                   "wave_length": np.array([len(w) for w in waves], np.int32)}
        base["source_root"] = str(path.parent)
    return write_clip_store(path, fb.astype(np.float16), padded, labels, class_names, ids=ids, sources=sources,
                            **{**base, **attrs})


def spc_wave_stores(root: Path, task: str = "spc2", num_classes: int = 4, per_class=(6, 2, 2)) -> list[str]:
    """`<task>_{train,valid,test}.h5` under root with real 1 s waves (T=128 frames, as SPC)."""
    names = [f"w{c}" for c in range(num_classes)]
    for split, k, seed in zip(("train", "valid", "test"), per_class, (0, 1, 2)):
        labels = np.repeat(np.arange(num_classes), k)
        wave_store(root / clip_store_name(task, split), wave_clips(len(labels), seed), labels, names, T, SR,
                   ids=[f"{split}-{i:04d}" for i in range(len(labels))], dataset=task, split=split)
    return names
