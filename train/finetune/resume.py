"""Resuming a fine-tuning run (`supmam finetune ... --resume`) from <run>/last.pt (ESC-50: per fold).

last.pt is written atomically after every epoch: model, optimizer, scaler, epoch and update count,
every rank's RNG states, the model selection so far and the stores' fingerprints. Samplers draw
from (seed, epoch) and each item's augmentation from its own seed, so on CPU a resumed run
reproduces an uninterrupted one exactly; the logs are cut back to the saved update.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from train import distributed
from train.model.checkpoint import load_checkpoint, save_checkpoint
from train.rng import rng_state
from train.run_folder import check_saved_config, truncate_log
from cache_tools.errors import StoreError

RESUME = "last.pt"


def gather_rng(dist: distributed.DistInfo) -> list[dict]:
    """Every rank's RNG states (torch, CUDA, numpy, python), in rank order."""
    mine = rng_state()
    if not dist.enabled:
        return [mine]
    states: list = [None] * dist.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def save_resume(out: Path, state: dict) -> Path:
    return save_checkpoint(Path(out) / RESUME, {"kind": "finetune-resume", **state})


def load_resume(out: Path, info: dict, dist: distributed.DistInfo, config: dict | None = None) -> dict | None:
    """The run's resume state, or None (and a note) if it has none yet. Refuses one trained on other
    stores (fingerprints), with other settings than `config` (train.run_folder.config_diff) or with a
    different number of ranks (RNG states are per rank)."""
    path = Path(out) / RESUME
    if not path.exists():
        if dist.is_main:
            print(f"[finetune] --resume: no {path}; starting from epoch 1", flush=True)
        return None
    st = load_checkpoint(path)
    if st.get("kind") != "finetune-resume":
        raise StoreError(f"{path}: not a fine-tuning resume state (kind={st.get('kind')!r})")
    if st["fingerprints"] != info["fingerprints"]:
        raise StoreError(f"{path}: trained on stores {st['fingerprints']}, not on these {info['fingerprints']}")
    if config is not None:
        check_saved_config(path, st.get("config"), config)
    if len(st["rng"]) != dist.world_size:
        raise StoreError(f"{path}: written by {len(st['rng'])} ranks, resumed with {dist.world_size}; "
                            "resume with the same number of processes")
    if dist.is_main:
        print(f"[finetune] resumed from {path} after epoch {st['epoch']} (update {st['step']})", flush=True)
    return st


def truncate_logs(out: Path, step: int) -> None:
    """Keep the log lines of updates <= `step` (train.run_folder.truncate_log: a line the kill cut short
    is dropped), without final evaluations: what the run had written by its resume state."""
    for name in ("log.jsonl", "eval.jsonl"):
        path = Path(out) / name
        truncate_log(path, step)
        if path.exists() and name == "eval.jsonl":
            rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
            path.write_text("".join(ln + "\n" for ln in rows if not json.loads(ln).get("final")))
