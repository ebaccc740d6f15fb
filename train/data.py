"""Pretraining data over the stores: normalised fbank, label, cached CLAP targets (and the wave
for `--teacher online`), read in a deterministic order that can start mid-epoch for resume; and what
fine-tuning's data (train.finetune.data) shares with it: the fbank normalisation and the worker init.

    ds = PretrainDataset([clips_a, clips_b], [targets_a, targets_b])   # validates, opens lazily per process
    sampler = StepBatchSampler(len(ds), batch_size=128, accum_steps=1, rank=0, world_size=1, seed=0)
    # gain=True (AudioMAE's roll_mag_aug): the sampler hands each index its item seed, the dataset
    # scales that clip's wave by Beta(10, 10) + 0.5 drawn from it (gain_fbank on the stored fbank)
    loader = build_loader(ds, sampler, num_workers=4, pin_memory=True, seed=0)
    sampler.set_position(epoch, step_in_epoch); for batch in loader: ...

Several clip stores (AS-2M: balanced + unbalanced) are one dataset: clip i of the dataset is clip
i - offset[k] of store k, stores in the order given. They must share the label space and the
features (check_compatible); each target store must belong to its clip store (check_targets_match).
A single path (not a list) is one store.

A batch is a dict: `fbank` float32 [B,1,T,128] (normalize_fbank: AudioMAE's normalisation),
`label` (int64 [B] or float32 multi-hot [B,C]), `index` int64 [B] (in the dataset), and optionally
`targets` float16 [B,Tt,Ft,D] (the teacher's own grid; mapped to patches on the device) and
`wave` float32 [B,S] in [-1, 1]. The gain reaches only `fbank`, the student's input: the targets
are the teacher's on the clip as stored, and an online teacher hears the stored wave.
"""
from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from cache_tools.clips.store import ClipStore
from cache_tools.errors import ConfigError, StoreError
from cache_tools.fbank import gain_fbank
from cache_tools.targets.store import TargetStore
from train.rng import item_seed
from train.stop_signal import ignore_in_worker


def check_targets_match(clips: ClipStore, targets: TargetStore, targets_path: str | Path) -> None:
    """Refuse a target store made from another clip store (fingerprint) or with another clip count."""
    if targets.clip_fingerprint != clips.fingerprint:
        raise StoreError(
            f"target store {targets_path} was computed from a clip store "
            f"with fingerprint {targets.clip_fingerprint}, but the clip store {clips.path} has fingerprint "
            f"{clips.fingerprint}: the clips (ids, order or feature parameters) differ, so the targets would "
            f"belong to other clips. Recompute the targets for this clip store "
            f"(`supmam targets --clips {clips.path} --out <new target store>`) or pass the matching clip store.")
    if len(targets) != len(clips):
        raise StoreError(
            f"target store {targets_path} holds {len(targets)} clips but the clip store "
            f"{clips.path} holds {len(clips)} (same fingerprint {clips.fingerprint}): the target store is "
            f"incomplete or was written wrongly; rerun `supmam targets --clips {clips.path} --out <target store>`.")


def verify_on_node(targets_paths: Sequence[str | Path], local_rank: int, barrier=lambda: None,
                   workers: int | None = None) -> int:
    """Integrity once per node: local rank 0 hashes each target store's shards (reading the files,
    `workers` threads; default the cores available) unless they passed before and are unchanged
    (cache_tools.targets.verify); the other ranks wait at `barrier`. Afterwards every reader on the
    node, DataLoader workers included, costs one stat per shard. Returns the shards hashed here."""
    hashed = 0
    if local_rank == 0:
        for p in targets_paths:
            hashed += TargetStore(p).verify_all(workers)
    barrier()
    return hashed


