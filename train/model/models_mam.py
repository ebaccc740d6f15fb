"""Masked audio model for pretraining: AudioMAE / MAM-CLAP / SupMAM / SupMAM-CLAP in one class.

Read as mae's models_mae.py: forward_encoder (mask, encode the visible patches), forward_decoder
(mask tokens, positions, Swin blocks, norm), forward_loss (one head per objective, Eq. 1-3), and a
forward of three lines. check_inputs holds the shape and objective checks.
  .forward(fbank [B,1,T,F], targets [B,N,Dt] | None, labels [B,C] | [B] | None, generator, valid [B,N] | None)
      -> (loss, parts {"rec" | "clap", "clap_vis", "clap_mask" | "cls"}, mask [B,N], 1 = masked)
      loss = L_target (rec + clap, those enabled) + lambda_cls * L_cls; cls alone: L_cls.
Heads (train.model.heads): decoder_pred (rec), target_head (h on the decoder, clap), with
clap_visible_from="encoder" target_head_visible (h on the encoder output for the visible tokens: Y_v
from Z_v, section 2.1; a head of its own, the decoder being narrower), cls_head (cls).
Checkpoints: `model` = state_dict(); train.model.checkpoint.load_encoder takes the `encoder.*` keys.
Decoder: timm SwinTransformerV2CrBlock x decoder_depth over the full (Tp, Fp) grid; shifted blocks
per decoder_shift_blocks ("odd": AudioMAE; "all": the paper's single shifted block). timm >= 1.0
resets a non-zero shift to half the window, so shifted blocks get decoder_shift back (_swin_block).
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock

from train.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT_OPEN, EncoderSize, check_ranges
from train.model.heads import ClsHead, TargetHead, rec_head
from train.model.losses import clap_loss, cls_loss, rec_loss
from train.model.masking import gather_tokens, random_masking
from train.model.models_vit import build_encoder, init_mae_linear_norm, sincos_pos_embed
from cache_tools.errors import ConfigError

OBJECTIVES = ("rec", "clap", "cls")
CHOICES = ("decoder_shift_blocks", "pos_layout", "cls_reduction", "clap_dim_reduction", "clap_visible_from")
# AudioMAE's Swin V2-CR attention (timm_patch/swin_transformer.py): logits / tau with tau = 1 at init,
# position-bias MLP dropouts 0.1 / 0.1 (timm 1.0 starts logit_scale at log(10) and uses 0.125 / 0)
ATTN_LOGIT_SCALE = 1.0
META_MLP_DROP = (0.1, 0.1)


@dataclass
class MAMConfig:
    encoder: EncoderSize = "base"          # tiny | small | base
    encoder_depth: int | None = None       # None: the size's 12 blocks
    objectives: list[str] = field(default_factory=lambda: ["clap", "cls"])  # subset of rec, clap, cls
    mask_ratio: float = 0.2
    decoder_depth: int = 1                 # CLAP presets 1; AudioMAE / SupMAM 16
    decoder_dim: int = 512
    decoder_heads: int = 16
    decoder_window: list[int] = field(default_factory=lambda: [4, 4])
    decoder_shift: list[int] = field(default_factory=lambda: [2, 0])
    decoder_shift_blocks: Literal["odd", "all", "none"] = "odd"   # which blocks shift (AudioMAE: odd)
    pos_layout: Literal["timefreq", "audiomae"] = "timefreq"      # fresh sin-cos tables (train.model.models_vit)
    lambda_cls: float = 1.0e-4
    tau: float = 1.0                       # cls temperature (the paper gives no value)
    cls_reduction: Literal["mean", "sum", "softmax"] = "mean"   # Eq. 2, multi-label: BCE mean / sum, softmax CE
    clap_dim_reduction: Literal["mean", "sum"] = "mean"         # Eq. 1's per-token error over the D dims
    clap_visible_from: Literal["decoder", "encoder"] = "decoder"  # where visible tokens' clap predictions come from
    target_head_init: str = "stats"        # stats: the clap head starts at the targets' mean/std; mae: LayerNorm 1 / 0
    norm_pix_loss: bool = True
    cls_hidden: int = 512                  # hidden width of the cls head (not given in the paper)

    RANGES = {"encoder_depth": AT_LEAST_1, "mask_ratio": UNIT_OPEN, "decoder_depth": AT_LEAST_1,
              "decoder_dim": AT_LEAST_1, "decoder_heads": AT_LEAST_1, "decoder_window": AT_LEAST_1,
              "decoder_shift": AT_LEAST_0, "lambda_cls": AT_LEAST_0, "tau": POSITIVE, "cls_hidden": AT_LEAST_1}

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or bad or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"objectives must be a non-empty subset of {OBJECTIVES}, got {self.objectives}")
        check_ranges(self)
        if self.target_head_init not in ("stats", "mae"):
            raise ConfigError(f"target_head_init must be 'stats' or 'mae', got {self.target_head_init!r}")
        if len(self.decoder_window) != 2 or len(self.decoder_shift) != 2:
            raise ConfigError("decoder_window and decoder_shift are [time, frequency] pairs")
        for name in CHOICES:
            allowed = typing.get_args(typing.get_type_hints(MAMConfig)[name])
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


def audiomae_attention_init(blk: SwinTransformerV2CrBlock) -> None:
    """Give timm's Swin V2-CR block AudioMAE's attention init: cosine logits times 1 (AudioMAE divides
    by tau = 1; timm multiplies by exp(logit_scale), here log 1 = 0) and dropout 0.1 / 0.1 in the
    position-bias meta-MLP. Both clamp the scale at 100 (tau >= 0.01 / logit_scale <= log 100)."""
    with torch.no_grad():
        blk.attn.logit_scale.fill_(math.log(ATTN_LOGIT_SCALE))
    blk.attn.meta_mlp.drop1.p, blk.attn.meta_mlp.drop2.p = META_MLP_DROP


class MaskedAudioModel(nn.Module):
    def __init__(self, cfg: MAMConfig, target_length: int = 1024, target_dim: int | None = None,
                 num_classes: int | None = None, multilabel: bool = False):
        super().__init__()
        self.cfg, self.multilabel = cfg, multilabel
        self.objectives = set(cfg.objectives)
        if "clap" in self.objectives and not target_dim:
            raise ValueError("the clap objective needs target_dim (the teacher's token dim)")
        if "cls" in self.objectives and not num_classes:
            raise ValueError("the cls objective needs num_classes")
        self.encoder = build_encoder(cfg.encoder, cfg.encoder_depth, target_length, pos_layout=cfg.pos_layout)
        D, grid, p = self.encoder.embed_dim, self.encoder.patch_grid, self.encoder.patch
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        if self.objectives & {"rec", "clap"}:
            Dd = cfg.decoder_dim
            self.decoder_embed = nn.Linear(D, Dd)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
            pos = sincos_pos_embed(Dd, grid, cfg.pos_layout, self.encoder.pos_width)          # [N,Dd]
            self.register_buffer("decoder_pos_embed", pos[None], persistent=False)
            self.decoder_blocks = nn.ModuleList([self._swin_block(i, Dd, grid, norm_layer)
                                                 for i in range(cfg.decoder_depth)])
            self.decoder_norm = norm_layer(Dd)
        if "rec" in self.objectives:
            self.decoder_pred = rec_head(cfg.decoder_dim, p)
        if "clap" in self.objectives:
            self.target_head = TargetHead(cfg.decoder_dim, target_dim)
            if cfg.clap_visible_from == "encoder":                  # Y_v = h(Z_v): visible tokens from the encoder
                self.target_head_visible = TargetHead(D, target_dim)
        if "cls" in self.objectives:
            self.cls_head = ClsHead(D, cfg.cls_hidden, num_classes)
        self._init_weights()

    def _shifted(self, i: int) -> bool:
        """Does decoder block i shift its windows? odd: AudioMAE's alternation (even none, odd shifted);
        all: every block (the paper's single CLAP decoder block "with shifted local attention")."""
        rule = self.cfg.decoder_shift_blocks
        return rule == "all" or (rule == "odd" and i % 2 == 1)

    def _swin_block(self, i: int, dim: int, grid: tuple[int, int], norm_layer) -> SwinTransformerV2CrBlock:
        shift = tuple(self.cfg.decoder_shift) if self._shifted(i) else (0, 0)
        blk = SwinTransformerV2CrBlock(dim=dim, num_heads=self.cfg.decoder_heads, feat_size=grid,
                                       window_size=tuple(self.cfg.decoder_window), shift_size=shift,
                                       norm_layer=norm_layer)
        # the block clamps the window to the grid; a side no longer than its window is not shifted
        want = tuple(0 if g <= w else s for g, w, s in zip(grid, blk.window_size, shift))
        if tuple(blk.shift_size) != want:
            blk.shift_size = want
            blk.init_non_persistent_buffers()                  # rebuild the shifted-window mask
        audiomae_attention_init(blk)
        return blk

    def _init_weights(self) -> None:
        """mae's init for the new parts (the encoder initialises itself)."""
        for name, m in self.named_modules():
            if not name.startswith("encoder"):
                init_mae_linear_norm(m)
        if hasattr(self, "mask_token"):
            nn.init.normal_(self.mask_token, std=0.02)

    @torch.no_grad()
    def init_target_head(self, mean: Tensor, std: Tensor) -> None:
        """Start the clap heads' output LayerNorm at the targets' per-dim statistics ([Dt] each). The
        loss is unchanged; without it the head reaches a large constant target offset only through the
        encoder, which then collapses its tokens onto one direction (seen with an untrained teacher)."""
        for head in (self.target_head, getattr(self, "target_head_visible", None)):
            if head is not None:
                head.start_at(mean, std)

    # ---- patches ---------------------------------------------------------------------------------
    def patchify(self, x: Tensor) -> Tensor:
        """x: [B,1,T,F] -> [B,N,p*p], patch pixels in (time, freq) order."""
        p = self.encoder.patch
        B, _, T, F = x.shape
        x = x.reshape(B, T // p, p, F // p, p)                 # [B,Tp,p,Fp,p]
        x = x.permute(0, 1, 3, 2, 4)                           # [B,Tp,Fp,p,p]
        return x.reshape(B, (T // p) * (F // p), p * p)        # [B,N,p*p]

    def unpatchify(self, x: Tensor) -> Tensor:
        """x: [B,N,p*p] -> [B,1,T,F] on the encoder's grid."""
        p = self.encoder.patch
        Tp, Fp = self.encoder.patch_grid
        x = x.reshape(x.shape[0], Tp, Fp, p, p)                # [B,Tp,Fp,p,p]
        x = x.permute(0, 1, 3, 2, 4)                           # [B,Tp,p,Fp,p]
        return x.reshape(x.shape[0], 1, Tp * p, Fp * p)        # [B,1,T,F]

    # ---- stages -----------------------------------------------------------------------------------
    def forward_encoder(self, x: Tensor, ratio: float, generator: torch.Generator | None = None):
        B, N = x.shape[0], self.encoder.num_patches
        ids_keep, ids_restore, mask = random_masking(B, N, ratio, x.device, generator)
        latent = self.encoder.forward_visible(x, ids_keep)     # [B,K,D]
        return latent, ids_keep, ids_restore, mask

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        B, K, _ = latent.shape
        Tp, Fp = self.encoder.patch_grid
        x = self.decoder_embed(latent)                                   # [B,K,Dd]
        Dd = x.shape[-1]
        masks = self.mask_token.expand(B, Tp * Fp - K, Dd)               # [B,N-K,Dd]
        x = gather_tokens(torch.cat([x, masks], dim=1), ids_restore)     # [B,N,Dd] token order
        x = x + self.decoder_pos_embed
        x = x.reshape(B, Tp, Fp, Dd)                                     # [B,Tp,Fp,Dd] as the block expects
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x.reshape(B, Tp * Fp, Dd))              # [B,N,Dd]

    def forward_loss(self, fbank: Tensor, latent: Tensor, ids_keep: Tensor, mask: Tensor, dec: Tensor | None,
                     targets: Tensor | None, labels: Tensor | None, valid: Tensor | None = None):
        """Each enabled objective's head and loss, then Eq. 3. latent [B,K,D], dec [B,N,Dd] (or None)."""
        parts: dict[str, Tensor] = {}
        if "rec" in self.objectives:
            parts["rec"] = rec_loss(self.decoder_pred(dec), self.patchify(fbank), mask, self.cfg.norm_pix_loss)
        if "clap" in self.objectives:
            parts["clap"], parts["clap_vis"], parts["clap_mask"] = clap_loss(
                self.clap_pred(dec, latent, ids_keep), targets, mask, self.cfg.clap_dim_reduction, valid)
        if "cls" in self.objectives:
            logits = self.cls_head(latent.mean(dim=1))                       # [B,D] -> [B,C]
            parts["cls"] = cls_loss(logits, labels, self.cfg.tau, self.multilabel, self.cfg.cls_reduction)
        target_terms = [parts[k] for k in ("rec", "clap") if k in parts]
        if not target_terms:
            return parts["cls"], parts
        loss = sum(target_terms)
        return (loss + self.cfg.lambda_cls * parts["cls"] if "cls" in parts else loss), parts

    def clap_pred(self, dec: Tensor, latent: Tensor, ids_keep: Tensor) -> Tensor:
        """[B,N,Dt]: h on the decoder at every position, or (clap_visible_from="encoder") on the encoder's
        output at the visible positions ids_keep [B,K] (latent [B,K,D])."""
        pred = self.target_head(dec)                                     # [B,N,Dt]
        if self.cfg.clap_visible_from == "decoder":
            return pred
        vis = self.target_head_visible(latent)                           # [B,K,Dt]
        return pred.scatter(1, ids_keep[..., None].expand(-1, -1, vis.shape[-1]), vis.to(pred.dtype))

    def check_inputs(self, fbank: Tensor, targets: Tensor | None, labels: Tensor | None) -> None:
        """ValueError for an input the enabled objectives cannot use."""
        T = self.encoder.patch_grid[0] * self.encoder.patch                 # fbank frames
        if fbank.dim() != 4 or fbank.shape[2] != T:
            raise ValueError(f"MaskedAudioModel expects fbank [B,1,{T},F], got {tuple(fbank.shape)}")
        if "clap" in self.objectives and targets is None:
            raise ValueError("the clap objective needs per-patch targets [B,N,Dt]")
        if "cls" in self.objectives:
            if labels is None:
                raise ValueError("the cls objective needs labels")
            if int(self.encoder.num_patches * (1 - self.cfg.mask_ratio)) == 0:
                raise ValueError("the cls objective needs visible tokens (mask_ratio leaves none)")

    def forward(self, fbank: Tensor, targets: Tensor | None = None, labels: Tensor | None = None,
                generator: torch.Generator | None = None, valid: Tensor | None = None):
        self.check_inputs(fbank, targets, labels)
        latent, ids_keep, ids_restore, mask = self.forward_encoder(fbank, self.cfg.mask_ratio, generator)
        dec = self.forward_decoder(latent, ids_restore) if self.objectives & {"rec", "clap"} else None
        loss, parts = self.forward_loss(fbank, latent, ids_keep, mask, dec, targets, labels, valid)
        return loss, parts, mask
