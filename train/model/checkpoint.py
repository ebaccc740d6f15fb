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
    Checked before anything is built (check_weights, check_architecture): every value a finite
    tensor its file really holds; width <= MAX_DIM, blocks 0..depth-1 all present (depth <= MAX_DEPTH)
    with the shapes the width implies, position table and target_length <= MAX_FRAMES frames; a
    recorded num_heads must divide the width. So the model never holds more than the file does.
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
# What an encoder file may claim (ViT-H is 1280-d, 32 blocks; AudioMAE's windows are 1024 frames):
# larger claims are refused before anything is built, whatever the file's size.
MAX_DIM, MAX_DEPTH, MAX_MLP_RATIO, MAX_FRAMES, MAX_CLASSES = 4096, 64, 8, 16384, 100_000
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
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"{path}: the `model` state dict has non-text keys ({odd[:3]!r}); not an encoder checkpoint")
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


def num_heads(ck: dict, D: int, path: str | Path = "checkpoint") -> int:
    """The encoder's head count: recorded by fine-tuning (`model_args`) and export (config.json), or
    named by a pretraining config's encoder size; a bare state dict (AudioMAE's files) gets D / 64,
    ViT-B's 12 heads at 768 dims (the weights alone cannot tell). CheckpointError for a recorded
    count that is not a whole number dividing D."""
    args = ck.get("model_args")
    recorded = args.get("num_heads") if isinstance(args, dict) else None
    if recorded is not None:
        if isinstance(recorded, bool) or not isinstance(recorded, int) or not 1 <= recorded <= D or D % recorded:
            raise CheckpointError(f"{path}: model_args num_heads={recorded!r} does not divide the "
                                  f"{D}-d embedding into whole heads")
        return recorded
    cfg = ck.get("config")
    size = (cfg.get("model") or {}).get("encoder") if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) else None
    if isinstance(size, str) and size in SIZES and SIZES[size][0] == D:
        return SIZES[size][2]
    try:
        return heads_for(D)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; the file records no num_heads") from None


def check_weights(path: Path, sd: dict) -> None:
    """Every value a tensor that its file really holds (no broadcast view claiming more elements than
    its storage: a 4-byte storage may not stand for a 12 GB matrix) and finite (a NaN checkpoint must
    not give confident all-NaN embeddings, probes or exports)."""
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{path}: `{k}` is a {type(v).__name__}, not a tensor; not an encoder checkpoint")
        if v.numel() * v.element_size() > v.untyped_storage().nbytes():
            raise CheckpointError(f"{path}: `{k}` claims shape {tuple(v.shape)} over a storage of "
                                  f"{v.untyped_storage().nbytes()} bytes; not loading it")
        if (v.is_floating_point() or v.is_complex()) and v.numel() and not _finite(v):
            raise CheckpointError(f"{path}: `{k}` holds NaN or infinite weights (a diverged run?); "
                                  "refusing to use them")


def _finite(v: Tensor) -> bool:
    """No NaN / inf in v: aminmax carries a NaN through and shows an inf at an end (0.1 s for ViT-B's
    86 M weights here, isfinite().all() 1.3 s)."""
    if v.is_complex():
        return bool(torch.isfinite(v).all())
    lo, hi = torch.aminmax(v)
    return bool(torch.isfinite(lo) and torch.isfinite(hi))


def _block_shapes(D: int, H: int) -> dict[str, tuple[int, ...]]:
    """timm Block's parameters for width D and MLP hidden size H."""
    return {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
            "attn.proj.weight": (D, D), "attn.proj.bias": (D,), "norm2.weight": (D,), "norm2.bias": (D,),
            "mlp.fc1.weight": (H, D), "mlp.fc1.bias": (H,), "mlp.fc2.weight": (D, H), "mlp.fc2.bias": (D,)}


