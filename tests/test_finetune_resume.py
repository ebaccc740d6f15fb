"""`supmam finetune --resume` after kill -9 reproduces the uninterrupted run; metrics.json and results.md
report the last epoch and (with a validation split) the best one, and name the headline."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.stores import class_store, spc_stores, spc_wave_stores
from train.model.checkpoint import load_checkpoint
from train.finetune.config import load_finetune_config
from train.finetune.run import run_finetune

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.encoder=tiny", "model.encoder_depth=1", "batch_size=8", "eval_batch_size=16", "num_workers=0",
        "log_every=1"]
# every source of randomness on: waveform mixup and gain, fbank masks, noise, token masks, drop-path
AUGMENTED = ["mixup=0.5", "roll_mag_aug=true", "freqm=16", "timem=16", "noise=true", "mask_t_prob=0.2",
             "mask_f_prob=0.2", "model.drop_path=0.1", "blr=0.064"]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def cli_args(root: Path, name: str, *extra: str) -> list[str]:
    return ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "none", "--stores", str(root),
            "--runs", str(root / "runs"), "--name", name, "--device", "cpu", *TINY, *AUGMENTED, *extra]


def metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("train_seconds")                                  # a timing, not a result
    return m


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def test_kill_9_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    spc_wave_stores(tmp_path, "spc2", 4, per_class=(6, 2, 2))            # 24 training clips with real waves
    epochs = "epochs=8"
    from pipeline.app.cli import app
    r = CliRunner().invoke(app, cli_args(tmp_path, "a", epochs))
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "b"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", *cli_args(tmp_path, "b", epochs)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _evals(run) < 2:                                                # killed after its 2nd evaluation
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline, "fine-tuning made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "metrics.json").exists()
    done = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= done < 8
    r = CliRunner().invoke(app, cli_args(tmp_path, "b", epochs) + ["--resume"])
    assert r.exit_code == 0, r.output
    a, b = tmp_path / "runs" / "a", run
    assert metrics(a) == metrics(b)
    assert losses(a) == losses(b) and len(losses(a)) == 8 * 3
    assert (a / "eval.jsonl").read_text() == (b / "eval.jsonl").read_text()
    wa = load_checkpoint(a / "checkpoint-final.pt")["model"]
    wb = load_checkpoint(b / "checkpoint-final.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _evals(run: Path) -> int:
    path = run / "eval.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_cross_validation_resumes_per_fold(tmp_path):
    labels = np.tile(np.arange(3), 6)
    class_store(tmp_path / "esc50.h5", labels, ["dog", "rain", "bell"], folds=np.repeat([1, 2, 3], 6).astype(np.int8),
                dataset="esc50")
    ov = [f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}", "init=none", *TINY, "epochs=2", "folds=[1,2,3]",
          "mask_t_prob=0.2", "model.drop_path=0.1"]
    full = run_finetune(load_finetune_config("esc50-mini", ov + ["name=a"], task="esc50"))
    run_finetune(load_finetune_config("esc50-mini", ov + ["name=b"], task="esc50"))
    b = tmp_path / "runs" / "b"
    for f in ("metrics.json", "fold3/last.pt", "fold3/checkpoint-final.pt"):   # as if killed in fold 3's epoch 1
        (b / f).unlink()
    (b / "fold2" / "log.jsonl").write_text("")                                 # fold 2 finished: not retrained
    resumed = run_finetune(load_finetune_config("esc50-mini", ov + ["name=b"], task="esc50"), resume=True)
    assert (b / "fold2" / "log.jsonl").read_text() == ""
    full.pop("train_seconds", None), resumed.pop("train_seconds", None)
    assert json.dumps(full) == json.dumps(resumed) and full["headline"] == "last"
    assert [f["epoch"] for f in full["folds"]] == [2, 2, 2]


def test_best_and_last_epoch_are_both_reported(tmp_path):
    spc_stores(tmp_path, "spc2", 4, per_class=(6, 3, 3))
    ov = [f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}", "init=none", *TINY, "model.encoder_depth=2",
          "epochs=6", "blr=0.064", "name=s"]
    m = run_finetune(load_finetune_config("spc2-mini", ov, task="spc2"))
    on_disk = json.loads((tmp_path / "runs" / "s" / "metrics.json").read_text())
    assert on_disk["headline"] == "best" and on_disk["last"]["epoch"] == 6
    best, last = on_disk["best"], on_disk["last"]
    assert best["valid"]["accuracy"] == max(h["valid_accuracy"] for h in on_disk["history"])
    tied = [h["epoch"] for h in on_disk["history"] if h["valid_accuracy"] == best["valid"]["accuracy"]]
    assert best["epoch"] == min(tied)                                   # the first epoch reaching the best
    assert last["valid"]["accuracy"] == on_disk["history"][-1]["valid_accuracy"]
    assert on_disk["score"] == best["test"]["accuracy"] == m["score"] and on_disk["test"] == best["test"]
    ck = load_checkpoint(tmp_path / "runs" / "s" / "checkpoint.pt")
    assert ck["epoch"] == best["epoch"]                                 # checkpoint.pt: the best model
    md = (tmp_path / "runs" / "s" / "results.md").read_text()
    assert "Headline: the model of the best validation epoch" in md
    assert f"| best (headline) | {best['epoch']} |" in md and "| last | 6 |" in md
    rng = np.random.default_rng(0)
    for name, n in (("audioset_balanced_train.h5", 12), ("audioset_eval.h5", 8)):
        lab = (rng.random((n, 3)) < 0.4).astype(np.uint8)
        lab[np.arange(n), np.arange(n) % 3] = 1
        class_store(tmp_path / name, lab, ["a", "b", "c"], dataset="audioset")
    ov = [f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}", "init=none", *TINY, "epochs=2", "mixup=0", "name=as"]
    m = run_finetune(load_finetune_config("as20k-mini", ov, task="as20k"))
    assert m["headline"] == "last" and "best" not in m and m["last"]["epoch"] == 2
    assert m["score"] == m["last"]["test"]["mAP"]
    md = (tmp_path / "runs" / "as" / "results.md").read_text()
    assert "Headline: the last epoch's model" in md and "no validation split" in md


def test_loader_with_workers_resumes_the_same_batches_and_leaves_the_rng_alone(tmp_path):
    """What a resume with DataLoader workers relies on: a fresh loader started at epoch e gives the
    batches a persistent one gives at e, and iterating it draws nothing from the training RNG."""
    from cache_tools.clips.store import ClipStore
    from torch.utils.data import DistributedSampler
    from train.finetune.augment import Augment, SeededSampler, TrainClips
    from train.finetune.engine import train_loader
    spc_wave_stores(tmp_path, "spc2", 2, per_class=(4, 1, 1))
    ds = TrainClips([ClipStore(tmp_path / "spc2_train.h5")], aug=Augment(mixup=0.5, roll_mag_aug=True, freqm=8,
                                                                           timem=8, noise=True))
    cfg = load_finetune_config("spc2-mini", ["init=none", "num_workers=2", "batch_size=4", "seed=3"])

    def loader():
        sampler = SeededSampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3), 3, 0)
        return sampler, train_loader(cfg, ds, sampler, 1)
    sampler, persistent = loader()
    rng = torch.get_rng_state()
    epochs = []
    for e in range(3):
        sampler.set_epoch(e)
        epochs.append(list(persistent))
    assert torch.equal(rng, torch.get_rng_state())                     # the training RNG stream is untouched
    sampler, fresh = loader()                                           # as a resumed run builds it
    sampler.set_epoch(2)
    resumed = list(fresh)
    assert len(resumed) == len(epochs[2]) == 2
    assert all(torch.equal(a, b) for ba, bb in zip(epochs[2], resumed) for a, b in zip(ba, bb))
    assert not torch.equal(epochs[1][0][0], epochs[2][0][0])
