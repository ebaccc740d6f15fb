"""Fine-tuning on the registry's tasks (train/finetune/tasks.py): claim the run folder, run the task's protocol, report.

The encoder comes from `init` (our pretraining checkpoint, AudioMAE's pretrained.pth / finetuned.pth,
or `none`: random); the head is AudioViT's mean pool, fc_norm and linear layer. metrics.json holds the
last epoch's test score and, where the task has a validation split, the best-on-valid model's, which
is then the headline (`score`): a test-set pick would flatter the number.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from train import distributed
from train.config import to_dict
from train.finetune import report
from train.finetune.config import FinetuneConfig
from train.finetune.custom import run_custom
from train.finetune.protocols import _run_cv, _run_split
from train.finetune.tasks import TASKS
from train.run_folder import check_resume_config, claimed
from train.stop_signal import EXIT_REQUEUE, STOPPED, StopRequested
from cache_tools.atomic import atomic_write_text


def run_finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Fine-tune and evaluate `cfg.task`; writes <run_dir>/<name>/ and returns the metrics
    (on the main rank; other ranks return {}). `resume`: continue from the run's last.pt files. A run
    folder holding a checkpoint is refused unless `resume` or `overwrite` (train.run_folder). A SIGTERM /
    SIGUSR1 stops it after the update in progress: last.pt written, STOPPED in the run folder, exit
    code EXIT_REQUEUE (train.stop_signal)."""
    task = TASKS[cfg.task]
    dist = distributed.init_distributed(cfg.device)
    out = Path(cfg.run_dir) / cfg.name
    try:
        outcome = _run(cfg, task, out, dist, resume, overwrite)
    except StopRequested as stop:                            # a scheduler's signal: state saved, requeue
        if dist.is_main:
            atomic_write_text(out / STOPPED, json.dumps({"signal": stop.signal_name, "step": stop.step,
                                                         "state": stop.state}) + "\n")
            print(f"[finetune] {cfg.name}: {stop}; continue with --resume (exit code {EXIT_REQUEUE}: requeue)",
                  flush=True)
        distributed.cleanup()
        raise SystemExit(EXIT_REQUEUE) from None
    distributed.cleanup()
    return outcome.metrics if outcome is not None else {}


def _run(cfg: FinetuneConfig, task, out: Path, dist: distributed.DistInfo, resume: bool, overwrite: bool):
    with claimed(out, "finetune", resume=resume, overwrite=overwrite, is_main=dist.is_main):
        if resume:                                           # refused before anything is written
            check_resume_config(out, to_dict(cfg), "finetune")
        if dist.is_main:
            (out / STOPPED).unlink(missing_ok=True)          # written again only if a signal stops this run
        if dist.device.type == "cpu":
            torch.set_num_threads(max(1, torch.get_num_threads() // dist.world_size))
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            meta = {"config": to_dict(cfg), "derived": {"lr": cfg.lr, "world_size": dist.world_size}}
            (out / "config.json").write_text(json.dumps(meta, indent=2))
        if task.protocol == "store":                         # your own data: train/finetune/custom.py
            outcome = run_custom(cfg, task, out, dist, resume)
        else:
            outcome = (_run_cv if task.protocol == "cv" else _run_split)(cfg, task, out, dist, resume)
        if outcome is not None:
            report.write_report(out, outcome.metrics, outcome.test.scores, outcome.test.targets)
    return outcome
