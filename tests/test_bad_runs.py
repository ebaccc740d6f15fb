"""What the fault-injection audit (issue 15) did to training runs, done again: NaN / inf in the
stores (item 4), a rerun over a finished run (5), a half-written log line (7), out-of-range config
values, a missing GPU, broken --init files, zeroed HDF5 metadata and a damaged shard met by a
DataLoader worker (9). Each must end in one line naming the file and the problem (or be refused)."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import typing

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache_tools.clips.store import ClipStore
from cache_tools.errors import ConfigError, StoreError
from cache_tools.targets.store import shard_file
from pipeline.app.cli import app
from tests.stores import (DIM, GRID, TINY_PRETRAIN, spc_stores, write_clip_store, write_clips, write_target_store,
                          write_targets)
from train.config import RunConfig
from train.data import PretrainDataset
from train.finetune.config import FinetuneConfig, FinetuneModel, load_finetune_config
from train.finetune.data import ClipDataset
from train.model.models_mam import MAMConfig
from train.pretrain.config import PretrainConfig, load_pretrain_config
from train.pretrain.run import run_pretrain
from train.run_folder import truncate_log

REC = ["model.target_head_init=mae", "batch_size=4", "max_steps=2", "ckpt_every=1000"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    clips = write_clips(d / "train.h5", 8)
    return {"dir": d, "clips": clips, "targets": write_targets(d / "train.targets.zarr", clips)}


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def pretrain_args(stores, runs, preset="audiomae", *extra) -> list[str]:
    return ["pretrain", "--preset", preset, "--clips", str(stores["clips"]), "--targets", str(stores["targets"]),
            "--runs", str(runs), "--name", "run", *TINY_PRETRAIN, *REC, *extra]


def one_line_error(res, starts: str) -> str:
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {starts}"), err
    assert "Traceback" not in res.output
    return err


# ------------------------------------------------------------------ item 4: NaN / inf in the inputs

def test_non_finite_clips_and_targets_are_named_by_store_index_and_id(stores, tmp_path):
    fb = np.full((6, 64, 128), -5.0, np.float16)                             # [N,T,128]
    fb[4, 10, 3], fb[2, 0, 0] = np.nan, np.inf
    bad = tmp_path / "nan.h5"
    write_clip_store(bad, fb, np.zeros((6, 160), np.int16), np.arange(6) % 2, ["a", "b"],
                     ids=[f"id{i}" for i in range(6)])
    with pytest.raises(StoreError) as err:
        PretrainDataset(bad)[4]
    assert str(err.value) == (f"{bad}: clip 4 (id4): 1 non-finite values (NaN / inf) in its fbank; "
                              "rebuild the store or drop that clip")
    with pytest.raises(StoreError, match=rf"^{bad}: clip 2 \(id2\): 1 non-finite values \(NaN / inf\) in its fbank"):
        ClipDataset(ClipStore(bad))[2]
    assert torch.isfinite(PretrainDataset(bad)[1]["fbank"]).all()
    x = np.full((8, *GRID, DIM), 0.5, np.float16)                           # [N,Tt,Ft,D]
    x[6, 1, 0, 5] = np.inf
    ident = {"teacher": "t", "checkpoint": None, "checkpoint_sha256": "x", "teacher_mel": {},
             "clip_fingerprint": ClipStore(stores["clips"]).fingerprint}
    targets = write_target_store(tmp_path / "inf.zarr", x, ident)
    with pytest.raises(StoreError, match=rf"^{targets}: clip 6 \(clip006\): 1 non-finite values \(NaN / inf\) "
                                         "in its targets"):
        PretrainDataset(stores["clips"], targets)[6]


def test_pretrain_on_a_nan_clip_stops_with_one_line_and_no_checkpoint_named(tmp_path):
    src = ClipStore(write_clips(tmp_path / "c.h5", 8))
    fb = np.stack([src.fbank(i) for i in range(8)])
    fb[3, 5, 5] = np.nan
    bad = tmp_path / "bad.h5"
    write_clip_store(bad, fb, np.stack([src.wave(i) for i in range(8)]), np.asarray(src.labels), src.class_names,
                     ids=src.clip_ids, norm_mean=-4.0, norm_std=2.0)
    res = CliRunner().invoke(app, pretrain_args({"clips": bad, "targets": tmp_path / "none"}, tmp_path / "runs"))
    err = one_line_error(res, f"{bad}: clip 3 (clip003): 1 non-finite values (NaN / inf) in its fbank")
    assert "checkpoint" not in err and not list((tmp_path / "runs").rglob("checkpoint*.pt"))


def test_a_diverging_loss_does_not_name_a_checkpoint_that_does_not_exist(stores, tmp_path):
    cfg = load_pretrain_config("audiomae", [f"clips={stores['clips']}", f"run_dir={tmp_path}", "name=div",
                                            *TINY_PRETRAIN, *REC, "max_steps=6", "blr=1e30"])
    with pytest.raises(FloatingPointError) as err:
        run_pretrain(cfg)
    ckpt = tmp_path / "div" / "checkpoint.pt"
    assert not ckpt.exists() and str(ckpt) not in str(err.value)
    assert "No checkpoint was written yet (the first is due at update 6)" in str(err.value)
    res = CliRunner().invoke(app, pretrain_args(stores, tmp_path / "runs", "audiomae", "max_steps=6", "blr=1e30"))
    assert "Lower blr" in one_line_error(res, "[pretrain] run: the loss became non-finite")   # no traceback


# ------------------------------------------------------------------ item 5: a rerun without --resume

def test_rerun_without_resume_refuses_to_overwrite_a_finished_run(stores, tmp_path):
    runner, args = CliRunner(), pretrain_args(stores, tmp_path / "runs")
    assert runner.invoke(app, args).exit_code == 0
    run = tmp_path / "runs" / "run"
    kept = {p.name: p.read_bytes() for p in (run / "checkpoint-final.pt", run / "checkpoint.pt", run / "log.jsonl",
                                             tmp_path / "runs" / "latest-pretrain")}
    one_line_error(runner.invoke(app, args), f"{run}: holds checkpoint-final.pt from an earlier run; not overwriting")
    assert {p: (run / p if p != "latest-pretrain" else tmp_path / "runs" / p).read_bytes() for p in kept} == kept
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0        # --resume continues (nothing left to do)


def test_finetune_rerun_refuses_to_overwrite_unless_told(tmp_path):
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    args = ["finetune", "--task", "spc2", "--init", "none", "--stores", str(tmp_path), "--runs", str(tmp_path / "runs"),
            "--name", "ft", "model.encoder=tiny", "model.encoder_depth=1", "batch_size=4", "epochs=1", "num_workers=0"]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    first = (tmp_path / "runs" / "ft" / "metrics.json").read_bytes()
    one_line_error(runner.invoke(app, args), f"{tmp_path / 'runs' / 'ft'}: holds checkpoint")
    assert (tmp_path / "runs" / "ft" / "metrics.json").read_bytes() == first
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


# ------------------------------------------------------------------ item 7: a half-written log line

def test_a_half_written_last_log_line_is_dropped_on_resume(stores, tmp_path):
    cfg = load_pretrain_config("audiomae", [f"clips={stores['clips']}", f"run_dir={tmp_path}", "name=r",
                                            *TINY_PRETRAIN, *REC, "max_steps=4", "ckpt_every=2"])
    run_pretrain(cfg, stop_after=2)
    log = tmp_path / "r" / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "epoch": 1.5, "lr": 0.001, "lo')                # killed mid-write
    run_pretrain(cfg, resume=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')            # damage inside the log: named
    with pytest.raises(ConfigError, match=rf"^{log}:2: not a JSON line"):
        truncate_log(log, 3)


# ------------------------------------------------------------------ item 9: config values, device, files

@pytest.mark.parametrize("override, message", [
    ("model.mask_ratio=1.0", "mask_ratio must be in [0, 1), got 1.0"), ("batch_size=0", "batch_size must be >= 1"),
    ("accum_steps=0", "accum_steps must be >= 1"), ("log_every=0", "log_every must be >= 1"),
    ("ckpt_every=0", "ckpt_every must be >= 1"), ("epochs=0", "epochs must be >= 1"), ("blr=-1", "blr must be > 0"),
    ("max_steps=-5", "max_steps must be >= 0"), ("warmup_steps=-1", "warmup_steps must be >= 0"),
    ("warmup_epochs=-2", "warmup_epochs must be >= 0"), ("grad_clip=-1", "grad_clip must be >= 0"),
    ("model.lambda_cls=-1", "lambda_cls must be >= 0"), ("lr=-1", "lr is derived: set blr"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N")])
def test_pretrain_config_values_out_of_range_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_pretrain_config("supmam-clap-mini", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size must be >= 1, got 0"), ("epochs=0", "epochs must be >= 1"),
    ("blr=0", "blr must be > 0"), ("mixup=1.5", "mixup must be in [0, 1]"),
    ("label_smoothing=1", "label_smoothing must be in [0, 1)"), ("model.drop_path=1", "drop_path must be in [0, 1)"),
    ("eval_every=0", "eval_every must be >= 1"), ("layer_decay=0", "layer_decay must be in (0, 1]")])
def test_finetune_config_values_out_of_range_are_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_finetune_config("spc2-mini", [override, "init=none"], task="spc2")


def test_every_numeric_config_field_has_a_range():
    """A new numeric field without a row in its class's RANGES table fails here."""
    for cls in (RunConfig, PretrainConfig, FinetuneConfig, FinetuneModel, MAMConfig):
        table = {}
        for klass in reversed(cls.__mro__):
            table.update(vars(klass).get("RANGES", {}))
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            leaves = {a for a in typing.get_args(tp)} | {tp}
            if leaves & {int, float} or any(int in typing.get_args(a) or float in typing.get_args(a) for a in leaves):
                assert f.name in table, f"{cls.__name__}.{f.name} has no range"


