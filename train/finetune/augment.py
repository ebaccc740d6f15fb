"""Fine-tuning's training clips with AudioMAE's augmentation, in the order of its dataset.py:
wave - mean -> roll_mag_aug (gain Beta(10, 10) + 0.5, optional roll) -> mixup with a partner from the
whole training set (lambda ~ Beta(10, 10)) -> Kaldi fbank (cache_tools.fbank, as the store was
written) -> SpecAugment -> (x - mean) / (2 std) -> noise and a time roll. A clip that is only gained
skips the fbank (its log-mel is the stored one + 2 ln g); SPC-1's `silence_crops` are SUPERB's
random 1 s crops. Every draw comes from the seed SeededSampler hands out with the index, so an
item is the same with any worker count and after a resume.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torchaudio
from torch.utils.data import Dataset, Sampler

from cache_tools.clips.store import ClipStore
from cache_tools.fbank import NUM_MEL_BINS, WINDOW, clip_samples, fbank, gain_fbank
from train.data import normalize_fbank, require_finite
from train.rng import item_seed
from cache_tools.errors import ConfigError, StoreError

SILENCE = re.compile(r"^_silence_/(?P<recording>.+)_(?P<k>\d+)$")   # SPC-1 reader's silence window ids


@dataclass(frozen=True)
class Augment:
    """Training-clip augmentation (FinetuneConfig's keys of the same names)."""
    freqm: int = 0                # max mel bins masked (torchaudio FrequencyMasking); 0 = off
    timem: int = 0                # max frames masked (torchaudio TimeMasking); 0 = off
    mixup: float = 0.0            # probability that a clip is mixed with a partner wave
    mixup_beta: float = 10.0      # lambda ~ Beta(mixup_beta, mixup_beta)
    roll_mag_aug: bool = False    # gain Beta(10, 10) + 0.5 on each wave
    wave_roll: bool = False       # with roll_mag_aug: also roll the wave circularly by U{0..n-1}
    noise: bool = False           # noise and time roll on the normalised fbank
    silence_crops: bool = False   # `_silence_` clips: random 1 s crops across adjacent windows

    def uses_wave(self) -> bool:
        return self.mixup > 0 or self.roll_mag_aug or self.silence_crops


def check_mask_widths(aug: Augment, store: ClipStore) -> None:
    """Refuse a mask wider than the axis it masks (it would blank whole clips)."""
    if aug.freqm < 0 or aug.timem < 0:
        raise ConfigError(f"{store.path}: fbank masking widths must be >= 0, got freqm={aug.freqm}, timem={aug.timem}")
    bins = int(store.attrs.get("feature_params", {}).get("num_mel_bins", NUM_MEL_BINS))
    for key, width, axis, what in (("freqm", aug.freqm, bins, "mel bins"),
                                   ("timem", aug.timem, store.target_length, "frames (target_length)")):
        if width > axis:
            raise ConfigError(f"{store.path}: {key}={width} is wider than the {axis} {what} of this clip store's "
                              f"fbank, so masking would blank whole clips; set {key} <= {axis}")


def spec_augment(fb: torch.Tensor, freqm: int, timem: int) -> torch.Tensor:
    """AudioMAE's / AST's SpecAugment on a raw fbank [T, F] -> [T, F] (masked bins are 0), torch's RNG:
    torchaudio's FrequencyMasking(freqm) then TimeMasking(timem), called as their forward calls it."""
    if freqm <= 0 and timem <= 0:
        return fb
    spec = fb.T.unsqueeze(0)                                          # [1, F, T] as torchaudio wants
    if freqm > 0:
        spec = torchaudio.functional.mask_along_axis(spec, freqm, 0.0, axis=1)   # frequency
    if timem > 0:
        spec = torchaudio.functional.mask_along_axis(spec, timem, 0.0, axis=2)   # time
    return spec.squeeze(0).T                                          # [T, F]


def add_noise(x: torch.Tensor) -> torch.Tensor:
    """AudioMAE's `noise` on a normalised fbank [T, F]: + rand(T, F) * U(0, 1) / 10, then roll time by U{-10..9}."""
    x = x + torch.rand(x.shape) * torch.rand(()) / 10                 # [T, F]
    return torch.roll(x, int(torch.randint(-10, 10, ())), 0)          # [T, F]


def beta(a: float) -> float:
    return float(torch.distributions.Beta(a, a, validate_args=False).sample())


def clip_length(store: ClipStore, i: int, wave: np.ndarray) -> int:
    """Samples of clip i's own audio in its zero-padded stored wave: recorded by `prepare`
    (`wave_length`), or, in a store without that column, recovered from the padding (clip_samples)."""
    if getattr(store, "has_sources", False):
        return store.wave_length(i)
    return clip_samples(store.fbank(i), wave)


def match_length(w: torch.Tensor, n: int) -> torch.Tensor:
    """[m] -> [n]: zero-padded at the end or cut, as AudioMAE treats a mixup partner."""
    return torch.nn.functional.pad(w, (0, n - len(w))) if len(w) < n else w[:n]


class SeededSampler(Sampler):
    """Yields (index, item seed) from `sampler`'s indices; `set_epoch` reaches the wrapped sampler.
    `skip(n)` starts the current epoch at its n-th item (a run resumed mid-epoch), seeds unchanged."""

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0):
        self.sampler, self.seed, self.rank, self.epoch, self.start = sampler, seed, rank, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def skip(self, n: int) -> None:
        self.start = n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for pos, k in itertools.islice(enumerate(self.sampler), self.start, None):
            yield int(k), item_seed(self.seed, self.epoch, self.rank, pos)

    def __len__(self) -> int:
        return len(self.sampler)


