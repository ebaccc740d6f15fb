"""Evaluation of a fine-tuned classifier on a clip store, and of a saved fine-tuning checkpoint.

    metrics, scores, targets = evaluate_dataset(vit, dataset, multilabel, device)
    evaluate_checkpoint("runs/finetune-spc2-mini-x/checkpoint.pt", task="spc2", stores="data/stores")

Fine-tuning checkpoints describe their model (`model_args`), so evaluation rebuilds it exactly,
whatever encoder it was initialised from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cache_tools.errors import SupmamError
from train import finetune_data as fd
from train.metrics import primary_metric, task_metrics
from train.models_vit import AudioViT


class EvaluateError(SupmamError):
    pass


@torch.no_grad()
def predict(vit: torch.nn.Module, ds, multilabel: bool, device: torch.device, batch_size: int = 64,
            amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N, C] (sigmoid for multi-label, softmax otherwise) and targets ([N, C] or [N])."""
    was_training = vit.training
    vit.eval()
    scores, targets = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = vit.forward_pooled(x.to(device)).float()                      # [B, C]
        scores.append((logits.sigmoid() if multilabel else logits.softmax(-1)).cpu().numpy())
        targets.append(y.numpy())
    vit.train(was_training)
    return np.concatenate(scores), np.concatenate(targets)


def evaluate_dataset(vit: torch.nn.Module, ds, multilabel: bool, device: torch.device, batch_size: int = 64,
                     amp: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics, scores [N, C], targets) of `vit` on dataset `ds`."""
    scores, targets = predict(vit, ds, multilabel, device, batch_size, amp)
    return task_metrics(scores, targets, multilabel), scores, targets


def describe(vit: AudioViT) -> dict:
    """The constructor arguments that rebuild `vit` (saved in fine-tuning checkpoints)."""
    blk = vit.blocks[0]
    return {"target_length": vit.patch_grid[0] * vit.patch, "n_mels": vit.n_mels, "patch": vit.patch,
            "embed_dim": vit.embed_dim, "depth": len(vit.blocks), "num_heads": blk.attn.num_heads,
            "mlp_ratio": blk.mlp.fc1.out_features / vit.embed_dim, "pos_layout": vit.pos_layout,
            "pos_width": vit.pos_width}


def rebuild(model_args: dict, state_dict: dict) -> AudioViT:
    """AudioViT from `describe()` output and a fine-tuned state dict (head size read from it)."""
    vit = AudioViT(**model_args)
    vit.reset_head(int(state_dict["head.weight"].shape[0]))
    vit.load_state_dict(state_dict, strict=True)
    return vit


def evaluate_checkpoint(ckpt: str | Path, task: str | None = None, stores: str | Path = "data/stores",
                        device: str = "cpu", batch_size: int = 64) -> dict:
    """Metrics of a fine-tuning checkpoint on its task's test set (ESC-50: its held-out fold)."""
    from train.checkpoint import load_checkpoint
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise EvaluateError(f"{ckpt}: checkpoint not found")
    state = load_checkpoint(ckpt)
    if state.get("kind") != "finetune" or "model_args" not in state:
        raise EvaluateError(f"{ckpt}: not a fine-tuning checkpoint (kind={state.get('kind')!r}); "
                            "evaluate takes the checkpoint.pt that `supmam finetune` writes")
    cfg = state["config"]
    if task is not None and task != cfg["task"]:
        raise EvaluateError(f"{ckpt}: fine-tuned for task {cfg['task']!r}, not {task!r}")
    dev = torch.device(device)
    vit = rebuild(state["model_args"], state["model"]).to(dev)
    if cfg["task"] == "esc50":
        store = fd.open_stores(stores, cfg["train_stores"] or ["esc50.h5"])[0]
        fold = state["fold"]
        ds, where = fd.ClipDataset(store, np.flatnonzero(np.asarray(store.folds) == fold)), f"{store.path} fold {fold}"
    else:
        store = fd.open_stores(stores, [cfg["test_store"]])[0]
        ds, where = fd.ClipDataset(store), str(store.path)
    if store.num_classes != vit.head.out_features:
        raise EvaluateError(f"{store.path}: {store.num_classes} classes, but {ckpt} has a "
                            f"{vit.head.out_features}-class head")
    metrics, _, _ = evaluate_dataset(vit, ds, store.multilabel, dev, batch_size)
    return {"task": cfg["task"], "checkpoint": str(ckpt), "test_set": where, "clips": len(ds),
            "metric": primary_metric(store.multilabel), **metrics}
