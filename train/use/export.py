"""Export an encoder as safetensors + config.json that timm and plain safetensors load (no pickle).

Public API
----------
write_export(vit, out, fmt="timm", norm={"mean", "std", "source"}, source="", overwrite=False) -> Path
    the folder; one writer (`out.lock`); `out` must be absent, empty or an earlier export (only
    model.safetensors and an export's config.json): any other folder is refused unless `overwrite`
    (then only those two files are replaced), and a symlinked `out` always is
    out/model.safetensors  the AudioViT state dict (AudioMAE's = timm's key names), the config JSON
                           also in its header metadata (key "supmam_config")
    out/config.json        {"normalization", "supmam"} (+ for fmt "timm": timm's hub fields
                           "architecture", "num_classes", "num_features", "model_args", "pretrained_cfg")
read_export(out) -> (state_dict, config)      ConfigError naming the file on any problem
timm_create_kwargs(out) -> dict               keyword arguments for timm.create_model (file overlay)
timm_model_args(vit) -> dict                  VisionTransformer arguments reproducing `vit`
class ConfigError(SupmamError)

How timm holds our encoder
--------------------------
timm's VisionTransformer takes img_size (H, W) and a conv patch embed, and flattens the patch grid
row-major: token index = h * W' + w. Our input is the fbank [B, 1, T, 128] with H = time, W = mel,
so img_size = (T, 128), in_chans = 1 gives exactly our time-major tokens (index = t * F' + f).
Key names are already timm's (patch_embed.proj, cls_token, pos_embed, blocks.i.*, norm, fc_norm,
head). Our fixed sin-cos positions go into timm's (learned-parameter) pos_embed unchanged, cls row
included; so the timm model is fixed to T frames (no dynamic_img_size: timm would interpolate the
table, which is not our formula). Pooling: global_pool="avg" (mean of patch tokens, never the cls
token); final_norm / fc_norm follow what the encoder holds: a pretrained encoder (final norm, no
classifier) is final_norm=True, fc_norm=False, num_classes=0 and forward_features(x)[:, 1:] equals
our forward_tokens(x); a fine-tuned one (no final norm, fc_norm + head) is final_norm=True,
fc_norm=True (timm then moves its one final norm after the pooling) and its logits equal ours. An
encoder with both a final norm and a classifier has no timm equivalent (timm drops `norm` when
fc_norm is on) and is refused for fmt "timm".
Normalisation: inputs are (fbank - mean) / (2 std); pretrained_cfg's one-channel mean / std are
(mean,) / (2 std,) so timm's own data config says the same.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from cache_tools.atomic import atomic_path, atomic_write_text
from cache_tools.errors import ConfigError
from cache_tools.fingerprint import file_sha256
from cache_tools.writer_lock import writer_lock
from train.model.checkpoint import export_encoder
from train.model.models_vit import AudioViT

FORMATS = ("timm", "safetensors")
WEIGHTS, CONFIG = "model.safetensors", "config.json"
TIMM_ARCH = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224", 768: "vit_base_patch16_224",
             1024: "vit_large_patch16_224"}


def timm_model_args(vit: AudioViT) -> dict:
    """timm's final_norm means "a LayerNorm at the end", placed after pooling (fc_norm) when fc_norm=True."""
    has_norm, has_fc_norm = not isinstance(vit.norm, torch.nn.Identity), not isinstance(vit.fc_norm, torch.nn.Identity)
    T = vit.patch_grid[0] * vit.patch
    return dict(img_size=[T, vit.n_mels], patch_size=vit.patch, in_chans=1, embed_dim=vit.embed_dim,
                depth=len(vit.blocks), num_heads=vit.blocks[0].attn.num_heads,
                mlp_ratio=vit.blocks[0].mlp.fc1.out_features / vit.embed_dim, qkv_bias=True, class_token=True,
                global_pool="avg", final_norm=has_norm or has_fc_norm, fc_norm=has_fc_norm)


def _supmam_config(vit: AudioViT, source: str) -> dict:
    Tp, Fp = vit.patch_grid
    num_classes = vit.head.out_features if isinstance(vit.head, torch.nn.Linear) else 0
    return {"source": source, "target_length": Tp * vit.patch, "n_mels": vit.n_mels, "patch": vit.patch,
            "patch_grid": [Tp, Fp], "embed_dim": vit.embed_dim, "depth": len(vit.blocks),
            "num_heads": vit.blocks[0].attn.num_heads, "num_classes": num_classes, "pos_layout": vit.pos_layout, "pos_width": vit.pos_width,
            "tokens": "time-major: token n = t * F' + f; input fbank [B, 1, T, n_mels]",
            "features": "Kaldi fbank at 16 kHz (pipeline.features.FBANK_PARAMS), zero-padded to target_length"}


