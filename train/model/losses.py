"""Pretraining losses: reconstruction (AudioMAE), CLAP targets (Eq. 1), classification (Eq. 2).

rec_loss: AudioMAE's per-patch MSE (target normalised per patch when norm_pix), mean over masked patches.
clap_loss: Eq. 1, a token's squared error averaged ("mean") or summed ("sum") over its D dims, then
    averaged over the visible and over the masked tokens, the two averages added. `valid` [B,N]
    (1 = in the loss) leaves patches out, e.g. fbank padding past a short clip's end.
cls_loss: Eq. 2 on logits / tau. Multi-label: BCE averaged over classes ("mean"), BCE summed over
    classes ("sum"), or softmax cross-entropy against the multi-hot labels normalised to sum 1
    ("softmax"); each averaged over clips. Single-label int labels: cross-entropy.
mask is float or bool, 1 = masked.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CLS_LOSSES = ("mean", "sum", "softmax")


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


def clap_loss(pred: Tensor, target: Tensor, mask: Tensor, dim_reduction: str = "mean",
              valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """-> (visible + masked, visible, masked) scalars; a kind with no tokens contributes 0."""
    if pred.shape != target.shape:
        raise ValueError(f"clap_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ "
                         "(targets must be per-patch [B,N,D]: map the teacher grid first)")
    sq = (pred - target.to(pred.dtype)) ** 2                        # [B,N,D]
    per_token = sq.sum(dim=-1) if dim_reduction == "sum" else sq.mean(dim=-1)   # [B,N]
    m = mask.to(per_token.dtype)
    keep = torch.ones_like(m) if valid is None else valid.to(per_token.dtype)   # [B,N]
    visible = _masked_mean(per_token, (1.0 - m) * keep)
    masked = _masked_mean(per_token, m * keep)
    return visible + masked, visible, masked


def cls_loss(logits: Tensor, labels: Tensor, tau: float = 1.0, multilabel: bool = False,
             reduction: str = "mean") -> Tensor:
    z = logits / tau                                                # [B,C]
    if multilabel:
        if labels.shape != logits.shape:
            raise ValueError(f"cls_loss: multi-label labels must be [B,C]={tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        y = labels.to(z.dtype)
        if reduction == "softmax":                                  # CE against y / sum(y)
            p = y / y.sum(dim=1, keepdim=True).clamp(min=1.0)       # a clip without labels adds 0
            return -(p * F.log_softmax(z, dim=1)).sum(1).mean()
        if reduction == "sum":
            return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1).mean()
        return F.binary_cross_entropy_with_logits(z, y)
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"cls_loss: single-label labels must be int [B]={logits.shape[0]}, "
                         f"got {tuple(labels.shape)}")
    return F.cross_entropy(z, labels.long())
