"""FLOPs of one MAM pretraining step, counted from the shapes (matmuls only; 1 multiply-add = 2 FLOPs).

Per sample, forward (N patches, K = int(N * (1 - mask_ratio)) visible, +1 cls token in the encoder):
  patch embed        2 * N * p^2 * D                      (every patch is embedded, then masked)
  encoder, L_e       L_e * (K+1) * (24 D^2 + 4 (K+1) D)   qkv 6D^2 + proj 2D^2 + mlp 16D^2; QK^T and AV 2*(K+1)*D each
  decoder embed      2 * K * D * Dd                      (the visible tokens, without cls)
  decoder, L_d       L_d * N * (24 Dd^2 + 4 W Dd)         Swin blocks, local windows of W = wt * wf tokens
  target head        2 * N * Dd * Dt                      (clap)
  visible head       2 * K * D * Dt                       (clap, Y_v from the encoder: clap_visible_from=encoder)
  rec head           2 * N * Dd * p^2                     (rec)
  cls head           2 * (D * H + H * C)                  (cls; on the mean of the visible tokens)
A training step is 3x the forward (backward = 2x: input and weight gradients), except the patch
embed, whose input (the fbank) needs no gradient: 2x. The online teacher's forward is not counted
(it is reported separately as a slowdown, not as model FLOPs).
"""
from __future__ import annotations


def mam_step_flops(batch: int, num_patches: int, mask_ratio: float, embed_dim: int, enc_depth: int,
                   dec_dim: int, dec_depth: int, window_tokens: int, objectives: list[str],
                   target_dim: int = 768, patch: int = 16, cls_hidden: int = 0, num_classes: int = 0,
                   cls_token: bool = True, visible_head: bool = False) -> dict:
    n, d, dd = num_patches, embed_dim, dec_dim
    vis = int(n * (1 - mask_ratio))                          # visible patches
    k = vis + (1 if cls_token else 0)                         # encoder sequence length
    parts = {
        "patch_embed": 2 * n * patch * patch * d,
        "encoder": enc_depth * k * (24 * d * d + 4 * k * d),
        "decoder_embed": 2 * vis * d * dd if dec_depth else 0,
        "decoder": dec_depth * n * (24 * dd * dd + 4 * window_tokens * dd),
        "target_head": 2 * n * dd * target_dim if "clap" in objectives else 0,
        "target_head_visible": 2 * vis * d * target_dim if "clap" in objectives and visible_head else 0,
        "rec_head": 2 * n * dd * patch * patch if "rec" in objectives else 0,
        "cls_head": 2 * (d * cls_hidden + cls_hidden * num_classes) if "cls" in objectives else 0,
    }
    fwd = sum(parts.values())
    train = 3 * fwd - parts["patch_embed"]                    # no input gradient for the first layer
    return {"forward_per_sample": fwd, "train_step": train * batch, "parts_per_sample": parts}


# bf16 dense tensor-core peaks (no sparsity), FLOP/s. H200 has the H100 SXM's compute.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_name: str) -> float | None:
    for key, v in PEAK_BF16.items():
        if key in device_name:
            return v
    return None