def test_cuda_asked_for_without_a_gpu_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(app, ["pretrain", "--device", "cuda", "--runs", str(tmp_path)])
    one_line_error(res, "device 'cuda': CUDA is not available here")
    from train.distributed import resolve_device
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("kind", ["empty", "text", "random", "truncated"])
def test_finetune_init_that_is_not_a_checkpoint_is_one_line(tmp_path, kind):
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.randn(4096)}}, good)
    raw = good.read_bytes()
    bad = tmp_path / f"{kind}.pt"
    bad.write_bytes({"empty": b"", "text": b"epoch: 3\nlr: 0.1\n", "random": np.random.default_rng(0).bytes(4096),
                     "truncated": raw[: len(raw) // 2]}[kind])
    res = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--init", str(bad), "--stores", str(tmp_path),
                                   "--runs", str(tmp_path / "runs"), "num_workers=0"])
    one_line_error(res, f"{bad}: ")


def test_zeroed_hdf5_metadata_is_one_line(tmp_path):
    src = write_clips(tmp_path / "src.h5", 8)
    data = src.read_bytes()
    regions = [data.find(sig) for sig in (b"HEAP", b"SNOD", b"TREE")] + [96, 128]   # heaps, B-tree, root group
    assert all(r > 0 for r in regions)
    runner = CliRunner()
    for off in regions:
        p = tmp_path / f"z{off}.h5"
        p.write_bytes(data[:off] + b"\0" * 128 + data[off + 128:])
        for cmd in ("inspect", "verify"):
            one_line_error(runner.invoke(app, ["store", cmd, str(p)]), f"{p}: ")
        with pytest.raises(StoreError, match=f"^{p}: "):
            ds = PretrainDataset(p)
            [ds[i] for i in range(len(ds))]


def test_a_clip_store_keeps_no_text_in_the_global_heap(tmp_path):
    """libhdf5 loops forever on a zeroed global-heap collection (variable-length strings), so a store
    writes its text as fixed-length bytes: there is no heap to damage. Older stores still read."""
    import h5py
    src = write_clips(tmp_path / "src.h5", 8)
    assert b"GCOL" not in src.read_bytes()                         # no global heap collection at all
    s = ClipStore(src)
    old = tmp_path / "old.h5"                                      # as stores were written before: vlen text
    shutil.copy(src, old)
    with h5py.File(old, "a") as f:
        del f["clip_id"]
        f.create_dataset("clip_id", data=np.array(s.clip_ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        for k in ("dataset", "split", "fingerprint"):
            f.attrs[k] = str(s.attrs[k])
    assert b"GCOL" in old.read_bytes()
    o = ClipStore(old)
    assert o.clip_ids == s.clip_ids and o.fingerprint == s.fingerprint and o.attrs == s.attrs


def test_a_dataloader_worker_hitting_a_damaged_shard_is_one_line(stores, tmp_path):
    targets = tmp_path / "t.zarr"
    shutil.copytree(stores["targets"], targets)
    f = shard_file(targets, 1)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3:len(raw) // 3 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 3:len(raw) // 3 + 8])
    f.write_bytes(bytes(raw))
    args = pretrain_args({"clips": stores["clips"], "targets": targets}, tmp_path / "runs", "mam-clap", "num_workers=1")
    one_line_error(CliRunner().invoke(app, args), f"{f}: shard 1 is corrupt")
