"""`supmam ablate`: the paper's ablations (Tables 2-5) on the mini data, from ONE target store.

Every pretraining run reads the same cached target store; its files' sha256 are taken before the
sweep and after it, and the sweep fails if a single byte changed. Each pretrained encoder is then
fine-tuned on mini as20k (mAP) and mini esc50 (5-fold accuracy).

The paper's grids (Xin, Peng, Lu 2023), by name:
    table2: MAM-CLAP mask ratio 10-40%          table3: SupMAM mask ratio 20-60%
    table4: SupMAM objectives rec / cls / rec+cls at 80% and 40% masking
    table5: SupMAM lambda_cls 0.05 / 0.02 / 0.01 / 0.005
Interpretation sweeps (not in the paper; labelled so in the tables):
    clap-lambda: SupMAM-CLAP lambda_cls 1e-4 / 1e-2 / 1
    options:     SupMAM-CLAP with each reading the paper leaves open switched from the preset's (OPTIONS)

On a multi-core CPU two configurations run side by side (pipeline.app.side_by_side), each with half
the cores; a configuration's log is runs/<ablate>/logs/<name>.log.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from cache_tools.errors import StoreError, SupmamError
from cache_tools.fingerprint import file_sha256
from cache_tools.names import PRETRAIN_CLIPS, PRETRAIN_TARGETS

TASKS = ("as20k", "esc50")
PAPER_TABLES = ("table2", "table3", "table4", "table5")
INTERPRETATION_TABLES = ("clap-lambda", "options")
TABLES = PAPER_TABLES + INTERPRETATION_TABLES
# the paper's grids: (objectives, mask ratios, lambdas) of each table
TABLE2_MASKS = (0.1, 0.2, 0.3, 0.4)                 # MAM-CLAP
TABLE3_MASKS = (0.2, 0.3, 0.4, 0.5, 0.6)            # SupMAM
TABLE4 = ((("rec",), (0.8, 0.4)), (("cls",), (0.8, 0.4)), (("rec", "cls"), (0.8, 0.4)))   # SupMAM objectives
TABLE5_LAMBDAS = (0.05, 0.02, 0.01, 0.005)          # SupMAM
CLAP_LAMBDAS = (1e-4, 1e-2, 1.0)                    # interpretation: SupMAM-CLAP
# interpretation: one row each, a reading the paper leaves open switched away from the preset's (docs/fidelity.md)
OPTIONS = ((("model.cls_reduction", "mean"), ("model.tau", "1.0")),    # Eq. 2 as BCE (the presets before)
           (("model.tau", "1.0"),),                                    # softmax CE without SupMAE's temperature
           (("model.clap_dim_reduction", "sum"),),                     # Eq. 1 summed over the 768 dims
           (("model.clap_visible_from", "decoder"),),                  # Y_v from the decoder
           (("target_alignment", "bilinear"),), (("target_padding", "map"),))


@dataclass(frozen=True)
class Run:
    preset: str            # mini pretraining preset the run starts from
    objectives: tuple      # ("clap", "cls") ...
    mask_ratio: float
    lambda_cls: float
    options: tuple = ()    # (("model.tau", "0.1"),): further config overrides

    @property
    def name(self) -> str:
        extra = "".join(f"-{k.split('.')[-1]}={v}" for k, v in self.options)
        return f"{'+'.join(self.objectives)}-m{self.mask_ratio:g}-l{self.lambda_cls:g}{extra}"


def sweep(tables: set[str]) -> dict[str, list[Run]]:
    """The runs of each table, in TABLES order; the same configuration in two tables is trained once."""
    supmam = lambda obj, m, lam=0.01: Run("supmam-mini", obj, m, lam)          # noqa: E731
    clap_base = Run("supmam-clap-mini", ("clap", "cls"), 0.2, 1e-4)
    grids = {"table2": lambda: [Run("mam-clap-mini", ("clap",), m, 0.0) for m in TABLE2_MASKS],
             "table3": lambda: [supmam(("rec", "cls"), m) for m in TABLE3_MASKS],
             "table4": lambda: [supmam(obj, m) for m in (0.8, 0.4) for obj, ms in TABLE4 if m in ms],
             "table5": lambda: [supmam(("rec", "cls"), 0.4, lam) for lam in TABLE5_LAMBDAS],
             "clap-lambda": lambda: [dataclasses.replace(clap_base, lambda_cls=lam) for lam in CLAP_LAMBDAS],
             "options": lambda: [clap_base] + [dataclasses.replace(clap_base, options=o) for o in OPTIONS]}
    return {t: grids[t]() for t in TABLES if t in tables}


def store_checksums(path: Path) -> dict[str, str]:
    """sha256 of every file under a store directory (data, shard index, attrs), but the integrity check's
    record of which shards it hashed (progress/verified.json, rewritten by every reader that verifies)."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()
                   and p.relative_to(path).as_posix() != "progress/verified.json")   # the verifier's own cache
    return {str(f.relative_to(path)): file_sha256(f) for f in files}


