"""The audio ViT encoder over a Kaldi fbank: timm's PatchEmbed and Block in AudioMAE's parameter layout,
so AudioMAE's pretrained.pth / finetuned.pth load unchanged and our checkpoints export to timm.

Tokens are time-major (token n = t * Fp + f). `forward` is AudioMAE's global pool (mean of the patch
tokens -> fc_norm -> head) with its token-level SpecAugment in training mode; the masked model calls
`forward_visible` with the kept tokens only. Position tables are fixed sin-cos in one of three
layouts ("timefreq" for fresh models; "audiomae", AudioMAE's (8, 64) meshgrid read in time-major
order; "table" for anything else), all prefix-consistent, so a shorter input uses the first rows.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from train.model.masking import gather_tokens, random_masking_2d


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """pos: [M] -> [M, dim] = [sin(pos*w), cos(pos*w)], w_i = 1 / 10000^(i / (dim/2)) (mae's formula)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))  # [dim/2]
    out = pos.to(torch.float64)[:, None] * omega[None, :]                                 # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1)                                       # [M, dim]


def sincos_pos_embed(dim: int, grid: tuple[int, int], layout: str = "timefreq",
                     width: int | None = None) -> Tensor:
    """Fixed 2-D table for a time-major (Tp, Fp) grid -> [Tp*Fp, dim] float32 (see module docstring)."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need embed_dim divisible by 4, got {dim}")
    Tp, Fp = grid
    n = torch.arange(Tp * Fp)                                    # [N] time-major token index
    if layout == "timefreq":
        a, b = n // Fp, n % Fp                                   # (t, f)
    elif layout == "audiomae":
        if not width:
            raise ValueError("the 'audiomae' position layout needs its table width (time patches)")
        a, b = n % width, n // width                             # AudioMAE's meshgrid(w, h) order
    else:
        raise ValueError(f"cannot compute positions for layout {layout!r}")
    return torch.cat([sincos_1d(dim // 2, a), sincos_1d(dim // 2, b)], dim=1).float()  # [N, dim]


def init_mae_linear_norm(m: nn.Module) -> None:
    """mae's init for one module: xavier-uniform Linear with zero bias, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class AudioViT(nn.Module):
    def __init__(self, target_length: int = 1024, n_mels: int = 128, patch: int = 16, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 0,
                 drop_path_rate: float = 0.0, final_norm: bool = True, pos_layout: str = "timefreq",
                 pos_width: int | None = None):
        super().__init__()
        if target_length % patch or n_mels % patch:
            raise ValueError(f"AudioViT: input ({target_length}, {n_mels}) is not a multiple of patch {patch}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.n_mels, self.patch = n_mels, patch
        if pos_layout == "audiomae" and pos_width is None:      # a fresh AudioMAE table: as wide as this input
            pos_width = target_length // patch
        self.pos_layout, self.pos_width = pos_layout, pos_width
        self.patch_embed = PatchEmbed(img_size=(target_length, n_mels), patch_size=patch, in_chans=1,
                                      embed_dim=embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim), requires_grad=False)
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if num_classes > 0 else nn.Identity()  # classifier only
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_layout in ("timefreq", "audiomae"):
            table = sincos_pos_embed(self.embed_dim, self.patch_grid, self.pos_layout, self.pos_width)
            self.pos_embed.data[0, 1:].copy_(table)                          # cls row stays 0
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))                     # like nn.Linear (mae)
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            init_mae_linear_norm(m)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=2e-5)

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def patch_grid(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        Tp, Fp = self.patch_grid
        return Tp * Fp

    @property
    def embed_dim(self) -> int:
        return self.cls_token.shape[-1]

    def _grid_of(self, x: Tensor) -> tuple[int, int]:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[3] != self.n_mels or x.shape[2] % self.patch:
            raise ValueError(f"AudioViT expects fbank [B,1,T,{self.n_mels}] with T a multiple of "
                             f"{self.patch}, got {tuple(x.shape)}")
        return x.shape[2] // self.patch, self.n_mels // self.patch

    def pos_table(self, Tp: int) -> Tensor:
        """[1, 1+Tp*Fp, D] positions for Tp time patches: a prefix of the table, or extended by formula."""
        Fp = self.patch_grid[1]
        if Tp <= self.patch_grid[0]:
            return self.pos_embed[:, :1 + Tp * Fp]                               # [1,1+N',D]
        if self.pos_layout not in ("timefreq", "audiomae"):
            raise ValueError(f"this encoder's positional table covers {self.patch_grid[0]} time patches "
                             f"and cannot be extended to {Tp} (layout {self.pos_layout!r})")
        table = sincos_pos_embed(self.embed_dim, (Tp, Fp), self.pos_layout, self.pos_width)
        table = table.to(self.pos_embed)[None]                                  # [1,N',D]
        return torch.cat([self.pos_embed[:, :1], table], dim=1)                 # [1,1+N',D]

    # ---- stages ---------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B,1,T,F] -> (patch tokens + pos [B,N,D], cls token + pos [B,1,D])."""
        Tp, _ = self._grid_of(x)
        pos = self.pos_table(Tp)                                                # [1,1+N,D]
        tokens = self.patch_embed(x) + pos[:, 1:]                               # [B,N,D] time-major
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)          # [B,1,D]
        return tokens, cls

    def run_blocks(self, tokens: Tensor, cls: Tensor) -> Tensor:
        """[B,K,D] tokens + [B,1,D] cls -> [B,1+K,D] after all blocks (no final norm)."""
        x = torch.cat([cls, tokens], dim=1)                                     # [B,1+K,D]
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_tokens(self, x: Tensor) -> Tensor:
        tokens, cls = self.embed(x)
        return self.norm(self.run_blocks(tokens, cls))[:, 1:]                   # [B,N,D]

    def forward_visible(self, x: Tensor, ids_keep: Tensor) -> Tensor:
        tokens, cls = self.embed(x)
        tokens = gather_tokens(tokens, ids_keep)                                # [B,K,D]
        return self.norm(self.run_blocks(tokens, cls))[:, 1:]                   # [B,K,D]

    def forward(self, x: Tensor, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        tokens, cls = self.embed(x)                                             # [B,N,D]
        if self.training and (mask_t_prob > 0 or mask_f_prob > 0):
            ids_keep, _ = random_masking_2d(x.shape[0], self._grid_of(x), mask_t_prob, mask_f_prob,
                                            device=x.device, generator=generator)
            tokens = gather_tokens(tokens, ids_keep)                            # [B,Kt*Kf,D]
        h = self.run_blocks(tokens, cls)[:, 1:].mean(dim=1)                     # [B,D] mean of patch tokens
        return self.head(self.fc_norm(h))                                       # [B,C]

    # ---- fine-tuning helpers ----------------------------------------------------------------------
    def reset_head(self, num_classes: int, drop_norm: bool = True) -> None:
        device = self.cls_token.device
        self.head = nn.Linear(self.embed_dim, num_classes).to(device) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)
            if isinstance(self.fc_norm, nn.Identity):
                self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6).to(device)
        if drop_norm:
            self.norm = nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])


