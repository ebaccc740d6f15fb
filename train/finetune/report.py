"""Results of a fine-tuning run in runs/<name>/: metrics.json, results.md, PNG plots.

curves.png (training loss / lr per update, via train.plots.plot_curves; per fold for ESC-50),
eval.png (the selection metric per epoch) and, for single-label tasks, confusion.png labelled with
the class names; for multi-label tasks, class_ap.png (average precision per class).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.finetune.metrics import confusion, per_class_average_precision  # noqa: E402
from train.plots import plot_curves, read_log  # noqa: E402


def write_report(out: Path, metrics: dict, scores: np.ndarray | None = None,
                 targets: np.ndarray | None = None) -> dict:
    """Write metrics.json, results.md and the plots; returns {name: path} of what was written."""
    out = Path(out)
    written = {"metrics": out / "metrics.json", "results": out / "results.md"}
    written["metrics"].write_text(json.dumps(_jsonable(metrics), indent=2))
    written["results"].write_text(results_table(metrics))
    for log in sorted(out.glob("log.jsonl")) + sorted(out.glob("fold*/log.jsonl")):
        if log.stat().st_size:
            written[f"curves:{log.parent.name}"] = plot_curves(log, log.parent / "curves.png",
                                                               title=f"{metrics['task']} {log.parent.name}")
    evals = sorted(out.glob("eval.jsonl")) + sorted(out.glob("fold*/eval.jsonl"))
    if evals:
        written["eval"] = plot_eval(evals, out / "eval.png", metrics["metric"])
    if scores is not None and not metrics["multilabel"]:
        cm = confusion(scores, targets, metrics["num_classes"])
        written["confusion"] = plot_confusion(cm, metrics["class_names"], out / "confusion.png",
                                              f"{metrics['task']} ({metrics['metric']} {metrics['score']:.3f})")
    if scores is not None and metrics["multilabel"]:
        written["class_ap"] = plot_class_ap(per_class_average_precision(scores, targets), metrics["class_names"],
                                            out / "class_ap.png", f"{metrics['task']} (mAP {metrics['score']:.3f})")
    return written


def results_table(m: dict, title: str = "Fine-tuning") -> str:
    """A markdown summary under `# <title>: <task>`: the headline number and which model it is, the
    last and best-on-valid models side by side (SPC), or the per-fold rows (ESC-50)."""
    pct = 100.0
    lines = [f"# {title}: {m['task']}", "",
             f"preset `{m['preset']}`, " + (f"init `{m['init']}`" if "init" in m else f"checkpoint `{m['ckpt']}`"), "",
             f"**Headline: {HEADLINE.get(m.get('headline'), m.get('headline'))}** (selection: {m['selection']}"
             f"{', epoch ' + str(m['selected_epoch']) if 'selected_epoch' in m else ', each fold'}).", "",
             "| task | metric | score | clips | classes |", "|---|---|---|---|---|"]
    score = f"{pct * m['score']:.2f}"
    if "std" in m:
        score += f" ± {pct * m['std']:.2f}"
    lines.append(f"| {m['task']} | {m['metric']} (%) | {score} | {m['num_test_clips']} | {m['num_classes']} |")
    extra = {k: v for k, v in m["test"].items() if k != m["metric"] and not _nan(v)}
    if extra:
        lines += ["", "Also on the test set: " + ", ".join(f"{k} {pct * v:.2f}" for k, v in extra.items())]
    if "best" in m:
        metric = m["metric"]
        lines += ["", f"| model | epoch | valid {metric} (%) | test {metric} (%) |", "|---|---|---|---|"]
        for which in ("best", "last"):
            r = m[which]
            valid = r.get("valid", {}).get(metric)
            lines.append(f"| {which}{' (headline)' if m['headline'] == which else ''} | {r['epoch']} | "
                         f"{'-' if valid is None else f'{pct * valid:.2f}'} | {pct * r['test'][metric]:.2f} |")
    elif "folds" not in m:
        lines += ["", "This task has no validation split, so the last epoch is reported; selecting the best "
                      "epoch on the test set (AudioMAE's `max_mAP`) would overstate the score."]
    if "best_over_epochs" in m:
        b = m["best_over_epochs"]
        at = f" (epoch {b['epoch']})" if "epoch" in b else " (mean over folds of each fold's best)"
        lines += ["", f"What AudioMAE prints, beside the headline: the best test {m['metric']} over epochs, "
                      f"{pct * b['test'][m['metric']]:.2f}{at}; it selects on the test set."]
    if "folds" in m:
        lines += ["", "| fold | " + m["metric"] + " (%) | clips |", "|---|---|---|"]
        lines += [f"| {f['fold']} | {pct * f[m['metric']]:.2f} | {f['clips']} |" for f in m["folds"]]
    return "\n".join(lines) + "\n"


HEADLINE = {"best": "the model of the best validation epoch, scored on the test set",
            "last": "the last epoch's model, scored on the test set"}


def plot_eval(eval_logs: list[Path], png: Path, metric: str) -> Path:
    """The evaluated metric against the epoch, one line per log (fold)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for path in eval_logs:
        rows = [r for r in read_log(path) if not r.get("final")]
        keys = [k for k in (rows[0] if rows else {}) if k.endswith(f"_{metric}")]
        for k in keys:
            ax.plot([r["epoch"] for r in rows], [r[k] for r in rows], marker="o", ms=3,
                    label=f"{path.parent.name} {k}" if len(eval_logs) > 1 else k)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_confusion(cm: np.ndarray, class_names: list[str], png: Path, title: str) -> Path:
    """cm: [C_true, C_pred] counts -> a row-normalised heat map labelled with the class names."""
    C = cm.shape[0]
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)                  # [C, C] recall per row
    size = min(4 + 0.22 * C, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(C), class_names, rotation=90, fontsize=max(4, 9 - C // 12))
    ax.set_yticks(range(C), class_names, fontsize=max(4, 9 - C // 12))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if C <= 20:
        for i in range(C):
            for j in range(C):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_class_ap(ap: np.ndarray, class_names: list[str], png: Path, title: str) -> Path:
    """ap: [C] per-class average precision (NaN: no positive clip) -> horizontal bars, best first."""
    order = [c for c in np.argsort(-np.nan_to_num(ap, nan=-1.0)) if not np.isnan(ap[c])]
    shown = order if len(order) <= 60 else order[:30] + order[-30:]          # long lists: best and worst 30
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.2 * len(shown)))
    ax.barh(range(len(shown)), ap[shown], color="tab:blue")
    ax.set_yticks(range(len(shown)), [class_names[c] for c in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title(title + ("" if len(shown) == len(order) else f": best and worst 30 of {len(order)}"))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
