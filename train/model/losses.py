"""Pretraining losses: reconstruction (AudioMAE), CLAP targets (Eq. 1), classification (Eq. 2).

Public API
----------
rec_loss(pred [B,N,P], target [B,N,P], mask [B,N], norm_pix=True) -> scalar
    AudioMAE's loss: per-patch MSE (target normalised per patch when norm_pix), mean over masked patches.
clap_loss(pred [B,N,D], target [B,N,D], mask [B,N], dim_reduction="mean") -> (total, visible, masked) scalars
    Eq. 1: a token's squared error, averaged ("mean") or summed ("sum") over its D dims; averaged
    over the visible tokens + averaged over the masked tokens (each over all tokens of its kind in
    the batch). A kind with no tokens (mask ratio 0 or 1) contributes 0.
cls_loss(logits [B,C], labels, tau=1.0, multilabel=False, reduction="mean") -> scalar
    Eq. 2 on logits / tau: BCE-with-logits for multi-hot float labels [B,C], averaged over clips and
    classes ("mean") or summed over classes and averaged over clips ("sum"); cross-entropy for int
    [B] (one term per clip: the reduction does not apply).
mask is float or bool, 1 = masked.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _masked_mean(per_token: Tensor, weight: Tensor) -> Tensor:
    """Mean of per_token [B,N] over entries with weight 1; 0 (with a graph) when there are none."""
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)


def rec_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"rec_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)                    # [B,N,1]
        var = target.var(dim=-1, keepdim=True)                      # [B,N,1] (unbiased, as mae)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)                 # [B,N]
    return _masked_mean(per_patch, mask.to(per_patch.dtype))


def clap_loss(pred: Tensor, target: Tensor, mask: Tensor, dim_reduction: str = "mean") -> tuple[Tensor, Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"clap_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ "
                         "(targets must be per-patch [B,N,D]: map the teacher grid first)")
    sq = (pred - target.to(pred.dtype)) ** 2                        # [B,N,D]
    per_token = sq.sum(dim=-1) if dim_reduction == "sum" else sq.mean(dim=-1)   # [B,N]
    m = mask.to(per_token.dtype)
    visible = _masked_mean(per_token, 1.0 - m)
    masked = _masked_mean(per_token, m)
    return visible + masked, visible, masked


def cls_loss(logits: Tensor, labels: Tensor, tau: float = 1.0, multilabel: bool = False,
             reduction: str = "mean") -> Tensor:
    z = logits / tau
    if multilabel:
        if labels.shape != logits.shape:
            raise ValueError(f"cls_loss: multi-label labels must be [B,C]={tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        if reduction == "sum":
            return F.binary_cross_entropy_with_logits(z, labels.to(z.dtype), reduction="none").sum(1).mean()
        return F.binary_cross_entropy_with_logits(z, labels.to(z.dtype))
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"cls_loss: single-label labels must be int [B]={logits.shape[0]}, "
                         f"got {tuple(labels.shape)}")
    return F.cross_entropy(z, labels.long())