class TrainClips(Dataset):
    """The training clips of one or more clip stores (`indices[s]`: a subset of store s, None = all).
    item (k, seed) or k -> x float32 [1, T, 128] normalised; y: float32 [C] multi-hot or (with mixup)
    soft, else an int64 class id. Stores must share classes and T (train.data.check_compatible)."""

    def __init__(self, stores: Sequence[ClipStore], indices: Sequence[Sequence[int] | None] | None = None,
                 aug: Augment = Augment(), norm: tuple[float, float] | None = None):
        self.stores, self.aug = list(stores), aug
        indices = indices or [None] * len(self.stores)
        self.indices = [np.arange(len(s)) if ix is None else np.asarray(ix, dtype=np.int64)
                        for s, ix in zip(self.stores, indices)]
        self.offsets = np.cumsum([0] + [len(ix) for ix in self.indices])       # [S + 1]
        ref = self.stores[0]
        self.mean, self.std = norm if norm is not None else (ref.norm_mean, ref.norm_std)
        self.T, self.multilabel, self.num_classes = ref.target_length, ref.multilabel, ref.num_classes
        for s in self.stores:
            check_mask_widths(aug, s)
        self.neighbours = self._silence_neighbours() if aug.silence_crops else {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, k: int) -> tuple[ClipStore, int]:
        s = int(np.searchsorted(self.offsets, k, side="right")) - 1
        return self.stores[s], int(self.indices[s][k - self.offsets[s]])

    def label_blocks(self):
        """The labels in item order, a block of rows at a time (never [n, C] at once)."""
        for s, ix in zip(self.stores, self.indices):
            yield from s.label_blocks(ix)

    def __getitem__(self, item):
        k, seed = item if isinstance(item, tuple) else (item, None)
        if seed is None:
            return self._item(int(k))
        cpu = torch.default_generator                          # the draws below (torchaudio's masks too) use it
        state = cpu.get_state()
        cpu.manual_seed(seed)
        try:
            return self._item(int(k))
        finally:
            cpu.set_state(state)                               # the caller's RNG stream is untouched

    def _item(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.aug
        mixed = a.mixup > 0 and float(torch.rand(())) < a.mixup
        fb, y = self._mixed(k) if mixed else self._single(k)                  # [T, 128] raw log-mel, [C] | []
        fb = spec_augment(fb, a.freqm, a.timem)                                # [T, 128]
        x = normalize_fbank(fb, self.mean, self.std)                           # [T, 128]
        if a.noise:
            x = add_noise(x)
        return x.unsqueeze(0), y                                               # [1, T, 128]

    def _single(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip k alone: the stored fbank (gained: shifted by 2 ln g), or the fbank of its rolled / cropped wave."""
        if k in self.neighbours or (self.aug.roll_mag_aug and self.aug.wave_roll):
            return fbank(self.wave(k), self.T), self.target(k)                 # [T, 128]
        store, i = self.locate(k)
        fb = torch.from_numpy(store.fbank(i).astype(np.float32))               # [T, 128]
        fb = require_finite(fb, store.path, i, store.clip_ids, "fbank")
        if self.aug.roll_mag_aug:
            fb = gain_fbank(fb, beta(10.0) + 0.5)
        return fb, self.target(k)

    def _mixed(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip k's wave mixed with a partner's from the whole training set, and its fbank; soft labels."""
        w = self.wave(k)                                                       # [n]
        j = int(torch.randint(len(self), ()))                                  # any training clip
        lam = beta(self.aug.mixup_beta)
        w = lam * w + (1 - lam) * match_length(self.wave(j), len(w))           # [n]
        y = lam * self.target(k) + (1 - lam) * self.target(j)                  # [C]
        return fbank(w - w.mean(), self.T), y                                  # [T, 128]

    def target(self, k: int) -> torch.Tensor:
        store, i = self.locate(k)
        y = torch.from_numpy(np.asarray(store.label(i)))                       # [C] float32 or [] int64
        if self.aug.mixup > 0 and not self.multilabel:                         # mixed labels are soft
            y = torch.nn.functional.one_hot(y, self.num_classes).float()       # [C]
        return y

    def wave(self, k: int) -> torch.Tensor:
        """Clip k's wave as AudioMAE's loader prepares it: float in [-1, 1], its own length, mean
        removed, then (roll_mag_aug) rolled and scaled. [n]"""
        store, i = self.locate(k)
        raw = store.wave(i)                                                    # int16 [S]
        if k in self.neighbours:
            raw = self._silence_crop(k, raw)
        else:
            raw = raw[:clip_length(store, i, raw)]                             # [n]
        if len(raw) < WINDOW:
            raise StoreError(f"{store.path}: clip {store.clip_ids[i]!r} holds {len(raw)} samples of wave, fewer than "
                            f"one fbank window ({WINDOW}); mixup and roll_mag_aug recompute the fbank from the "
                            "stored wave, so they need a store written by `supmam prepare`")
        w = torch.from_numpy(raw.astype(np.float32) / 32768.0)                 # [n]
        w = w - w.mean()
        if self.aug.roll_mag_aug:
            if self.aug.wave_roll:
                w = torch.roll(w, int(torch.randint(len(w), ())))
            w = w * (beta(10.0) + 0.5)
        return w

    def _silence_crop(self, k: int, raw: np.ndarray) -> np.ndarray:
        """A random window of len(raw) samples across silence window k and its neighbour. [S]"""
        first, second = self.neighbours[k]
        store, _ = self.locate(k)
        pair = np.concatenate([store.wave(first), store.wave(second)])        # [2S]
        start = int(torch.randint(len(raw) + 1, ()))
        return pair[start:start + len(raw)]

    def _silence_neighbours(self) -> dict[int, tuple[int, int]]:
        """item k of a `_silence_` window -> (store indices of it and its next window, in order), or
        (previous, it) when the next one is not a training clip; windows with neither are left alone."""
        out = {}
        for s, (store, ix) in enumerate(zip(self.stores, self.indices)):
            where = {cid: i for i, cid in enumerate(store.clip_ids)}
            for pos, i in enumerate(ix):
                m = SILENCE.match(store.clip_ids[i])
                if m is None:
                    continue
                rec, n, width = m["recording"], int(m["k"]), len(m["k"])
                nxt, prev = (where.get(f"_silence_/{rec}_{n + d:0{width}d}") for d in (1, -1))
                if nxt is not None:
                    out[int(self.offsets[s]) + pos] = (int(i), nxt)
                elif prev is not None:
                    out[int(self.offsets[s]) + pos] = (prev, int(i))
        return out
