"""The teacher targets as pretraining uses them: who made them (identity and fingerprint), which
teacher token(s) each student patch learns (TargetMap: nearest or bilinear alignment, and the
short-clip fix that leaves fbank padding out of the loss), and their per-dim statistics (where the
clap head starts). Targets come from the target store, or from the online teacher inside the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cache_tools.fingerprint import json_fingerprint
from cache_tools.grid_map import map_targets, padding_valid, teacher_to_patch_index, teacher_to_patch_weights
from train.data import PretrainDataset
from cache_tools.errors import StoreError
from cache_tools.targets.store import PER_STORE_KEYS, TEACHER_KEYS

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

    @property
    def untrained(self) -> bool:
        """Seeded-random teacher weights (`supmam targets` without a checkpoint): no CLAP semantics."""
        return "(untrained:" in self.name



def target_info(ds: PretrainDataset, online_teacher: OnlineTeacher | None) -> TargetInfo:
    """The teacher of the run; several target stores must come from the same teacher (else StoreError)."""
    if online_teacher is not None:
        t = online_teacher
        return TargetInfo(tuple(t.grid), int(t.dim), dict(t.teacher_mel), t.name, None)
    stores = ds.target_stores
    idents = [{k: ts.attrs.get(k) for k in PER_STORE_KEYS + TEACHER_KEYS} for ts in stores]
    teacher = [{k: i[k] for k in TEACHER_KEYS} for i in idents]
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


def _geometry(clips, encoder, tinfo: TargetInfo) -> dict:
    """teacher_to_patch_index's arguments from the clip store's feature parameters and clip length."""
    fp = clips.attrs.get("feature_params", {})
    return dict(teacher_grid=tinfo.grid, teacher_mel=tinfo.teacher_mel, patch_grid=tuple(encoder.patch_grid),
                frame_shift_s=fp.get("frame_shift", 10) / 1000, patch=encoder.patch,
                n_mels=fp.get("num_mel_bins", 128), fmin=fp.get("low_freq", 20.0),
                fmax=fp.get("high_freq", 0.0) or clips.sample_rate / 2,
                clip_seconds=len(clips.wave(0)) / clips.sample_rate)


def clip_seconds(ds: PretrainDataset) -> torch.Tensor:
    """[num_clips] float64: each dataset clip's real length (s); the stored length where not recorded."""
    out = []
    for store in ds.clip_stores:
        if store.has_sources:
            n = np.asarray(store._dset("wave_length")[:], dtype=np.float64)       # one read per store
        else:
            n = np.full(len(store), len(store.wave(0)), dtype=np.float64)
        out.append(n / store.sample_rate)
    return torch.from_numpy(np.concatenate(out))


class TargetMap:
    """Teacher grid -> per-patch targets for a batch: `alignment` "nearest" (one cell) or "bilinear" (four,
    weighted); `padding` "map" (every patch learns its mapped token) or "drop" (patches past the clip's
    real end are out of Eq. 1: `valid`)."""

    def __init__(self, ds: PretrainDataset, encoder, tinfo: TargetInfo, alignment: str, padding: str, device):
        geo = _geometry(ds.clips, encoder, tinfo)
        if alignment == "bilinear":
            index, weight = teacher_to_patch_weights(**geo)                           # [N,4], [N,4]
            self.index, self.weight = index.to(device), weight.to(device)
        else:
            self.index, self.weight = teacher_to_patch_index(**geo).to(device), None  # [N]
        self.tp, self.fpatches = encoder.patch_grid
        self.patch, self.shift = encoder.patch, geo["frame_shift_s"]
        self.seconds = clip_seconds(ds) if padding == "drop" else None                 # [num_clips]

    def __call__(self, grid: torch.Tensor, clip_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """grid [b,Tt,Ft,D], dataset indices [b] -> (targets [b,N,D] float32, valid [b,N] or None)."""
        targets = map_targets(grid, self.index, self.weight).float()                 # [b,N,D]
        if self.seconds is None:
            return targets, None
        secs = self.seconds[clip_index.cpu().long()]                                   # [b]
        valid = padding_valid(secs, self.tp, self.patch, self.shift)                  # [b,Tp]
        return targets, valid.repeat_interleave(self.fpatches, dim=1).to(targets.device)   # [b,Tp*Fp]


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
