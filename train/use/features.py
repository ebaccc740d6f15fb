"""Features of a frozen encoder: block_tokens (the one extractor, which embed and the probe share) and
the probe's per-clip vectors, pooled over patch tokens ("mean", as AudioMAE's classifier) or "cls".

Inputs are normalised as fine-tuning normalises them, without augmentation. The cache file
`<cache_dir>/<store stem>.<key>.npy` (float32 [N, D], with a `.json` recording its sha256) is keyed
by the encoder's weights rather than its path, so a replaced checkpoint or a seeded random encoder
never reads another's features; the store's fingerprints, layer, pooling and normalisation are in
the key too. A file that fails its shape, sha256 or finiteness check is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cache_tools.atomic import atomic_path, atomic_write_text
from cache_tools.clips.store import ClipStore
from cache_tools.errors import CheckpointError, ConfigError
from cache_tools.fingerprint import json_fingerprint
from train.finetune import data as fd
from train.amp import autocast
from train.model.models_vit import AudioViT


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the state dict: names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def block_index(depth: int, layer: int) -> int:
    """`layer` as every command reads it: a block index, 0 = the first, -1 = the last -> 0..depth-1."""
    if not -depth <= layer < depth:
        raise ConfigError(f"layer {layer}: the encoder has {depth} blocks (0..{depth - 1}, or -1..-{depth} "
                          "from the last)")
    return layer % depth


def block_tokens(vit: AudioViT, x: torch.Tensor, layer: int) -> torch.Tensor:
    """x [B,1,T,F] -> tokens [B,1+N,D] (cls first) after block `layer` (0-based; the last adds the final norm).
    The one feature extractor: the probe pools these, embed lays them out on the patch grid."""
    layer = block_index(len(vit.blocks), layer)
    tokens, cls = vit.embed(x)                                   # [B,N,D], [B,1,D]
    h = torch.cat([cls, tokens], dim=1)                          # [B,1+N,D]
    for blk in vit.blocks[:layer + 1]:
        h = blk(h)
    if layer == len(vit.blocks) - 1:
        h = vit.norm(h)                                          # Identity where the encoder has none
    return h


def encode(vit: AudioViT, x: torch.Tensor, layer: int, pooling: str) -> torch.Tensor:
    """x [B,1,T,F] -> pooled features [B,D] after block `layer`."""
    h = block_tokens(vit, x, layer)                              # [B,1+N,D]
    return h[:, 0] if pooling == "cls" else h[:, 1:].mean(dim=1)  # [B,D]


@torch.no_grad()
def embed_store(vit: AudioViT, store: ClipStore, layer: int, pooling: str, device: torch.device,
                batch_size: int = 64) -> np.ndarray:
    """Features of every clip of `store`, in store order: float32 [N, D]."""
    vit.eval()
    out = []
    for x, _ in DataLoader(fd.ClipDataset(store), batch_size=batch_size, shuffle=False, num_workers=0):
        with autocast(device, "bf16" if device.type == "cuda" else "off"):
            out.append(encode(vit, x.to(device), layer, pooling).float().cpu().numpy())   # [B,D]
    return np.concatenate(out)                                                           # [N,D]


def cache_key(digest: str, store: ClipStore, layer: int, pooling: str) -> dict:
    return {"encoder_sha256": digest, "store_fingerprint": store.fingerprint,
            "source_fingerprint": store.attrs.get("source_fingerprint"), "layer": layer, "pooling": pooling,
            "norm": [store.norm_mean, store.norm_std], "target_length": store.target_length}


def read_cache(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(features, "") if `path` holds float32 `shape` finite features whose sha256 its .json records;
    else (None, why). The .npy header is read first, so a header claiming a huge array reads nothing."""
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                return None, f"an .npy format version {version} this cache never writes"
            dims, fortran, dtype = read[version](f)
            if tuple(dims) != shape or np.dtype(dtype) != np.float32 or fortran:
                return None, f"holds {np.dtype(dtype)} {tuple(dims)}, expected float32 {shape}"
            feats = np.fromfile(f, dtype=np.float32, count=shape[0] * shape[1])
    except (OSError, ValueError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    if feats.size != shape[0] * shape[1]:
        return None, f"truncated ({feats.size} of {shape[0] * shape[1]} values)"
    feats = feats.reshape(shape)                                               # [N, D]
    if not isinstance(info, dict) or hashlib.sha256(feats.tobytes()).hexdigest() != info.get("sha256"):
        return None, "its sha256 differs from the one recorded beside it"
    if not np.isfinite(feats).all():
        return None, "holds NaN or infinite values"
    return feats, ""


def cached_features(vit: AudioViT, digest: str, store: ClipStore, layer: int, pooling: str, cache_dir: Path,
                    device: torch.device, batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """(features float32 [N, D], {"path", "hit", "seconds"}): from the cache, or computed and cached.
    A cache file is used only if its shape, its recorded sha256 and finiteness check (read_cache);
    otherwise it is recomputed. Non-finite computed features are an error (CheckpointError), never cached."""
    layer = block_index(len(vit.blocks), layer)
    key = cache_key(digest, store, layer, pooling)
    path = Path(cache_dir) / f"{store.path.stem}.{json_fingerprint(key)}.npy"
    if path.is_file():
        feats, why = read_cache(path, (len(store), vit.embed_dim))
        if feats is not None:
            return feats, {"path": str(path), "hit": True, "seconds": 0.0}
        print(f"[probe] feature cache {path}: {why}; recomputing it", flush=True)
    t0 = time.time()
    feats = embed_store(vit, store, layer, pooling, device, batch_size)      # [N, D]
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        raise CheckpointError(f"{digest[:16]}: the frozen encoder gives NaN or infinite features for {int(bad.sum())} "
                              f"of {len(feats)} clips of {store.path} (first: {store.clip_ids[int(np.argmax(bad))]}); "
                              "its weights or the store's normalisation are broken; nothing was cached or scored")
    seconds = round(time.time() - t0, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, feats)
    atomic_write_text(path.with_suffix(".json"), json.dumps({**key, "store": str(store.path), "shape":
                                                             list(feats.shape), "seconds": seconds,
                                                             "sha256": hashlib.sha256(feats.tobytes()).hexdigest()},
                                                            indent=1))
    return feats, {"path": str(path), "hit": False, "seconds": seconds}
