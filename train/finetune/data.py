"""Fine-tuning data over clip stores: normalised fbank datasets for evaluation, and the samplers.

A clip store holds raw Kaldi fbank; the loader normalises it as pretraining does
(train.data.normalize_fbank, with the store's per-dataset constants). The training clips and their
augmentation (mixup, SpecAugment, ...) are train.finetune.augment.TrainClips. AS-2M uses AudioMAE's
class-balancing sampler: each clip weighs the sum over its labels of 1000 / (label count + 0.01),
and an epoch draws `epoch_len` clips; on single-label data the same weights balance the classes
(SPC-1, as SUPERB samples it).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from cache_tools.clips.store import ClipStore
from cache_tools.clips.verify import verified
from cache_tools.errors import StoreError
from train.data import normalize_fbank, require_finite


def open_stores(paths: Sequence[str | Path], verify: bool = True) -> list[ClipStore]:
    """Open each clip store; a missing file names itself and how to make it. `verify`: its block
    checksums are checked before use, once per change of the file (cache_tools.clips.verify: a
    corrupt store is a StoreError; an unchanged one that passed before costs one stat)."""
    out = []
    for path in map(Path, paths):
        if not path.exists():
            raise StoreError(f"{path}: clip store not found (build the stores with `make prepare`, "
                            f"or point `stores` (--stores) at the folder that holds {path.name})")
        store = ClipStore(path)
        t0 = time.perf_counter()
        if verify and verified(path, store.fingerprint):
            print(f"[data] {path}: {len(store)} clips, checksums verified ({time.perf_counter() - t0:.2f} s; "
                  "once per change of the file)", flush=True)
        out.append(store)
    return out


class ClipDataset(Dataset):
    """(fbank, label) pairs of a clip store, optionally a subset of its clips, without augmentation.

    item k -> x float32 [1, T, 128] normalised; y float32 [C] multi-hot, or int64 class id.
    """

    def __init__(self, store: ClipStore, indices: Sequence[int] | None = None,
                 norm: tuple[float, float] | None = None):
        self.store = store
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)   # None: every clip
        self.mean, self.std = norm if norm is not None else (store.norm_mean, store.norm_std)

    def __len__(self) -> int:
        return len(self.store) if self.indices is None else len(self.indices)

    def __getitem__(self, k: int):
        i = int(k if self.indices is None else self.indices[k])
        if not 0 <= i < len(self.store):
            raise IndexError(f"clip {i} out of range for {self.store.path} ({len(self.store)} clips)")
        fb = torch.from_numpy(self.store.fbank(i).astype(np.float32))    # [T, 128]
        fb = require_finite(fb, self.store.path, i, self.store.clip_ids, "fbank")
        x = normalize_fbank(fb, self.mean, self.std).unsqueeze(0)        # [1, T, 128]
        y = torch.from_numpy(np.asarray(self.store.label(i)))            # [C] float32 or [] int64
        return x, y

    def label_blocks(self):
        """The labels of this subset in item order, a block of rows at a time (never [n, C] at once)."""
        yield from self.store.label_blocks(self.indices)


WEIGHT_BLOCK = 8192        # rows converted at a time: memory bounded by the block, not by N


def class_balance_weights(labels, block: int = WEIGHT_BLOCK) -> np.ndarray:
    """AudioMAE's gen_weight.py: labels [N, C] multi-hot (or [N] class ids) -> clip weights [N] float64
    = sum over the clip's labels of 1000/(count+0.01). `labels` is the array, or a function giving its
    row blocks in order (a dataset's `label_blocks`: two passes, so no [N, C] copy is ever held, 1 GB
    per rank at AS-2M; no float [N, C] either). The same values as the one-shot product."""
    if not callable(labels):
        array = np.asarray(labels)
        labels = lambda: (array[lo:lo + block] for lo in range(0, len(array), block))   # noqa: E731
    counts = np.zeros(0, np.int64)                                         # [C], grown to the largest class id
    for lab in labels():                                                   # pass 1: clips per class
        lab = np.asarray(lab)
        c = lab.sum(0, dtype=np.int64) if lab.ndim == 2 else np.bincount(lab.astype(np.int64))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[:len(c)] += c
    label_weight = 1000.0 / (counts + 0.01)                                # [C] float64
    out = []                                                               # pass 2: [b] float64 per block
    for lab in labels():
        lab = np.asarray(lab)
        for lo in range(0, len(lab), block):                               # float64 `block` rows at a time
            part = lab[lo:lo + block]
            out.append(label_weight[part.astype(np.int64)] if lab.ndim == 1 else part.astype(np.float64) @ label_weight)
    return np.concatenate(out) if out else np.zeros(0, np.float64)        # [N]


class WeightedEpochSampler(Sampler[int]):
    """Draws `num_samples` indices per epoch with probability proportional to `weights`, split over ranks.

    Every rank draws the same permutation from (seed, epoch) and keeps its own stride, the
    distributed equivalent of `torch.utils.data.WeightedRandomSampler` (AudioMAE wraps that one).
    """

    def __init__(self, weights: np.ndarray, num_samples: int, replacement: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if not replacement and num_samples > len(weights):
            raise StoreError(f"weighted sampler: epoch_len {num_samples} exceeds the {len(weights)} clips "
                            "(sampling without replacement); lower epoch_len or set replacement")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_samples, self.replacement = num_samples, replacement
        self.seed, self.rank, self.world, self.epoch = seed, rank, world_size, 0
        self.per_rank = math.ceil(num_samples / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=g)  # [num_samples]
        idx = torch.cat([idx, idx[: self.per_rank * self.world - len(idx)]])  # pad to a multiple of world
        return iter(idx[self.rank::self.world].tolist())                     # [per_rank]

    def __len__(self) -> int:
        return self.per_rank


def train_sampler(ds: Dataset, weighted: bool, epoch_len: int, seed: int, rank: int, world: int,
                  replacement: bool = False) -> Sampler:
    """The training sampler: class-balanced (AS-2M, SPC-1) or a seeded shuffle, both split over ranks."""
    if weighted:
        w = class_balance_weights(ds.label_blocks)
        return WeightedEpochSampler(w, epoch_len or len(ds), replacement=replacement, seed=seed, rank=rank,
                                    world_size=world)
    return DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)


def soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """y: [B] class ids or [B, C] multi-hot -> float [B, C]."""
    if y.ndim == 1:
        return torch.nn.functional.one_hot(y.long(), num_classes).float()  # [B, C]
    return y.float()
