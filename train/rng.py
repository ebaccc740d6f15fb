"""Seeds and RNG state: every random draw of a run is a function of the run's seed and of where it
happens (update, rank, micro-step, item), so a resumed or re-sharded run draws what an uninterrupted
one would; `rng_state` / `set_rng_state` carry the global generators through a checkpoint.

    gen = torch.Generator().manual_seed(mask_seed(seed, step, rank, micro))   # pretraining's token masks
    item = (index, item_seed(seed, epoch, rank, position))                    # a data item's own draws
"""
from __future__ import annotations

import random

import numpy as np
import torch


def _seed_at(*place: int) -> int:
    """A 63-bit seed that is a function of `place` alone (numpy's SeedSequence over the numbers)."""
    return int(np.random.SeedSequence(list(place)).generate_state(1, np.uint64)[0]) >> 1


def item_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The seed of one training item's draws: independent of workers, of other ranks and of resume."""
    return _seed_at(seed, epoch, rank, position)


def mask_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """Seed of the masking generator for one micro-step: independent of resume and of other ranks."""
    return _seed_at(seed, step, rank, micro)


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
