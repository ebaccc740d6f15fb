"""Pretraining data over the two stores: normalised fbank, label, cached CLAP targets (and the wave
for `--teacher online`), read in a deterministic order that can start mid-epoch for resume; and what
fine-tuning's data (train.finetune_data) shares with it: the fbank normalisation and the worker init.

    ds = PretrainDataset(clips_path, targets_path)        # validates the pair, opens lazily per process
    sampler = StepBatchSampler(len(ds), batch_size=128, accum_steps=1, rank=0, world_size=1, seed=0)
    loader = build_loader(ds, sampler, num_workers=4, pin_memory=True, seed=0)
    sampler.set_position(epoch, step_in_epoch); for batch in loader: ...

A batch is a dict: `fbank` float32 [B,1,T,128] (normalize_fbank: AudioMAE's normalisation),
`label` (int64 [B] or float32 multi-hot [B,C]), `index` int64 [B], and optionally
`targets` float16 [B,Tt,Ft,D] (the teacher's own grid; mapped to patches on the device) and
`wave` float32 [B,S] in [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from cache_tools.clip_store import ClipStore
from cache_tools.errors import SupmamError
from cache_tools.target_store import TargetStore
from train.config import ConfigError


class StoreMismatch(SupmamError):
    """A target store that was not computed from the clip store it is paired with."""


def check_stores(clips: ClipStore, targets: TargetStore, targets_path: str | Path) -> None:
    """Refuse a target store made from another clip store (fingerprint) or with another clip count."""
    if targets.clip_fingerprint != clips.fingerprint:
        raise StoreMismatch(
            f"target store {targets_path} was computed from a clip store "
            f"with fingerprint {targets.clip_fingerprint}, but the clip store {clips.path} has fingerprint "
            f"{clips.fingerprint}: the clips (ids, order or feature parameters) differ, so the targets would "
            f"belong to other clips. Recompute the targets for this clip store "
            f"(`supmam targets --clips {clips.path} --out <new target store>`) or pass the matching clip store.")
    if len(targets) != len(clips):
        raise StoreMismatch(
            f"target store {targets_path} holds {len(targets)} clips but the clip store "
            f"{clips.path} holds {len(clips)} (same fingerprint {clips.fingerprint}): the target store is "
            f"incomplete or was written wrongly; rerun `supmam targets --clips {clips.path} --out <target store>`.")


def normalize_fbank(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AudioMAE's input normalisation of a raw Kaldi fbank: (x - mean) / (2 * std), same shape."""
    return (fbank - mean) / (2.0 * std)


class PretrainDataset(Dataset):
    """Clip i of the clip store with its cached targets. Stores open lazily in each process."""

    def __init__(self, clips_path: str | Path, targets_path: str | Path | None = None, with_wave: bool = False):
        self.clips_path = Path(clips_path)
        self.targets_path = Path(targets_path) if targets_path is not None else None
        self.with_wave = with_wave
        self._clips: ClipStore | None = None
        self._targets: TargetStore | None = None
        if self.targets_path is not None:
            check_stores(self.clips, self.targets, self.targets_path)
        self.norm_mean = float(self.clips.norm_mean)
        self.norm_std = float(self.clips.norm_std)
        self.reopen()  # drop the handles used for validation; each worker opens its own

    @property
    def clips(self) -> ClipStore:
        if self._clips is None:
            self._clips = ClipStore(self.clips_path)
        return self._clips

    @property
    def targets(self) -> TargetStore:
        if self.targets_path is None:
            raise RuntimeError("this dataset was built without a target store")
        if self._targets is None:
            self._targets = TargetStore(self.targets_path)
        return self._targets

    def reopen(self) -> None:
        """Forget open store handles (called in each DataLoader worker: h5py handles do not survive fork)."""
        self._clips = None
        self._targets = None

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        fb = torch.from_numpy(np.asarray(self.clips.fbank(i), dtype=np.float32))   # [T,128]
        fb = normalize_fbank(fb, self.norm_mean, self.norm_std).unsqueeze(0)        # [1,T,128]
        item = {"fbank": fb, "label": torch.as_tensor(self.clips.label(i)), "index": torch.tensor(i)}
        if self.targets_path is not None:
            item["targets"] = torch.from_numpy(np.ascontiguousarray(self.targets[i]))  # f16 [Tt,Ft,D]
        if self.with_wave:
            w = np.asarray(self.clips.wave(i), dtype=np.float32) / 32768.0          # [S] in [-1, 1)
            item["wave"] = torch.from_numpy(w)
        return item


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches, update by update, in an order fixed by (seed, epoch).

    The epoch's permutation is cut to `steps_per_epoch * batch_size` clips (the tail is dropped) and
    laid out [steps, accum_steps, world_size, micro_batch]; rank r reads [:, :, r]. So one update's
    global batch is the same whatever the world size, and `set_position(epoch, step)` starts the
    epoch at any update without reading the skipped clips.
    """

    def __init__(self, num_clips: int, batch_size: int, accum_steps: int, rank: int, world_size: int, seed: int):
        per = accum_steps * world_size
        if batch_size % per:
            raise ConfigError(f"batch_size={batch_size} (global, per update) must divide evenly over "
                             f"accum_steps={accum_steps} x world_size={world_size}")
        if num_clips < batch_size:
            raise ConfigError(f"the store holds {num_clips} clips, fewer than one batch (batch_size={batch_size})")
        self.n, self.batch_size, self.accum, self.rank, self.world, self.seed = (
            num_clips, batch_size, accum_steps, rank, world_size, seed)
        self.micro_batch = batch_size // per
        self.steps_per_epoch = num_clips // batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, step_in_epoch: int = 0) -> None:
        if not 0 <= step_in_epoch < self.steps_per_epoch:
            raise ValueError(f"step_in_epoch={step_in_epoch} outside [0, {self.steps_per_epoch})")
        self.epoch, self.start = epoch, step_in_epoch

    def order(self, epoch: int) -> np.ndarray:
        """int64 [steps_per_epoch, accum, micro_batch]: this rank's clip indices for `epoch`."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        used = perm[: self.steps_per_epoch * self.batch_size]
        grid = used.reshape(self.steps_per_epoch, self.accum, self.world, self.micro_batch)  # [S,A,W,b]
        return grid[:, :, self.rank]                                                          # [S,A,b]

    def __iter__(self):
        for step in self.order(self.epoch)[self.start:]:     # [A,b]
            for micro in step:                               # [b]
                yield micro.tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.accum


def worker_init(worker_id: int) -> None:
    """DataLoader worker set-up: one torch thread (workers fight otherwise); reopen stores if the dataset can."""
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reopen"):
        info.dataset.reopen()


def build_loader(dataset: Dataset, sampler: StepBatchSampler, num_workers: int, pin_memory: bool,
                 seed: int) -> DataLoader:
    """DataLoader over `sampler`'s micro-batches; workers persist across epochs and use one thread each.

    A seeded `generator` keeps the loader from drawing worker seeds from the global RNG, so creating
    the loader (at the start or on resume) does not shift the training RNG stream.
    """
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, worker_init_fn=worker_init,
                      generator=torch.Generator().manual_seed(seed),
                      prefetch_factor=4 if num_workers > 0 else None)


def endless_batches(loader: DataLoader, sampler: StepBatchSampler, start_step: int):
    """Yields (epoch, micro-batch) forever, starting at update `start_step` (global update count)."""
    epoch, in_epoch = divmod(start_step, sampler.steps_per_epoch)
    while True:
        sampler.set_position(epoch, in_epoch)
        for batch in loader:
            yield epoch, batch
        epoch, in_epoch = epoch + 1, 0
