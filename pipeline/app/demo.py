"""`supmam demo`: the whole chain on the built-in mini data (data -> prepare -> targets -> pretrain ->
fine-tune mini spc2 / esc50 / as20k, pretrained and from scratch), ending in one summary table.

Every stage is the code `make data|prepare|targets|pretrain|finetune` runs, and each skips work
already complete, so a second demo re-runs only the fine-tunes. On a CPU a task's two fine-tunes
run side by side (pipeline.app.side_by_side); each run's output goes to runs/<name>/stdout.log.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from cache_tools.names import PRETRAIN_CLIPS, PRETRAIN_TARGETS
from train.finetune import tasks as task_registry

TASKS = ("spc2", "esc50", "as20k")
PRESET = "supmam-clap-mini"
PRETRAIN_STEPS = 60        # of the preset's 150, so the demo fits a short CPU run (BENCHMARKS.md)


def chance_level(task: str, stores: Path) -> float:
    """Score of an uninformed classifier: the majority class's share (accuracy) or, for mAP, the
    mean positive rate over classes with positives (the expected AP of random scores)."""
    from cache_tools.clips.store import ClipStore
    store = ClipStore(stores / task_registry.TASKS[task].scored_store)
    labels = np.asarray(store.labels)
    if store.multilabel:
        rate = labels.astype(np.float64).mean(0)       # [C] positive rate per class
        return float(rate[rate > 0].mean())
    return float(np.bincount(labels.astype(np.int64)).max() / len(labels))


def _stage(name: str, times: dict, fn):
    print(f"\n=== demo: {name} ===", flush=True)
    t0 = time.time()
    out = fn()
    times[name] = round(time.time() - t0, 1)
    print(f"=== demo: {name} done in {times[name]:.1f} s ===", flush=True)
    return out


def run_demo(data: Path, stores: Path, runs: Path, seed: int = 0, clap_ckpt: Path | None = None,
             device: str = "cpu", scale: float = 1.0) -> dict:
    from pipeline.minidata import generate
    from pipeline.prepare import prepare_all
    from pipeline.app.side_by_side import run_jobs
    from pipeline.targets import make_targets
    from train.finetune.config import load_finetune_config
    from train.finetune.run import run_finetune
    from train.pretrain.config import load_pretrain_config
    from train.pretrain.run import run_pretrain

    t_start, times = time.time(), {}
    data, stores, runs = Path(data), Path(stores), Path(runs)
    clips, targets = stores / PRETRAIN_CLIPS, stores / PRETRAIN_TARGETS
    _stage("data", times, lambda: generate(data, seed=seed, scale=scale))
    _stage("prepare", times, lambda: prepare_all(data, stores, workers=os.cpu_count() or 1, block_size=64))
    _stage("targets", times, lambda: make_targets(clips, targets, clap_ckpt=clap_ckpt, clap_model="HTSAT-tiny",
                                                  seed=seed, device=device, batch_size=8, workers=1))
    cfg = load_pretrain_config(PRESET, [f"clips={clips}", f"targets={targets}", f"run_dir={runs}",
                                        f"name=demo-pretrain-{PRESET}", f"device={device}", f"seed={seed}",
                                        f"max_steps={PRETRAIN_STEPS}"])
    ckpt = _stage("pretrain", times, lambda: run_pretrain(cfg, resume=True))
    teacher = _teacher_id(targets)

    rows = []
    for task in TASKS:
        jobs = {label: dict(cfg=load_finetune_config(f"{task}-mini", [
                    f"init={init}", f"stores={stores}", f"run_dir={runs}", f"name=demo-{task}-{label}",
                    f"seed={seed}", f"device={device}"], task=task), overwrite=True)   # the demo's own folders
                for label, init in (("scratch", "none"), ("pretrained", str(ckpt)))}
        logs = {label: runs / kw["cfg"].name / "stdout.log" for label, kw in jobs.items()}
        res = _stage(f"finetune {task} (scratch | pretrained)", times,
                     lambda: run_jobs(run_finetune, jobs, logs, device))
        rows.append({"task": task, "metric": res["scratch"]["metric"], "chance": chance_level(task, stores),
                     "scratch": res["scratch"]["score"], "pretrained": res["pretrained"]["score"],
                     "std_scratch": res["scratch"].get("std"), "std_pretrained": res["pretrained"].get("std")})
    summary = {"rows": rows, "teacher": teacher, "pretrain_checkpoint": str(ckpt), "preset": PRESET,
               "seconds": times, "total_seconds": round(time.time() - t_start, 1), "seed": seed, "device": device}
    out = runs / "demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = summary_table(summary)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table, flush=True)
    return summary


def _teacher_id(targets: Path) -> str:
    from cache_tools.targets.store import TargetStore
    attrs = TargetStore(targets).attrs
    heard = attrs.get("teacher_input", "clipstore-16k-upsampled")   # a store that does not record it
    return f"{attrs.get('teacher', '?')} ({attrs.get('checkpoint_sha256', '?')}; input {heard})"


def _fmt(score: float, std: float | None) -> str:
    return f"{score:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def summary_table(s: dict) -> str:
    lines = [f"## supmam-clap demo: {s['preset']} on the built-in mini data",
             "", f"Teacher: {s['teacher']}. Seed {s['seed']}, device {s['device']}, "
             f"total {s['total_seconds']:.0f} s.", "",
             "| task | metric | chance | from scratch | SupMAM-CLAP pretrained |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['task']} (mini) | {r['metric']} | {r['chance']:.3f} | "
                     f"{_fmt(r['scratch'], r['std_scratch'])} | {_fmt(r['pretrained'], r['std_pretrained'])} |")
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items())]
    if "untrained" in s["teacher"]:
        lines += ["", "The teacher has seeded random weights (no CLAP checkpoint here): its targets carry no "
                  "CLAP semantics, so this table checks the pipeline, not the paper's claims."]
    return "\n".join(lines)
