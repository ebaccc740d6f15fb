"""Running as a cluster job: a real SIGUSR1 / SIGTERM stops pretraining after the update in progress
with a checkpoint and exit code 75 (requeue), and `--resume` continues with exactly the losses of an
uninterrupted run; TensorBoard events only when asked for, and a clear error without the package."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cache_tools.errors import ConfigError
from tests.stores import TINY_PRETRAIN, write_clips, write_targets
from train.pretrain.config import load_pretrain_config
from train.pretrain.run import run_pretrain
from train.model.checkpoint import load_checkpoint
from train.stop_signal import EXIT_REQUEUE

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ["batch_size=4", "max_steps=12", "ckpt_every=100", "blr=0.064", "num_workers=1"]

# the child: the same run, each update slowed down so that the signal lands mid-run
CHILD = """
import sys, time, torch
import train.pretrain.run as run
from train.pretrain.config import load_pretrain_config
torch.set_num_threads(1)
slow = run.micro_step
def micro_step(*a, **k):
    time.sleep(0.25)
    return slow(*a, **k)
run.micro_step = micro_step
cfg = load_pretrain_config("supmam-clap", sys.argv[2:])
run.run_pretrain(cfg, resume=sys.argv[1] == "resume")
"""


def _overrides(d: Path, run_dir: Path) -> list[str]:
    return [f"clips={d / 'c.h5'}", f"targets={d / 't.zarr'}", f"run_dir={run_dir}", "name=r", *TINY_PRETRAIN, *EXTRA]


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    write_targets(d / "t.zarr", write_clips(d / "c.h5", 8))
    return d


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_signal_stops_after_the_update_and_resume_continues_exactly(stores, tmp_path, sig):
    torch.set_num_threads(1)
    run_pretrain(load_pretrain_config("supmam-clap", _overrides(stores, tmp_path / "whole")))
    whole = _losses(tmp_path / "whole" / "r")
    args = [sys.executable, "-c", CHILD, "fresh", *_overrides(stores, tmp_path / "cut")]
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "cut" / "r" / "log.jsonl"
    t0 = time.time()
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.time() - t0 < 120:
        time.sleep(0.05)
    child.send_signal(sig)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == EXIT_REQUEUE, out
    cut = _losses(tmp_path / "cut" / "r")
    assert 2 <= len(cut) < 12 and f"{sig.name} received: stopped after update {len(cut)}" in out
    state = torch.load(tmp_path / "cut" / "r" / "checkpoint.pt", weights_only=False)
    assert state["step"] == len(cut)                                     # the checkpoint of the last update
    assert json.loads((tmp_path / "cut" / "r" / "stopped.json").read_text()) == {"signal": sig.name, "step": len(cut)}
    resumed = subprocess.run([sys.executable, "-c", CHILD, "resume", *_overrides(stores, tmp_path / "cut")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (tmp_path / "cut" / "r" / "stopped.json").exists()
    assert _losses(tmp_path / "cut" / "r") == whole                      # exactly the uninterrupted run's


def test_tensorboard_off_writes_no_events_and_on_needs_the_package(stores, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    short = ["max_steps=2"]
    run_pretrain(load_pretrain_config("supmam-clap", _overrides(stores, tmp_path / "off") + short))
    assert (tmp_path / "off" / "r" / "log.jsonl").exists()
    assert not list((tmp_path / "off").rglob("events.out.tfevents*"))   # off by default: log.jsonl only
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        run_pretrain(load_pretrain_config("supmam-clap", _overrides(stores, tmp_path / "on") + short +
                                          ["tensorboard=true"]))
        assert list((tmp_path / "on" / "r" / "tb").glob("events.out.tfevents*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # as where it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'supmam-clap\[tensorboard\]'"):
        run_pretrain(load_pretrain_config("supmam-clap", _overrides(stores, tmp_path / "none") + short +
                                          ["tensorboard=true"]))


# fine-tuning as a cluster job: the child signals its own process group (main process and DataLoader
# workers, as `scancel --signal` does) right after update `at`, each update slowed so the stop is seen
FINETUNE_CHILD = """
import os, runpy, signal, sys, time
import train.finetune.engine as engine
due, at, sig = engine.RunLog.due, int(sys.argv[1]), getattr(signal, sys.argv[2])
def slow_due(self, step):
    if step == at:
        os.killpg(os.getpgid(0), sig)
    time.sleep(0.05)
    return due(self, step)