def pretrain_overrides(run: Run, clips: Path, targets: Path, runs: Path, seed: int, device: str,
                       steps: int | None, extra: list[str]) -> list[str]:
    """The config overrides of one configuration's pretraining run (on top of its mini preset)."""
    ovs = [f"clips={clips}", f"targets={targets}", f"run_dir={runs}", f"name=pretrain-{run.name}",
           f"device={device}", f"seed={seed}", f"model.objectives={','.join(run.objectives)}",
           f"model.mask_ratio={run.mask_ratio}", f"model.lambda_cls={run.lambda_cls}",
           *(f"{k}={v}" for k, v in run.options)]
    if steps:
        ovs.append(f"max_steps={steps}")
    return ovs + list(extra)


def pretrain_run(run: Run, clips: Path, targets: Path, runs: Path, seed: int, device: str,
                 steps: int | None, extra: list[str]) -> Path:
    from train.pretrain.config import load_pretrain_config
    from train.pretrain.run import run_pretrain
    ovs = pretrain_overrides(run, clips, targets, runs, seed, device, steps, extra)
    return run_pretrain(load_pretrain_config(run.preset, ovs), resume=True)


def config_job(run: Run, clips: Path, targets: Path, stores: Path, runs: Path, seed: int, device: str,
               steps: int | None, tasks: tuple[str, ...], pretrain_overrides: list[str],
               finetune_overrides: dict[str, list[str]]) -> dict:
    """One configuration: pretrain from the shared target store, fine-tune on each task."""
    from train.finetune.config import load_finetune_config
    from train.finetune.run import run_finetune
    ckpt = pretrain_run(run, clips, targets, runs, seed, device, steps, pretrain_overrides)
    scores = {}
    for task in tasks:
        m = run_finetune(load_finetune_config(f"{task}-mini", [
            f"init={ckpt}", f"stores={stores}", f"run_dir={runs}", f"name=ft-{task}-{run.name}", f"device={device}",
            f"seed={seed}", *finetune_overrides.get(task, [])], task=task), overwrite=True)
        scores[task] = {"metric": m["metric"], "score": m["score"], "std": m.get("std")}
    return {"run": run.__dict__ | {"objectives": list(run.objectives), "options": [list(o) for o in run.options]},
            "scores": scores}


