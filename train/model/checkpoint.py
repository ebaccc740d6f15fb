"""Checkpoints: atomic save / load, and encoders from ours or AudioMAE's released files.

Public API
----------
save_checkpoint(path, state: dict) -> Path     atomic (cache_tools.atomic: tmp file beside it, fsync, rename)
load_checkpoint(path, map_location="cpu") -> dict     cache_tools.safe_load (weights_only); CheckpointError naming the file on any problem
load_encoder(path, target_length=None, drop_path_rate=0.0) -> AudioViT   (eval mode)
encoder_from_checkpoint(path, ck, target_length=None, drop_path_rate=0.0) -> AudioViT
    the same from an already loaded dict {"model": state_dict, ...} (`path` only names it in errors)
    Accepts (a) our checkpoints: {"model": state_dict, "config", "kind", ...}; a pretraining
    checkpoint holds the whole MaskedAudioModel, whose encoder keys carry the `encoder.` prefix;
    (b) AudioMAE's pretrained.pth / finetuned.pth: {"model": ...} with AudioMAE's key names
    (decoder_*, mask_token ignored). A `module.` (DDP) prefix is stripped.
    Size from shapes: embed_dim / patch from patch_embed.proj.weight [D,1,p,p], depth from blocks.N,
    mlp ratio from fc1, heads = D / 64, native length from pos_embed rows (n_mels = 128).
    `norm.*` absent (finetuned.pth) -> final norm = Identity; `head.*` present -> classifier kept.
    Position table: the file's table is matched against the "timefreq" formula and AudioMAE's
    layout (see train.model.models_vit); target_length <= native uses a prefix of the file's table,
    longer ones extend it by the matched formula (an unmatched, learned table cannot be extended).
export_encoder(model: AudioViT | MaskedAudioModel) -> state_dict in AudioMAE's key layout (CPU copies):
    pretrained.pth's keys for an encoder without a classifier (no fc_norm / head), finetuned.pth's
    (fc_norm.*, head.*, and norm.* only if the model still has a final norm) for one with a head.
class CheckpointError(SupmamError)
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from cache_tools.atomic import atomic_path
from cache_tools.errors import CheckpointError, StoreError
from cache_tools.safe_load import AUDIOMAE, OURS, safe_torch_load
from train.model.models_vit import SIZES, AudioViT, heads_for, sincos_pos_embed

N_MELS = 128
IGNORED = re.compile(r"^(decoder_|mask_token|target_head\.|cls_head\.)")


def save_checkpoint(path: str | Path, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Weights-only load (cache_tools.safe_load), never a full unpickle: tensors, plain containers,
    our RNG states' numpy arrays and AudioMAE's argparse.Namespace; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ck = safe_torch_load(path, allow=OURS + AUDIOMAE, map_location=map_location)
    except StoreError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ck).__name__}")
    return ck


def export_encoder(model: nn.Module) -> OrderedDict[str, Tensor]:
    enc = model.encoder if hasattr(model, "encoder") else model
    if not isinstance(enc, AudioViT):
        raise TypeError(f"export_encoder: expected AudioViT or MaskedAudioModel, got {type(model).__name__}")
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in enc.state_dict().items())


def _encoder_keys(path: Path, ck: dict) -> dict[str, Tensor]:
    sd = ck.get("model", None)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: no `model` state dict (keys: {sorted(ck)[:10]})")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("encoder.") for k in sd):         # our pretraining checkpoint
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        if key not in sd:
            raise CheckpointError(f"{path}: not an encoder checkpoint, missing `{key}`")
    return sd


def _pos_layout(table: Tensor, Fp: int) -> tuple[str, int | None]:
    """Which formula the file's [N,D] patch-position table follows. AudioMAE's rows repeat their
    first half every W rows (W = time patches of its pretraining length); a table cut from it
    (e.g. an ESC-50 fine-tune) still shows that period."""
    D, Tp = table.shape[1], table.shape[0] // Fp
    first = table[:, : D // 2].float()
    repeats = ((first[1:] - first[0]).abs().amax(dim=1) < 1e-5).nonzero()      # rows equal to row 0
    width = int(repeats[0]) + 1 if len(repeats) else Tp
    for layout, w in (("timefreq", None), ("audiomae", width)):
        if D % 4 == 0 and torch.allclose(table.float(), sincos_pos_embed(D, (Tp, Fp), layout, w), atol=1e-4):
            return layout, w
    return "table", None


def num_heads(ck: dict, D: int) -> int:
    """The encoder's head count: recorded by fine-tuning (`model_args`) and export (config.json), or
    named by a pretraining config's encoder size; a bare state dict (AudioMAE's files) gets D / 64,
    ViT-B's 12 heads at 768 dims (the weights alone cannot tell)."""
    recorded = (ck.get("model_args") or {}).get("num_heads")
    if recorded:
        return int(recorded)
    cfg = ck.get("config")
    size = (cfg.get("model") or {}).get("encoder") if isinstance(cfg, dict) else None
    if size in SIZES and SIZES[size][0] == D:
        return SIZES[size][2]
    return heads_for(D)