def require_finite(x: torch.Tensor, store: Path | str, i: int, clip_id, what: str) -> torch.Tensor:
    """`x` if every value is finite; else StoreError naming the store, the clip's index and id (a
    NaN would otherwise surface steps later as a non-finite loss blamed on the lr). One reduction.
    `clip_id`: the id, or the store's clip_ids (looked up only on failure: workers never read them)."""
    if not bool(torch.isfinite(x).all()):
        clip_id = clip_id if isinstance(clip_id, str) else clip_id[i]
        bad = int((~torch.isfinite(x)).sum())
        raise StoreError(store, f"clip {i} ({clip_id}): {bad} non-finite values (NaN / inf) in its {what}; "
                                "rebuild the store or drop that clip")
    return x


def clip_gain(item_seed: int) -> float:
    """AudioMAE's roll_mag_aug gain, Beta(10, 10) + 0.5 (dataset.py:173), drawn from an item's seed."""
    return float(np.random.default_rng(item_seed).beta(10.0, 10.0)) + 0.5


def normalize_fbank(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AudioMAE's input normalisation of a raw Kaldi fbank: (x - mean) / (2 * std), same shape."""
    return (fbank - mean) / (2.0 * std)


def label_space(store: ClipStore) -> dict:
    """What clip stores read as one dataset must share: labels, input geometry, features, normalisation."""
    return {"class_ids": store.class_ids, "class_names": store.class_names, "multilabel": store.multilabel,
            "target_length": store.target_length, "sample_rate": store.sample_rate,
            "feature_params": store.attrs.get("feature_params"), "norm": (store.norm_mean, store.norm_std),
            "wave_samples": len(store.wave(0)) if len(store) else None}


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def check_compatible(stores: Sequence[ClipStore], recorded: dict | None = None, recorded_by: Path | None = None) -> None:
    """The one store-compatibility check: clip stores pretrained on, fine-tuned on or evaluated together must
    share their label space (label_space); the first differing property names both stores. `recorded`:
    the part of a label space a checkpoint (`recorded_by`) holds, which every store must match too: a
    model scored against other classes, or classes in another order, gives a number that means nothing."""
    ref = label_space(stores[0])
    for s in stores[1:]:
        got = label_space(s)
        diff = [k for k in ref if got[k] != ref[k]]
        if diff:
            k, verb = diff[0], "differs" if len(diff) == 1 else "differ"
            raise StoreError(
                f"{s.path}: {', '.join(diff)} {verb} from the clip store {stores[0].path} ({k}: {_short(got[k])} "
                f"here, {_short(ref[k])} there); clip stores used together must share the class "
                f"ids and names, the label kind, the input length and the feature parameters")
    for s in stores if recorded else []:
        got = label_space(s)
        diff = [k for k, v in recorded.items() if v is not None and got[k] != v]
        if diff:
            k, verb = diff[0], "differs" if len(diff) == 1 else "differ"
            raise StoreError(f"{s.path}: {', '.join(diff)} {verb} from what {recorded_by} was trained on ({k}: "
                             f"{_short(got[k])} here, {_short(recorded[k])} there); scores against this store "
                             f"would mean nothing")


def _paths(p: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if p is None:
        return []
    return [Path(p)] if isinstance(p, (str, Path)) else [Path(q) for q in p]


class PretrainDataset(Dataset):
    """Clip i of the concatenated clip stores with its cached targets. Stores open lazily in each process."""

    def __init__(self, clips_path: str | Path | Sequence[str | Path],
                 targets_path: str | Path | Sequence[str | Path] | None = None, with_wave: bool = False,
                 gain: bool = False):
        self.clips_paths = _paths(clips_path)
        self.gain = gain              # items (i, seed): the fbank of clip i's wave x clip_gain(seed)
        self.targets_paths = _paths(targets_path) or None
        self.with_wave = with_wave
        if not self.clips_paths:
            raise ConfigError("pretraining needs at least one clip store")
        if self.targets_paths is not None and len(self.targets_paths) != len(self.clips_paths):
            raise ConfigError(f"{len(self.clips_paths)} clip stores {[str(p) for p in self.clips_paths]} but "
                              f"{len(self.targets_paths)} target stores {[str(p) for p in self.targets_paths]}: "
                              f"give one target store per clip store, in the same order")
        self._clips: list[ClipStore] | None = None
        self._targets: list[TargetStore] | None = None
        check_compatible(self.clip_stores)
        if self.targets_paths is not None:
            for c, t, tp in zip(self.clip_stores, self.target_stores, self.targets_paths):
                check_targets_match(c, t, tp)
        self.offsets = np.cumsum([0] + [len(c) for c in self.clip_stores])     # [S+1] first index of each store
        self.norm_mean = float(self.clips.norm_mean)
        self.norm_std = float(self.clips.norm_std)
        self.reopen()  # drop the handles used for validation; each worker opens its own

    @property
    def clip_stores(self) -> list[ClipStore]:
        if self._clips is None:
            self._clips = [ClipStore(p) for p in self.clips_paths]
        return self._clips

    @property
    def clips(self) -> ClipStore:
        """The first clip store: its geometry, labels and features are every store's (checked)."""
        return self.clip_stores[0]

    @property
    def target_stores(self) -> list[TargetStore]:
        if self.targets_paths is None:
            raise RuntimeError("this dataset was built without a target store")
        if self._targets is None:
            self._targets = [TargetStore(p) for p in self.targets_paths]
        return self._targets

    def reopen(self) -> None:
        """Forget open store handles (called in each DataLoader worker: h5py handles do not survive fork)."""
        self._clips = None
        self._targets = None

    def locate(self, i: int) -> tuple[int, int]:
        """(store, clip in that store) of dataset clip i."""
        if not 0 <= i < self.offsets[-1]:
            raise IndexError(f"clip {i} outside the {self.offsets[-1]} clips of {len(self.clips_paths)} store(s)")
        k = bisect_right(self.offsets, i) - 1
        return k, i - int(self.offsets[k])

    def read_targets(self, indices) -> np.ndarray:
        """float16 [n,Tt,Ft,D]: the cached targets of dataset clips `indices`, in that order."""
        return np.stack([self.target_stores[k][j] for k, j in (self.locate(int(i)) for i in indices)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, None)
        k, j = self.locate(int(i))
        clips = self.clip_stores[k]
        fb = torch.from_numpy(np.asarray(clips.fbank(j), dtype=np.float32))        # [T,128]
        fb = require_finite(fb, clips.path, j, clips.clip_ids, "fbank")
        if self.gain and seed is not None:
            fb = gain_fbank(fb, clip_gain(seed))                                   # [T,128] of g * wave
        fb = normalize_fbank(fb, self.norm_mean, self.norm_std).unsqueeze(0)        # [1,T,128]
        item = {"fbank": fb, "label": torch.as_tensor(clips.label(j)), "index": torch.tensor(i)}
        if self.targets_paths is not None:
            t = torch.from_numpy(np.ascontiguousarray(self.target_stores[k][j]))  # f16 [Tt,Ft,D]
            item["targets"] = require_finite(t, self.targets_paths[k], j, clips.clip_ids, "targets")
        if self.with_wave:
            w = np.asarray(clips.wave(j), dtype=np.float32) / 32768.0               # [S] in [-1, 1)
            item["wave"] = torch.from_numpy(w)
        return item


class StepBatchSampler(Sampler[list]):
    """Yields this rank's micro-batches, update by update, in an order fixed by (seed, epoch).

    The epoch's permutation is cut to `steps_per_epoch * batch_size` clips (the tail is dropped) and
    laid out [steps, accum_steps, world_size, micro_batch]; rank r reads [:, :, r]. So one update's
    global batch is the same whatever the world size, and `set_position(epoch, step)` starts the
    epoch at any update without reading the skipped clips. With `seeded`, each index comes as
    (index, item_seed(seed, epoch, 0, its place in the epoch)): the same draws whatever the world
    size, the worker count or the resume point.
    """

    def __init__(self, num_clips: int, batch_size: int, accum_steps: int, rank: int, world_size: int, seed: int,
                 seeded: bool = False):
        per = accum_steps * world_size
        if batch_size % per:
            raise ConfigError(f"batch_size={batch_size} (global, per update) must divide evenly over "
                             f"accum_steps={accum_steps} x world_size={world_size}")
        if num_clips < batch_size:
            raise ConfigError(f"the store holds {num_clips} clips, fewer than one batch (batch_size={batch_size})")
        self.n, self.batch_size, self.accum, self.rank, self.world, self.seed = (
            num_clips, batch_size, accum_steps, rank, world_size, seed)
        self.micro_batch = batch_size // per
        self.seeded = seeded
        self.steps_per_epoch = num_clips // batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, step_in_epoch: int = 0) -> None:
        if not 0 <= step_in_epoch < self.steps_per_epoch:
            raise ValueError(f"step_in_epoch={step_in_epoch} outside [0, {self.steps_per_epoch})")
        self.epoch, self.start = epoch, step_in_epoch

    def order(self, epoch: int) -> np.ndarray:
        """int64 [steps_per_epoch, accum, micro_batch]: this rank's clip indices for `epoch`."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._mine(perm[: self.steps_per_epoch * self.batch_size])

    def _mine(self, used: np.ndarray) -> np.ndarray:
        grid = used.reshape(self.steps_per_epoch, self.accum, self.world, self.micro_batch)  # [S,A,W,b]
        return grid[:, :, self.rank]                                                          # [S,A,b]

    def __iter__(self):
        order = self.order(self.epoch)                                                      # [S,A,b]
        places = self._mine(np.arange(self.steps_per_epoch * self.batch_size))              # [S,A,b]
        for step, at in zip(order[self.start:], places[self.start:]):  # [A,b] each
            for micro, pos in zip(step, at):                           # [b] each
                yield ([(int(i), item_seed(self.seed, self.epoch, 0, int(q))) for i, q in zip(micro, pos)]
                       if self.seeded else micro.tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.accum


def worker_init(worker_id: int) -> None:
    """DataLoader worker set-up: one torch thread (workers fight otherwise); reopen stores if the dataset can."""
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reopen"):
        info.dataset.reopen()


def stoppable_worker_init(worker_id: int) -> None:
    """worker_init, and SIGTERM / SIGUSR1 left to the main process, which stops after the update in
    progress (train.stop_signal) and then ends these workers itself (shutdown_workers)."""
    ignore_in_worker()
    worker_init(worker_id)


def shutdown_workers(loader: DataLoader) -> None:
    """End `loader`'s persistent workers through their queues. They ignore SIGTERM (stoppable_worker_init),
    so they must never be left for multiprocessing's exit to terminate: that would hang."""
    workers = getattr(loader, "_iterator", None)         # torch keeps persistent workers' iterator here
    if workers is not None and hasattr(workers, "_shutdown_workers"):
        workers._shutdown_workers()
        loader._iterator = None


def build_loader(dataset: Dataset, sampler: StepBatchSampler, num_workers: int, pin_memory: bool,
                 seed: int) -> DataLoader:
    """DataLoader over `sampler`'s micro-batches; workers persist across epochs and use one thread each.

    A seeded `generator` keeps the loader from drawing worker seeds from the global RNG, so creating
    the loader (at the start or on resume) does not shift the training RNG stream.
    """
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, worker_init_fn=stoppable_worker_init,
                      generator=torch.Generator().manual_seed(seed),
                      prefetch_factor=4 if num_workers > 0 else None)


def endless_batches(loader: DataLoader, sampler: StepBatchSampler, start_step: int):
    """Yields (epoch, micro-batch) forever, starting at update `start_step` (global update count).
    Closing the generator ends the loader's persistent workers: they ignore SIGTERM (stop_signal), so
    they must be told through their queues, never left for multiprocessing's exit to terminate."""
    epoch, in_epoch = divmod(start_step, sampler.steps_per_epoch)
    try:
        while True:
            sampler.set_position(epoch, in_epoch)
            for batch in loader:
                yield epoch, batch
            epoch, in_epoch = epoch + 1, 0
    finally:
        shutdown_workers(loader)