def run_ablation(stores: Path, runs: Path, seed: int = 0, device: str = "cpu", tables: str = "all",
                 steps: int | None = None, tasks: tuple[str, ...] = TASKS,
                 pretrain_overrides: list[str] = (), finetune_overrides: dict[str, list[str]] | None = None,
                 clips: Path | None = None, targets: Path | None = None) -> dict:
    """Pretrain every configuration of the chosen tables from the one target store, fine-tune each
    on `tasks`, write runs/ablation.{json,md,png}; raise if the store changed by a byte."""
    from pipeline.app.side_by_side import run_jobs

    stores, runs = Path(stores), Path(runs)
    clips = Path(clips or stores / PRETRAIN_CLIPS)
    chosen = {"all": set(TABLES), "paper": set(PAPER_TABLES)}.get(tables) or set(tables.split(","))
    if chosen - set(TABLES):
        raise SupmamError(f"--tables {tables}: unknown ablation table(s) {sorted(chosen - set(TABLES))}; "
                          f"known: {', '.join(TABLES)} (or paper, all)")
    targets = Path(targets or stores / PRETRAIN_TARGETS)
    if not targets.exists():
        raise StoreError(targets, "no target store; run `make targets` first")
    before = store_checksums(targets)
    t0 = time.time()
    unique = {run.name: run for table_runs in sweep(chosen).values() for run in table_runs}
    jobs = {name: dict(run=run, clips=clips, targets=targets, stores=stores, runs=runs, seed=seed, device=device,
                       steps=steps, tasks=tuple(tasks), pretrain_overrides=list(pretrain_overrides),
                       finetune_overrides=dict(finetune_overrides or {}))
            for name, run in unique.items()}
    results = run_jobs(config_job, jobs, {name: runs / "logs" / f"{name}.log" for name in jobs}, device)
    after = store_checksums(targets)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    summary = {"tables": {t: [r.name for r in rs] for t, rs in sweep(chosen).items()}, "results": results,
               "store": str(targets), "store_files": len(before), "store_unchanged": not changed,
               "changed_files": changed, "seconds": round(time.time() - t0, 1), "seed": seed}
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (runs / "ablation.md").write_text(ablation_tables(summary) + "\n")
    plot_ablation(summary, runs / "ablation.png")
    print(ablation_tables(summary), flush=True)
    if changed:
        raise StoreError(targets, f"the sweep changed the target store ({changed[:5]}...); every run read it only")
    return summary


_TITLES = {"table2": "Table 2: MAM-CLAP mask ratio", "table3": "Table 3: SupMAM mask ratio",
           "table4": "Table 4: SupMAM objectives", "table5": "Table 5: SupMAM lambda_cls",
           "clap-lambda": "Interpretation (not a paper table): SupMAM-CLAP lambda_cls",
           "options": "Interpretation (not a paper table): readings the paper leaves open (SupMAM-CLAP)"}


def ablation_tables(s: dict) -> str:
    out = [f"# Ablations on the mini data (one target store: {s['store']}, unchanged: {s['store_unchanged']})"]
    for table, names in s["tables"].items():
        tasks = list(s["results"][names[0]]["scores"])
        with_options = any(s["results"][n]["run"].get("options") for n in names)   # a column only if used
        out += ["", f"## {_TITLES[table]}", "",
                "| objectives | mask ratio | lambda_cls | " + ("options | " if with_options else "") + " | ".join(
                    f"{t} {s['results'][names[0]]['scores'][t]['metric']}" for t in tasks) + " |",
                "|---|---|---|" + ("---|" if with_options else "") + "---|" * len(tasks)]
        for n in names:
            r = s["results"][n]
            cells = [f"{r['scores'][t]['score']:.3f}" + (f" ± {r['scores'][t]['std']:.3f}"
                                                         if r["scores"][t]["std"] is not None else "") for t in tasks]
            opts = ", ".join(f"{k}={v}" for k, v in r["run"].get("options") or []) or "defaults"
            out.append(f"| {'+'.join(r['run']['objectives'])} | {r['run']['mask_ratio']:g} | "
                       f"{r['run']['lambda_cls']:g} | " + (f"{opts} | " if with_options else "")
                       + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_ablation(s: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tables = list(s["tables"].items())
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.6), squeeze=False)
    for ax, (table, names) in zip(axes[0], tables):
        tasks = list(s["results"][names[0]]["scores"])
        x = range(len(names))
        for j, t in enumerate(tasks):
            ax.bar([i + 0.4 * j for i in x], [s["results"][n]["scores"][t]["score"] for n in names], 0.4, label=t)
        ax.set_xticks([i + 0.2 for i in x], names, rotation=30, ha="right", fontsize=7)
        ax.set_title(_TITLES[table], fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
