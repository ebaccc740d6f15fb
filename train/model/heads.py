"""One small head per objective of the masked model (train.model.models_mam).

Each is an nn.Sequential, so checkpoint keys stay `<name>.<i>.*` as before this module existed;
the reconstruction head is a plain Linear under AudioMAE's own key, `decoder_pred`.
  rec_head(Dd, p)          Linear Dd -> p*p pixels (AudioMAE's decoder_pred)
  TargetHead(Din, Dt)      h of the paper's section 2.1: Linear Din -> Dt + LayerNorm (CAE v2 style)
  ClsHead(D, hidden, C)    Linear-BatchNorm1d-ReLU-Linear on the mean of the visible encoder tokens
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def rec_head(decoder_dim: int, patch: int) -> nn.Linear:
    """[.., Dd] -> [.., p*p]: the reconstruction head (AudioMAE's decoder_pred)."""
    return nn.Linear(decoder_dim, patch * patch)


class TargetHead(nn.Sequential):
    """[.., Din] -> [.., Dt]: a fully-connected layer and a LayerNorm, predicting teacher tokens."""

    def __init__(self, in_dim: int, target_dim: int):
        super().__init__(nn.Linear(in_dim, target_dim), nn.LayerNorm(target_dim))

    @torch.no_grad()
    def start_at(self, mean: Tensor, std: Tensor) -> None:
        """Output LayerNorm bias = the targets' per-dim mean, weight = their std ([Dt] each)."""
        ln = self[1]
        if mean.shape != ln.bias.shape or std.shape != ln.weight.shape:
            raise ValueError(f"init_target_head: stats {tuple(mean.shape)}/{tuple(std.shape)} do not match "
                             f"the head's {tuple(ln.bias.shape)}")
        ln.bias.copy_(mean)
        ln.weight.copy_(std)


class ClsHead(nn.Sequential):
    """[B, D] pooled visible tokens -> [B, C] logits (width `hidden`: not given in the paper)."""

    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))
