"""No code from checkpoints: every loader reads weights only; a pickle payload never runs.

The payload is harmless: unpickled in full it would create (open for writing) a marker file.
Each entry point (load_checkpoint: resume and evaluate; load_encoder: finetune --init with ours or
AudioMAE's files; the CLAP teacher) must refuse it, name the file and the type, and leave no marker.
"""
from __future__ import annotations

import argparse
import os
import re

import numpy as np
import pytest
import torch

from cache_tools.errors import SupmamError, CheckpointError, StoreError
from cache_tools.safe_load import AUDIOMAE, LAION_CLAP, OURS, safe_torch_load
from train.model.checkpoint import load_checkpoint, load_encoder, save_checkpoint

# pickle names builtins.open by its __module__: io.open on Python 3.11, _io.open on 3.12
OPEN = f"{open.__module__}.{open.__name__}"
REFUSED = f"holds {OPEN}, which is not on the allow-list; not loading it"


class Payload:
    """Unpickling this calls open(marker, "w"): the marker appears iff the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path, marker, extra: dict | None = None):
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Payload(marker), **(extra or {})}, path)
    return path


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "marker"
    plant(tmp_path / "ck.pt", marker)
    torch.load(tmp_path / "ck.pt", weights_only=False)      # what the old fallback did
    assert marker.exists()


def test_load_checkpoint_refuses_payload_resume_and_evaluate(tmp_path):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    ck = plant(run / "checkpoint.pt", marker, {"kind": "pretrain", "step": 3})   # pretrain --resume reads this
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ck)
    assert str(err.value) == f"{ck}: {REFUSED}" and isinstance(err.value, SupmamError)
    from train.finetune.evaluate import evaluate_checkpoint                              # evaluate --ckpt
    with pytest.raises(CheckpointError, match=re.escape(f"{OPEN}, which is not on the allow-list")):
        evaluate_checkpoint(ck)
    assert not marker.exists()


def test_load_encoder_refuses_payload_in_ours_and_audiomae_files(tmp_path):
    marker = tmp_path / "marker"
    ours = plant(tmp_path / "checkpoint-final.pt", marker, {"kind": "finetune"})
    amae = plant(tmp_path / "pretrained.pth", marker, {"args": argparse.Namespace(model="mae_vit_base_patch16"),
                                                      "epoch": 32})
    for path in (ours, amae):                                                    # finetune --init FILE / latest
        with pytest.raises(CheckpointError) as err:
            load_encoder(path)
        assert str(path) in str(err.value) and OPEN in str(err.value) and "allow-list" in str(err.value)
    assert not marker.exists()


def test_teacher_refuses_payload(tmp_path):
    from pipeline.teacher import ClapTeacher, load_audio_state_dict
    marker = tmp_path / "marker"
    ck = plant(tmp_path / "630k-audioset-best.pt", marker, {"epoch": 1, "name": "x"})   # targets --clap-ckpt
    with pytest.raises(CheckpointError, match=re.escape(f"{ck}: {REFUSED}")):
        load_audio_state_dict(ck)
    with pytest.raises(CheckpointError, match=re.escape(OPEN)):
        ClapTeacher.from_checkpoint(ck)
    assert not marker.exists()


def test_allow_lists_admit_what_real_files_hold(tmp_path):
    """Ours: a pretraining checkpoint as train/pretrain/run.py writes it (numpy RNG state, optimizer,
    scheduler, scaler); AudioMAE's: an argparse.Namespace; laion-clap's: an optimizer whose lr is a
    numpy float64 (its cosine_lr). Each loads through its loader; the lists do not stand in for one another."""
    from train.lr_sched import build_scheduler
    from train.rng import rng_state
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = build_scheduler(opt, 10, 2, 0.0)
    ours = save_checkpoint(tmp_path / "checkpoint.pt", {
        "kind": "pretrain", "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(), "rng": rng_state(), "step": 4})
    state = load_checkpoint(ours)
    np.random.set_state(state["rng"]["numpy"])                                   # usable as saved
    assert state["step"] == 4
    amae = tmp_path / "pretrained.pth"
    torch.save({"model": net.state_dict(), "args": argparse.Namespace(lr=None, blr=1e-3, mask_2d=True)}, amae)
    assert load_checkpoint(amae)["args"].blr == 1e-3
    clap_opt = opt.state_dict()
    clap_opt["param_groups"][0]["lr"] = 0.5 * (1 + np.cos(np.pi * 0.3)) * 1e-4     # numpy.float64
    clap = tmp_path / "clap.pt"
    torch.save({"epoch": 45, "name": "x", "state_dict": {"module.audio_branch.w": torch.zeros(1)},
                "optimizer": clap_opt}, clap)
    assert safe_torch_load(clap, allow=LAION_CLAP)["epoch"] == 45
    with pytest.raises(StoreError, match="numpy.core.multiarray.scalar, which is not on the allow-list"):
        safe_torch_load(clap, allow=OURS + AUDIOMAE)
    with pytest.raises(StoreError, match="argparse.Namespace, which is not on the allow-list"):
        safe_torch_load(amae, allow=LAION_CLAP)


@pytest.mark.parametrize("kind", ["empty", "text", "random", "truncated", "random-pickle"])
def test_broken_files_give_one_line_naming_the_file(tmp_path, kind):
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.randn(4096)}}, good)
    raw = good.read_bytes()
    data = {"empty": b"", "text": b"epoch: 3\nlr: 0.1\n", "random": np.random.default_rng(0).bytes(4096),
            "truncated": raw[: len(raw) // 2], "random-pickle": b"\x80\x02" + np.random.default_rng(1).bytes(500)}[kind]
    bad = tmp_path / f"{kind}.pt"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        load_encoder(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    want = {"empty": "empty file", "text": "a text file", "random": "not a torch checkpoint",
            "truncated": "truncated or damaged", "random-pickle": "not a loadable torch checkpoint"}[kind]
    assert want in msg


def test_no_full_unpickle_anywhere():
    """The source holds no weights_only=False load (only this module's own test does it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hits = []
    for sub in ("cache_tools", "pipeline", "train", "bench"):
        for dirpath, _, files in os.walk(os.path.join(root, sub)):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                    if "weights_only=False" in text or "pickle.load(" in text:
                        hits.append(os.path.join(dirpath, name))
    assert hits == []