engine.RunLog.due = slow_due
sys.argv = ["supmam", *sys.argv[3:]]
runpy.run_module("pipeline.app.cli", run_name="__main__")
"""


def _in_group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


@pytest.mark.parametrize("sig, at, workers", [(signal.SIGUSR1, 8, 1), (signal.SIGTERM, 9, 0), (signal.SIGTERM, 12, 0)],
                         ids=["SIGUSR1-mid-epoch-workers", "SIGTERM-mid-epoch", "SIGTERM-epoch-end"])
def test_finetune_stops_on_a_signal_and_resume_continues_exactly(tmp_path, sig, at, workers):
    from tests.stores import spc_wave_stores
    from tests.test_finetune_resume import cli_args, losses, metrics
    from pipeline.app.cli import app
    from typer.testing import CliRunner
    torch.set_num_threads(1)
    spc_wave_stores(tmp_path, "spc2", 4, per_class=(6, 2, 2))            # 24 clips: 6 updates an epoch at batch 4
    extra = ["epochs=4", "batch_size=4", f"num_workers={workers}"]
    r = CliRunner().invoke(app, cli_args(tmp_path, "whole", *extra))
    assert r.exit_code == 0, r.output
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", FINETUNE_CHILD, str(at), sig.name, *cli_args(tmp_path, "cut", *extra)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    out, _ = child.communicate(timeout=300)     # the pipe closes once every process of the group has let go
    assert child.returncode == EXIT_REQUEUE, out
    assert f"{sig.name} received: stopped after update {at}" in out
    cut = tmp_path / "runs" / "cut"
    assert json.loads((cut / "stopped.json").read_text())["step"] == at
    assert load_checkpoint(cut / "last.pt")["step"] == at and not (cut / "metrics.json").exists()
    assert _in_group(child.pid) == []                                    # no DataLoader worker left behind
    r = CliRunner().invoke(app, cli_args(tmp_path, "cut", *extra) + ["--resume"])
    assert r.exit_code == 0, r.output
    assert not (cut / "stopped.json").exists()
    assert losses(cut) == losses(tmp_path / "runs" / "whole")            # every update, exactly
    assert metrics(cut) == metrics(tmp_path / "runs" / "whole")


def test_finetune_under_ddp_stops_where_the_ranks_agree_and_resumes_exactly(tmp_path, torchrun):
    """torchrun, 2 ranks: only rank 1 gets SIGUSR1 (after update 3); the ranks compare flags every 10
    updates, so both stop after update 10, mid-epoch, and `--resume` gives the uninterrupted run."""
    from tests.stores import spc_stores
    from tests.test_finetune_resume import TINY, losses, metrics
    spc_stores(tmp_path, "spc2", 3, per_class=(16, 1, 1))                # 48 clips: 12 updates an epoch
    ov = [*TINY, "batch_size=4", "epochs=2", "mask_t_prob=0.2", f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}",
          "init=none", "device=cpu"]
    code = ("import os, signal\nimport train.finetune.engine as engine\n"
            "from train.finetune.config import load_finetune_config\nfrom train.finetune.run import run_finetune\n"
            "due = engine.RunLog.due\n"
            "def signal_rank_1(self, step):\n"
            "    if step == 3 and os.environ['RANK'] == '1' and NAME == 'cut' and not RESUME:\n"
            "        os.kill(os.getpid(), signal.SIGUSR1)\n"
            "    return due(self, step)\n"
            "engine.RunLog.due = signal_rank_1\n"
            "run_finetune(load_finetune_config('spc2-mini', OV + [f'name={NAME}'], task='spc2'), resume=RESUME)\n")
    for name, resume in (("whole", False), ("cut", False), ("cut", True)):
        r = torchrun(f"NAME, RESUME, OV = {name!r}, {resume}, {ov!r}\n" + code)
        cut = tmp_path / "runs" / "cut"
        if name == "cut" and not resume:
            assert r.returncode != 0, "the stopped ranks exit with 75, which torchrun reports as a failure"
            assert json.loads((cut / "stopped.json").read_text())["step"] == 10
            assert load_checkpoint(cut / "last.pt")["step"] == 10 and load_checkpoint(cut / "last.pt")["epoch"] == 0
            assert "SIGUSR1 received: stopped after update 10" in r.stdout + r.stderr
        else:
            assert r.returncode == 0, r.stderr[-3000:]
    whole = tmp_path / "runs" / "whole"
    assert losses(cut) == losses(whole) and metrics(cut) == metrics(whole)