def describe(vit: AudioViT) -> dict:
    """The constructor arguments that rebuild `vit` (fine-tuning checkpoints save them as `model_args`)."""
    blk = vit.blocks[0]
    return {"target_length": vit.patch_grid[0] * vit.patch, "n_mels": vit.n_mels, "patch": vit.patch,
            "embed_dim": vit.embed_dim, "depth": len(vit.blocks), "num_heads": blk.attn.num_heads,
            "mlp_ratio": blk.mlp.fc1.out_features / vit.embed_dim, "pos_layout": vit.pos_layout,
            "pos_width": vit.pos_width}


SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}  # (dim, depth, heads)


def build_encoder(name: str, depth: int | None = None, target_length: int = 1024, **kw) -> AudioViT:
    """AudioViT of size `name` ("tiny" | "small" | "base"), optionally with fewer/more blocks."""
    if name not in SIZES:
        raise ValueError(f"unknown encoder size {name!r}; known: {sorted(SIZES)}")
    dim, default_depth, heads = SIZES[name]
    return AudioViT(target_length=target_length, embed_dim=dim, depth=depth or default_depth,
                    num_heads=heads, **kw)


def vit_tiny(depth: int | None = None, target_length: int = 1024, **kw) -> AudioViT:
    return build_encoder("tiny", depth, target_length, **kw)


def vit_small(depth: int | None = None, target_length: int = 1024, **kw) -> AudioViT:
    return build_encoder("small", depth, target_length, **kw)


def vit_base(depth: int | None = None, target_length: int = 1024, **kw) -> AudioViT:
    return build_encoder("base", depth, target_length, **kw)


def heads_for(embed_dim: int) -> int:
    """Head count of our sizes (head dim 64), used when a checkpoint gives only shapes."""
    if embed_dim % 64:
        raise ValueError(f"cannot infer the head count of a {embed_dim}-d encoder (head dim 64 assumed)")
    return embed_dim // 64