def check_architecture(path: Path, sd: dict, target_length: int | None) -> tuple[int, int, int, int, int]:
    """(D, p, native_T, depth, H) that the weights claim, checked against the bounds above and against
    the tensors present before anything is built: every block 0..depth-1 whole, every shape the one
    its width implies, so the model holds no more than the file does."""
    w = sd["patch_embed.proj.weight"]
    if w.dim() != 4 or w.shape[1] != 1 or w.shape[2] != w.shape[3] or not w.shape[2] or N_MELS % w.shape[2]:
        raise CheckpointError(f"{path}: patch_embed.proj.weight {tuple(w.shape)} is not a 1-channel square "
                              f"patch dividing {N_MELS} mel bins")
    D, p = int(w.shape[0]), int(w.shape[2])
    if not 1 <= D <= MAX_DIM:
        raise CheckpointError(f"{path}: embed_dim {D} is outside 1..{MAX_DIM}")
    pos, Fp = sd["pos_embed"], N_MELS // p
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != D or pos.shape[1] < 1 + Fp or (pos.shape[1] - 1) % Fp:
        raise CheckpointError(f"{path}: pos_embed {tuple(pos.shape)} is not [1, 1 + k x {Fp}, {D}]")
    native_T = (pos.shape[1] - 1) // Fp * p
    for name, T in (("its position table", native_T), ("target_length", target_length or native_T)):
        if not 1 <= T <= MAX_FRAMES:
            raise CheckpointError(f"{path}: {name} covers {T} frames, outside 1..{MAX_FRAMES}")
    if tuple(sd["cls_token"].shape) != (1, 1, D):
        raise CheckpointError(f"{path}: cls_token {tuple(sd['cls_token'].shape)} is not [1, 1, {D}]")
    found = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = len(found)
    if not found or found != set(range(depth)) or depth > MAX_DEPTH:
        raise CheckpointError(f"{path}: blocks {_span(found)} are not 1..{MAX_DEPTH} whole blocks numbered from 0")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is None or fc1.dim() != 2 or not 1 <= fc1.shape[0] <= MAX_MLP_RATIO * D:
        raise CheckpointError(f"{path}: blocks.0.mlp.fc1.weight {None if fc1 is None else tuple(fc1.shape)} is "
                              f"not an MLP of at most {MAX_MLP_RATIO} x {D} units (not a ViT in AudioMAE's layout)")
    H = int(fc1.shape[0])
    for i in range(depth):
        for suffix, shape in _block_shapes(D, H).items():
            v = sd.get(f"blocks.{i}.{suffix}")
            if v is None or tuple(v.shape) != shape:
                raise CheckpointError(f"{path}: blocks.{i}.{suffix} is {'missing' if v is None else tuple(v.shape)}, "
                                      f"expected {shape} for a {D}-d encoder")
    for k in ("norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias"):
        if k in sd and tuple(sd[k].shape) != (D,):
            raise CheckpointError(f"{path}: {k} {tuple(sd[k].shape)} is not [{D}]")
    head = sd.get("head.weight")
    if head is not None and (head.dim() != 2 or head.shape[1] != D or not 1 <= head.shape[0] <= MAX_CLASSES):
        raise CheckpointError(f"{path}: head.weight {tuple(head.shape)} is not [1..{MAX_CLASSES}, {D}]")
    return D, p, native_T, depth, H


MODEL_ARGS = {"target_length", "n_mels", "patch", "embed_dim", "depth", "num_heads", "mlp_ratio", "pos_layout",
              "pos_width", "final_norm", "num_classes"}


def check_model_args(path: Path, model_args, sd: dict) -> dict:
    """A checkpoint's recorded constructor arguments (models_vit.describe) checked against the
    bounds and the weights present (check_weights, check_architecture) before anything is built:
    CheckpointError naming the first argument the weights do not bear out."""
    if not isinstance(model_args, dict) or not set(model_args) <= MODEL_ARGS:
        odd = sorted(map(str, set(model_args) - MODEL_ARGS)) if isinstance(model_args, dict) else type(model_args).__name__
        raise CheckpointError(f"{path}: model_args {odd} are not AudioViT's arguments")
    check_weights(path, sd)
    D, p, native_T, depth, H = check_architecture(path, sd, None)
    want = {"embed_dim": D, "depth": depth, "patch": p, "n_mels": N_MELS, "target_length": native_T}
    for k, v in want.items():
        if k in model_args and (isinstance(model_args[k], bool) or model_args[k] != v):
            raise CheckpointError(f"{path}: model_args {k}={model_args[k]!r}, the weights say {v}")
    num_heads({"model_args": model_args}, D, path)
    ratio = model_args.get("mlp_ratio", H / D)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or round(ratio * D) != H:
        raise CheckpointError(f"{path}: model_args mlp_ratio={ratio!r}, the weights say {H / D:g}")
    if model_args.get("pos_layout", "timefreq") not in ("timefreq", "audiomae", "table"):
        raise CheckpointError(f"{path}: model_args pos_layout={model_args['pos_layout']!r} is not a known layout")
    width = model_args.get("pos_width")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_FRAMES):
        raise CheckpointError(f"{path}: model_args pos_width={width!r} is not a whole number of patches")
    return model_args


def _span(found: set[int]) -> str:
    return f"{min(found)}..{max(found)} ({len(found)} present)" if found else "(none)"


def load_encoder(path: str | Path, target_length: int | None = None, drop_path_rate: float = 0.0) -> AudioViT:
    path = Path(path)
    return encoder_from_checkpoint(path, load_checkpoint(path), target_length, drop_path_rate)


def encoder_from_checkpoint(path: str | Path, ck: dict, target_length: int | None = None,
                            drop_path_rate: float = 0.0) -> AudioViT:
    path = Path(path)
    sd = {k: v for k, v in _encoder_keys(path, ck).items() if not IGNORED.match(k)}
    check_weights(path, sd)
    D, p, native_T, depth, H = check_architecture(path, sd, target_length)
    Fp, mlp_ratio = N_MELS // p, H / D
    layout, width = _pos_layout(sd["pos_embed"][0, 1:], Fp)
    T = target_length or native_T
    if T % p:
        raise CheckpointError(f"{path}: target_length {T} is not a multiple of the patch size {p}")
    if T > native_T and layout == "table":
        raise CheckpointError(f"{path}: its learned position table covers {native_T} frames; cannot extend to {T}")
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    try:
        model = AudioViT(target_length=T, n_mels=N_MELS, patch=p, embed_dim=D, depth=depth,
                         num_heads=num_heads(ck, D, path), mlp_ratio=mlp_ratio, num_classes=num_classes,
                         final_norm="norm.weight" in sd, pos_layout=layout, pos_width=width,
                         drop_path_rate=drop_path_rate)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
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