def load_encoder(path: str | Path, target_length: int | None = None, drop_path_rate: float = 0.0) -> AudioViT:
    path = Path(path)
    return encoder_from_checkpoint(path, load_checkpoint(path), target_length, drop_path_rate)


def encoder_from_checkpoint(path: str | Path, ck: dict, target_length: int | None = None,
                            drop_path_rate: float = 0.0) -> AudioViT:
    path = Path(path)
    sd = _encoder_keys(path, ck)
    D, in_ch, p, p2 = sd["patch_embed.proj.weight"].shape
    if in_ch != 1 or p != p2 or N_MELS % p:
        raise CheckpointError(f"{path}: patch_embed.proj.weight {tuple(sd['patch_embed.proj.weight'].shape)} "
                              f"is not a 1-channel square patch dividing {N_MELS} mel bins")
    Fp = N_MELS // p
    rows = sd["pos_embed"].shape[1] - 1
    if rows % Fp:
        raise CheckpointError(f"{path}: pos_embed has {rows} patch rows, not a multiple of {Fp} frequency patches")
    native_T = rows // Fp * p
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.N.*) in the state dict")
    if "blocks.0.mlp.fc1.weight" not in sd:
        raise CheckpointError(f"{path}: missing blocks.0.mlp.fc1.weight (not a ViT in AudioMAE's layout)")
    mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / D
    layout, width = _pos_layout(sd["pos_embed"][0, 1:], Fp)
    T = target_length or native_T
    if T % p:
        raise CheckpointError(f"{path}: target_length {T} is not a multiple of the patch size {p}")
    if T > native_T and layout == "table":
        raise CheckpointError(f"{path}: its learned position table covers {native_T} frames; cannot extend to {T}")
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    try:
        model = AudioViT(target_length=T, n_mels=N_MELS, patch=p, embed_dim=D, depth=depth,
                         num_heads=num_heads(ck, D), mlp_ratio=mlp_ratio, num_classes=num_classes,
                         final_norm="norm.weight" in sd, pos_layout=layout, pos_width=width,
                         drop_path_rate=drop_path_rate)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    sd = {k: v for k, v in sd.items() if not IGNORED.match(k)}
    Tp = T // p
    if Tp <= native_T // p:
        sd["pos_embed"] = sd["pos_embed"][:, :1 + Tp * Fp]           # [1,1+N',D] prefix (time-major)
    else:
        cls_row = sd["pos_embed"][:, :1].to(model.pos_embed.dtype)  # [1,1,D] the file's cls row
        sd["pos_embed"] = torch.cat([cls_row, model.pos_embed.data[:, 1:]], dim=1)  # same formula, longer
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:                               # shape mismatches
        raise CheckpointError(f"{path}: encoder weights do not fit the inferred model: {e}") from e
    missing = [k for k in missing if not k.startswith(("fc_norm.", "head."))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: encoder keys do not match AudioMAE's layout; "
                              f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.eval()
