"""`--teacher online`: stage one's CLAP teacher as the callable pretraining runs inside each step.

train/ never imports the teacher; the command builds it here and hands train.pretrain.run an
OnlineTeacher whose targets are computed as `supmam targets` computes them, from the store's 16 kHz
waves upsampled to 48 kHz: the source files are out of reach inside a step, so it hears what a
`--teacher-input clipstore` store's teacher hears, not the 8-14 kHz a default store's also hears
(docs/fidelity.md, "Stage one: the teacher's input"). Clips shorter than the clip length differ:
it repeat-pads the stored zero-padded wave, a clipstore store the real clip.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.targets import teacher_targets
from pipeline.teacher import ClapTeacher


def online_teacher(clap_ckpt: Path | str | None, clap_model: str = "HTSAT-tiny", seed: int = 0,
                   device: str = "auto"):
    """A train.pretrain.run.OnlineTeacher: fn(wave16k [B, S]) -> [B, Tt, Ft, D] float16 on `device`,
    with the teacher's name, grid (Tt, Ft), dim and mel bank. Built as `supmam targets` builds it."""
    from train.pretrain.run import OnlineTeacher

    from train.distributed import resolve_device

    dev = str(resolve_device(device))
    t = ClapTeacher.from_checkpoint(clap_ckpt, model=clap_model, fusion=False, seed=seed, device=dev,
                                    amp_dtype="fp16" if dev.startswith("cuda") else None)
    d = t.describe()
    return OnlineTeacher(fn=lambda wave16k: teacher_targets(t, wave16k, dev),
                         name=f"{d['teacher']} ({d['checkpoint_sha256']})", grid=tuple(t.grid),
                         dim=int(t.dim), teacher_mel=dict(t.mel))
