"""The teacher targets as pretraining uses them: who made them (identity and fingerprint), which
teacher token each student patch learns (the patch index), and their per-dim statistics (where the
clap head starts). Targets come from the target store, or from the online teacher inside the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cache_tools.fingerprint import json_fingerprint
from cache_tools.grid_map import teacher_to_patch_index
from train.data import PretrainDataset
from cache_tools.errors import StoreError

TARGET_IDENTITY = ("clip_fingerprint", "teacher", "checkpoint_sha256", "grid", "dim", "num_clips", "teacher_mel")
STATS_CLIPS = 256     # clips sampled for the clap head's initial statistics


@dataclass
class OnlineTeacher:
    """What `--teacher online` hands the loop: the stage-one teacher as a function plus its metadata.

    `fn(wave16k [B,S] float in [-1,1]) -> [B,Tt,Ft,D] float16`, exactly as stage one stores targets,
    so an online run's losses equal a cached run's.
    """
    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str
    grid: tuple[int, int]
    dim: int
    teacher_mel: dict

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return self.fn(wave)


@dataclass
class TargetInfo:
    """The teacher behind the targets: its token grid (Tt, Ft), dim, mel bank, id and each target
    store's fingerprint (None: the online teacher)."""
    grid: tuple[int, int]
    dim: int
    teacher_mel: dict
    name: str
    fingerprint: list[str] | None


# what may differ between the target stores of one dataset: what ties each to its own clip store
PER_STORE = ("clip_fingerprint", "num_clips")


def target_info(ds: PretrainDataset, online_teacher: OnlineTeacher | None) -> TargetInfo:
    """The teacher of the run; several target stores must come from the same teacher (else StoreError)."""
    if online_teacher is not None:
        t = online_teacher
        return TargetInfo(tuple(t.grid), int(t.dim), dict(t.teacher_mel), t.name, None)
    stores = ds.target_stores
    idents = [{k: ts.attrs.get(k) for k in TARGET_IDENTITY} for ts in stores]
    teacher = [{k: v for k, v in i.items() if k not in PER_STORE} for i in idents]
    for ts, t in zip(stores[1:], teacher[1:]):
        diff = sorted(k for k in t if t[k] != teacher[0][k])
        if diff:
            verb = "differs" if len(diff) == 1 else "differ"
            raise StoreError(f"{ts.path}: {', '.join(diff)} {verb} from the target store {stores[0].path} "
                                f"({ {k: t[k] for k in diff} } here, { {k: teacher[0][k] for k in diff} } there): "
                                f"the target stores of one pretraining run must come from the same teacher")
    ts = stores[0]
    name = f"{ts.teacher_name} ({ts.attrs.get('checkpoint_sha256', ts.attrs.get('checkpoint', '?'))})"
    return TargetInfo(tuple(ts.grid), ts.dim, ts.attrs["teacher_mel"], name, [json_fingerprint(i) for i in idents])


def patch_index(clips, encoder, tinfo: TargetInfo) -> torch.Tensor:
    """[Tp*Fp] flat index into the teacher's Tt*Ft tokens, from the clip store's feature parameters
    and clip length (the store's geometry, not the config's)."""
    fp = clips.attrs.get("feature_params", {})
    return teacher_to_patch_index(
        tinfo.grid, tinfo.teacher_mel, tuple(encoder.patch_grid), frame_shift_s=fp.get("frame_shift", 10) / 1000,
        patch=encoder.patch, n_mels=fp.get("num_mel_bins", 128), fmin=fp.get("low_freq", 20.0),
        fmax=fp.get("high_freq", 0.0) or clips.sample_rate / 2, clip_seconds=len(clips.wave(0)) / clips.sample_rate)


def target_stats(ds: PretrainDataset, online_teacher: OnlineTeacher | None, seed: int, n: int = STATS_CLIPS,
                 batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dim mean and std ([D] each, float32) of the targets over a seeded sample of `n` clips
    (every clip when there are fewer): read from the target store, or computed by the online teacher."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    grids = []
    for lo in range(0, len(idx), batch):
        part = idx[lo:lo + batch]
        if online_teacher is None:
            g = torch.from_numpy(ds.read_targets(part))                               # f16 [b,Tt,Ft,D]
        else:
            wave = torch.stack([ds[int(i)]["wave"] for i in part])                    # [b,S]
            with torch.no_grad():
                g = online_teacher(wave).cpu()                                         # f16 [b,Tt,Ft,D]
        grids.append(g.reshape(-1, g.shape[-1]))                                       # [b*Tt*Ft, D]
    std, mean = torch.std_mean(torch.cat(grids).double(), dim=0, correction=0)       # [D], [D]
    return mean.float(), std.float()