def _timm_fields(vit: AudioViT, norm: dict) -> dict:
    args = timm_model_args(vit)
    if not isinstance(vit.norm, torch.nn.Identity) and args["fc_norm"]:
        raise ValueError("an encoder with both a final norm and a classifier (fc_norm) has no timm equivalent")
    num_classes = vit.head.out_features if isinstance(vit.head, torch.nn.Linear) else 0
    T, F = args["img_size"]
    pcfg = {"input_size": [1, T, F], "fixed_input_size": True, "mean": [norm["mean"]],
            "std": [2 * norm["std"]], "num_classes": num_classes, "first_conv": "patch_embed.proj",
            "classifier": "head", "crop_pct": 1.0}
    return {"architecture": TIMM_ARCH.get(vit.embed_dim, "vit_base_patch16_224"), "num_classes": num_classes,
            "num_features": vit.embed_dim, "model_args": args, "pretrained_cfg": pcfg}


def _is_export(out: Path) -> bool:
    """True if `out` holds nothing but what export writes, its config.json one export wrote."""
    names = {p.name for p in out.iterdir()
             if not (p.name.startswith((f".{WEIGHTS}.", f".{CONFIG}.")) and p.name.endswith(".tmp"))}  # a killed export's
    if names != {WEIGHTS, CONFIG} or (out / CONFIG).is_symlink() or (out / WEIGHTS).is_symlink():
        return not names
    try:
        cfg = json.loads((out / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("supmam"), dict) and "normalization" in cfg


def check_out(out: Path, overwrite: bool = False) -> None:
    """ConfigError unless export may write into `out` (write_export's rules)."""
    if out.is_symlink():
        raise ConfigError(f"{out}: is a symlink (to {os.readlink(out)}); export writes only into a real folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not _is_export(out):
        held = sorted(p.name for p in out.iterdir())
        raise ConfigError(f"{out}: a folder export did not make (it holds {', '.join(held[:4])}"
                          f"{' ...' if len(held) > 4 else ''}); not writing into it. Choose an empty or new "
                          f"--out, or pass --overwrite to replace {WEIGHTS} and {CONFIG} there")


def write_export(vit: AudioViT, out: str | Path, fmt: str = "timm", norm: dict | None = None,
                 source: str = "", overwrite: bool = False) -> Path:
    """Write out/model.safetensors and out/config.json (each atomically; weights first), holding `out.lock`."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"{out}: unknown format {fmt!r}; choose one of {FORMATS}")
    if norm is None or not {"mean", "std"} <= norm.keys():
        raise ConfigError(f"{out}: the normalisation stats (mean, std) are required")
    check_out(out, overwrite)
    with writer_lock(out, "export"):
        check_out(out, overwrite)                        # again, now that no other export can write it
        return _write(vit, out, fmt, norm, source)


def _write(vit: AudioViT, out: Path, fmt: str, norm: dict, source: str) -> Path:
    from safetensors.torch import save_file
    cfg = {"normalization": {"mean": float(norm["mean"]), "std": float(norm["std"]),
                             "source": norm.get("source", ""), "formula": "(fbank - mean) / (2 * std)"},
           "supmam": _supmam_config(vit, source)}
    if fmt == "timm":
        try:
            cfg = {**_timm_fields(vit, cfg["normalization"]), **cfg}
        except ValueError as e:
            raise ConfigError(f"{source or out}: {e}; use --format safetensors") from e
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in export_encoder(vit).items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", "supmam_config": json.dumps(cfg)})
    cfg["supmam"]["weights_sha256"] = file_sha256(out / WEIGHTS)
    atomic_write_text(out / CONFIG, json.dumps(cfg, indent=2) + "\n")
    return out


def read_export(out: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(state dict, config) of an export folder; the config comes from config.json, else the header."""
    from safetensors import SafetensorError, safe_open
    out = Path(out)
    weights, cfg_path = out / WEIGHTS, out / CONFIG
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found (an export folder holds {WEIGHTS} and {CONFIG})")
    try:
        with safe_open(str(weights), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            header = (f.metadata() or {}).get("supmam_config")
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{weights}: cannot read safetensors ({e})") from e
    try:
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else json.loads(header or "null")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{cfg_path}: not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("normalization"), dict) \
            or not isinstance(cfg.get("supmam"), dict):
        raise ConfigError(f"{cfg_path}: no `normalization` / `supmam` objects (not written by supmam export)")
    sha = cfg["supmam"].get("weights_sha256")
    if sha and cfg_path.is_file() and sha != file_sha256(weights):
        raise ConfigError(f"{weights}: does not match {cfg_path} (sha256 differs: written by another export?)")
    return sd, cfg


def timm_create_kwargs(out: str | Path) -> dict:
    """timm.create_model(**kw) for an export folder, through pretrained_cfg_overlay(file=...)."""
    out = Path(out)
    _, cfg = read_export(out)
    if "model_args" not in cfg:
        raise ConfigError(f"{out / CONFIG}: written with --format safetensors; re-export with --format timm")
    p = cfg["pretrained_cfg"]
    overlay = {"file": str(out / WEIGHTS), "num_classes": cfg["num_classes"], "input_size": tuple(p["input_size"]),
               "mean": tuple(p["mean"]), "std": tuple(p["std"]), "fixed_input_size": True}
    return {"model_name": cfg["architecture"], "pretrained": True, "pretrained_cfg_overlay": overlay,
            "num_classes": cfg["num_classes"], **cfg["model_args"]}
