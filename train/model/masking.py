"""Token masking with index tensors (no Python loops over samples).

Public API
----------
random_masking(B, N, ratio, device=None, generator=None)
    -> (ids_keep [B,K], ids_restore [B,N], mask [B,N] float, 1 = masked)
    Per-sample unstructured masking: argsort of uniform noise (mae / AudioMAE), K = int(N * (1 - ratio)).
    ids_keep is in shuffled (noise) order; ids_restore undoes the shuffle:
    cat([x_keep, mask_tokens], 1).gather(1, ids_restore) puts tokens back in their original order.
random_masking_2d(B, grid, t_prob, f_prob, device=None, generator=None) -> (ids_keep [B,Kt*Kf], mask [B,N])
    AudioMAE's fine-tuning SpecAugment at token level: drop whole time columns (prob t_prob) and whole
    frequency rows (prob f_prob); Kt = int(Tp * (1 - t_prob)), Kf = int(Fp * (1 - f_prob)).
    Kept ids are time-major sorted (t * Fp + f). Tokens are time-major: n = t * Fp + f.
gather_tokens(x [B,N,D], ids [B,K]) -> [B,K,D]
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x: [B,N,D], ids: [B,K] -> [B,K,D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B,K,D]


def random_masking(B: int, N: int, ratio: float, device=None,
                   generator: torch.Generator | None = None):
    """Per-sample random masking of N tokens; see the module docstring for the outputs."""
    _check_ratio("mask ratio", ratio)
    K = int(N * (1 - ratio))
    noise = torch.rand(B, N, device=device, generator=generator)  # [B,N] in [0,1)
    ids_shuffle = torch.argsort(noise, dim=1)                      # [B,N] small noise = keep
    ids_restore = torch.argsort(ids_shuffle, dim=1)                # [B,N] inverse permutation
    ids_keep = ids_shuffle[:, :K]                                  # [B,K]
    mask = torch.ones(B, N, device=noise.device)
    mask[:, :K] = 0                                                # shuffled order: first K kept
    mask = torch.gather(mask, 1, ids_restore)                      # [B,N] back to token order
    return ids_keep, ids_restore, mask


def random_masking_2d(B: int, grid: tuple[int, int], t_prob: float, f_prob: float, device=None,
                      generator: torch.Generator | None = None):
    """Drop whole time columns and frequency rows of a (Tp, Fp) token grid; see the module docstring."""
    _check_ratio("mask_t_prob", t_prob)
    _check_ratio("mask_f_prob", f_prob)
    Tp, Fp = grid
    Kt, Kf = int(Tp * (1 - t_prob)), int(Fp * (1 - f_prob))
    if Kt == 0 or Kf == 0:
        raise ValueError(f"masking t={t_prob}, f={f_prob} of a {Tp}x{Fp} grid leaves no tokens")
    noise_t = torch.rand(B, Tp, device=device, generator=generator)              # [B,Tp]
    noise_f = torch.rand(B, Fp, device=noise_t.device, generator=generator)      # [B,Fp]
    keep_t = torch.argsort(noise_t, 1)[:, :Kt].sort(1).values                    # [B,Kt]
    keep_f = torch.argsort(noise_f, 1)[:, :Kf].sort(1).values                    # [B,Kf]
    ids_keep = (keep_t[:, :, None] * Fp + keep_f[:, None, :]).reshape(B, Kt * Kf)  # [B,Kt,Kf] -> [B,Kt*Kf]
    mask = torch.ones(B, Tp * Fp, device=noise_t.device)
    mask.scatter_(1, ids_keep, 0.0)                                              # [B,N] 1 = dropped
    return ids_keep, mask
