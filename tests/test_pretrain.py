"""Pretraining loop: presets' objectives learn, resume is exact, DDP (gloo) runs, online == cached
targets, mismatched stores and unknown config keys are refused. Tiny models, T=128, a few clips."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_tools import clip_store as cs
from cache_tools import target_store as tgs
from train.config import ConfigError
from train.data import StepBatchSampler, StoreMismatch, check_stores
from train.lr_sched import build_scheduler
from train.pretrain import OnlineTeacher, PretrainConfig, load_pretrain_config, main

ROOT = Path(__file__).resolve().parent.parent
T, SR, SECONDS, C = 128, 16000, 1.0, 3
GRID, DIM = (8, 2), 16                      # a small fake teacher grid (Tt, Ft) and token dim
TEACHER_MEL = {"sr": 48000, "n_mels": 64, "fmin": 50, "fmax": 14000, "window_seconds": 10.0, "htk": False}
TINY = ["model.encoder=tiny", "model.encoder_depth=1", f"model.target_length={T}", "model.decoder_depth=1",
        "model.decoder_dim=32", "model.decoder_heads=2", "model.cls_hidden=32",
        "num_workers=0", "device=cpu", "amp=off", "log_every=1", "warmup_steps=2", "min_lr=0"]


def fake_teacher(wave: torch.Tensor) -> torch.Tensor:
    """wave [B,S] float -> [B,Tt,Ft,D] float16: elementwise in fixed samples (exact on any batch)."""
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, wave.shape[1], (GRID[0] * GRID[1] * DIM,), generator=g)
    scale = torch.rand(GRID[0] * GRID[1] * DIM, generator=g) * 40 + 5
    out = torch.sin(wave[:, idx.to(wave.device)] * scale.to(wave.device))      # [B,Tt*Ft*D]
    return out.reshape(-1, *GRID, DIM).to(torch.float16)                      # [B,Tt,Ft,D]


def write_clips(path: Path, n: int, seed: int = 0, prefix: str = "clip") -> Path:
    """A clip store of n structured clips (class-dependent tones in the fbank and the wave)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % C
    t = np.arange(T)[:, None] / T
    f = np.arange(128)[None, :] / 128
    common = np.sin(2 * np.pi * (3 * t + 2 * f)) * 3 - 4                      # [T,128] shared structure
    fbank = np.stack([common + np.cos(2 * np.pi * (1 + c) * 5 * f) + rng.normal(0, .1, (T, 128))
                      for c in labels]).astype(np.float16)                     # [n,T,128]
    s = np.arange(int(SR * SECONDS)) / SR
    wave = np.stack([0.3 * np.sin(2 * np.pi * (200 * (1 + c)) * s) + rng.normal(0, .05, s.size)
                     for c in labels])
    wave = (np.clip(wave, -1, 1) * 32767).astype(np.int16)                    # [n,S]
    d = cs.open_parts(path, {"test": prefix, "n": n})
    cs.write_part(d, 0, [f"{prefix}{i:03d}" for i in range(n)], fbank, wave, labels.astype(np.int64), None, [])
    attrs = dict(dataset="spc2", split="train", multilabel=False, class_names=[f"c{i}" for i in range(C)],
                 class_ids=[f"c{i}" for i in range(C)], target_length=T,
                 feature_params={"num_mel_bins": 128, "frame_shift": 10}, norm_mean=-4.0, norm_std=2.0)
    cs.assemble(path, 1, attrs, {})
    return path


def write_targets(path: Path, clips_path: Path, teacher=fake_teacher) -> Path:
    """The fake teacher's targets for every clip of `clips_path`, as stage one writes them."""
    clips = cs.ClipStore(clips_path)
    waves = torch.from_numpy(np.stack([clips.wave(i) for i in range(len(clips))]).astype(np.float32) / 32768.0)
    ident = {"teacher": "fake-teacher", "checkpoint": None, "checkpoint_sha256": "untrained:seed=7",
             "teacher_mel": TEACHER_MEL, "clip_fingerprint": clips.fingerprint}
    tgs.init_store(path, len(clips), GRID, DIM, ident, clips_per_shard=4)
    w = tgs.ShardWriter(path)
    for k in range(w.num_shards):
        r = w.clips(k)
        w.write(k, teacher(waves[r.start:r.stop]).numpy())
    assert tgs.finalize(path)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    clips = write_clips(d / "train.h5", 8)
    return {"dir": d, "clips": clips, "targets": write_targets(d / "train.targets.zarr", clips)}


def cfg_for(preset: str, stores, run_dir: Path, *extra: str) -> PretrainConfig:
    return load_pretrain_config(preset, [f"clips={stores['clips']}", f"targets={stores['targets']}",
                                         f"run_dir={run_dir}", f"name={preset}", *TINY, *extra])


def losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["audiomae", "supmam", "mam-clap", "supmam-clap"])
def test_preset_objectives_learn(preset, stores, tmp_path):
    torch.set_num_threads(1)
    cfg = cfg_for(preset, stores, tmp_path, "batch_size=8", "max_steps=30", "lr=2e-3", "ckpt_every=1000")
    final = main(cfg)
    run = tmp_path / preset
    ls = losses(run)
    assert len(ls) == 30 and all(np.isfinite(ls))
    assert np.mean(ls[-5:]) < 0.9 * np.mean(ls[:3]), ls
    state = torch.load(final, weights_only=False)
    assert state["step"] == 30 and state["config"]["model"]["objectives"] == cfg.model.objectives
    assert state["norm"] == {"mean": -4.0, "std": 2.0}                # the clip store's stats, kept for embedding
    saved = json.loads((run / "config.json").read_text())
    assert saved["derived"]["total_steps"] == 30 and saved["derived"]["patch_grid"] == [T // 16, 8]
    assert (run / "curves.png").stat().st_size > 0
    assert (tmp_path / "latest-pretrain").read_text().strip() == str(final.resolve())
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert set(cfg.model.objectives) <= set(first) and {"lr", "clips_per_s", "data_wait"} <= set(first)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_losses(stores, tmp_path, workers):
    torch.set_num_threads(1)
    # 4 clips per update over 8 clips: the interruption (update 3) falls mid-epoch
    extra = ("batch_size=4", "max_steps=6", "ckpt_every=2", "lr=1e-3", f"num_workers={workers}")
    full = main(cfg_for("supmam-clap", stores, tmp_path / "a", *extra))
    main(cfg_for("supmam-clap", stores, tmp_path / "b", *extra), stop_after=3)
    assert len(losses(tmp_path / "b" / "supmam-clap")) == 3
    resumed = main(cfg_for("supmam-clap", stores, tmp_path / "b", *extra), resume=True)
    a, b = losses(tmp_path / "a" / "supmam-clap"), losses(tmp_path / "b" / "supmam-clap")
    assert len(a) == 6 and a == b
    wa, wb = torch.load(full, weights_only=False)["model"], torch.load(resumed, weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_online_teacher_matches_cached(stores, tmp_path):
    torch.set_num_threads(1)
    extra = ("batch_size=4", "max_steps=1")
    main(cfg_for("mam-clap", stores, tmp_path / "cached", *extra))
    online = OnlineTeacher(fn=fake_teacher, name="fake-teacher", grid=GRID, dim=DIM, teacher_mel=TEACHER_MEL)
    main(cfg_for("mam-clap", stores, tmp_path / "online", "teacher=online", "targets=/nonexistent", *extra),
         online_teacher=online)
    assert losses(tmp_path / "cached" / "mam-clap") == losses(tmp_path / "online" / "mam-clap")


def test_mismatched_target_store_is_refused(stores, tmp_path):
    other = write_clips(tmp_path / "other.h5", 8, prefix="other")
    cfg = cfg_for("mam-clap", stores, tmp_path, f"clips={other}", "batch_size=4", "max_steps=1")
    with pytest.raises(StoreMismatch) as e:
        main(cfg)
    msg = str(e.value)
    fp_other, fp_ok = cs.ClipStore(other).fingerprint, cs.ClipStore(stores["clips"]).fingerprint
    assert str(other) in msg and str(stores["targets"]) in msg and fp_other in msg and fp_ok in msg
    assert "supmam targets" in msg
    fewer = write_clips(tmp_path / "fewer.h5", 6)     # same ids as the first 6: another fingerprint
    with pytest.raises(StoreMismatch):
        main(cfg_for("mam-clap", stores, tmp_path, f"clips={fewer}", "batch_size=4", "max_steps=1"))


def test_store_count_mismatch_is_refused(stores):
    clips = cs.ClipStore(stores["clips"])
    short = type("Short", (), {"clip_fingerprint": clips.fingerprint, "__len__": lambda self: len(clips) - 1})()
    with pytest.raises(StoreMismatch, match=f"holds {len(clips) - 1} clips but the clip store"):
        check_stores(clips, short, "t.zarr")


def test_ddp_two_processes_gloo(stores, tmp_path):
    script = tmp_path / "ddp_run.py"
    args = [f"clips={stores['clips']}", f"targets={stores['targets']}", f"run_dir={tmp_path}", "name=ddp",
            *TINY, "batch_size=8", "max_steps=3", "accum_steps=2"]
    script.write_text(
        "import faulthandler, torch\nfaulthandler.dump_traceback_later(120, exit=True)  # a hang fails with stacks\n"
        "torch.set_num_threads(1)\n"
        "from train.pretrain import load_pretrain_config, main\n"
        f"main(load_pretrain_config('supmam-clap', {args!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoint-final.pt", weights_only=False)
    assert state["step"] == 3 and state["derived"]["world_size"] == 2 and state["derived"]["micro_batch"] == 2
    assert len(losses(tmp_path / "ddp")) == 3


def test_cli_pretrain_runs_a_preset_with_overrides(stores, tmp_path):
    import typer
    from typer.testing import CliRunner

    from pipeline.cli_pretrain import register
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)                 # two commands: typer keeps `pretrain` as a subcommand
    args = ["pretrain", "--preset", "mam-clap", "--clips", str(stores["clips"]), "--targets", str(stores["targets"]),
            "--runs", str(tmp_path), "--device", "cpu", *TINY, "batch_size=4", "max_steps=2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mam-clap" / "checkpoint-final.pt").is_file() and len(losses(tmp_path / "mam-clap")) == 2
    r = CliRunner().invoke(app, args + ["model.bogus=3"])
    assert r.exit_code == 2 and "bogus" in r.output


def test_config_rejects_unknown_keys_and_presets_load():
    with pytest.raises(ConfigError, match="bogus"):
        load_pretrain_config("supmam-clap-mini", ["bogus=1"])
    with pytest.raises(ConfigError, match="bogus"):
        load_pretrain_config("supmam-clap-mini", ["model.bogus=1"])
    with pytest.raises(ConfigError):
        load_pretrain_config("supmam-clap-mini", ["batch_size=lots"])
    want = {"audiomae": (["rec"], 0.8, 16), "supmam": (["rec", "cls"], 0.4, 16),
            "mam-clap": (["clap"], 0.2, 1), "supmam-clap": (["clap", "cls"], 0.2, 1)}
    for name, (obj, ratio, depth) in want.items():
        full, mini = load_pretrain_config(name), load_pretrain_config(f"{name}-mini")
        assert (full.model.objectives, full.model.mask_ratio, full.model.decoder_depth) == (obj, ratio, depth)
        assert full.model.encoder == "base" and full.batch_size == 128 and full.lr == 2e-4
        assert full.betas == (0.9, 0.95) and full.model.target_length == 1024
        assert mini.model.objectives == obj and mini.model.mask_ratio == ratio and mini.model.encoder == "tiny"
        assert 0 < mini.max_steps <= 500 and mini.batch_size <= 32
    assert load_pretrain_config("supmam").model.lambda_cls == 0.01
    assert load_pretrain_config("supmam-clap").model.lambda_cls == 1e-4


def test_sampler_is_deterministic_sharded_and_resumable():
    s = [StepBatchSampler(20, 8, 2, r, 2, seed=3) for r in range(2)]
    order = [x.order(1) for x in s]                                   # [steps, accum, micro] per rank
    both = np.concatenate([o.reshape(-1) for o in order])
    assert s[0].steps_per_epoch == 2 and s[0].micro_batch == 2 and len(set(both.tolist())) == 16
    s[0].set_position(1, 1)
    assert list(s[0]) == [m.tolist() for m in order[0][1]]
    assert not np.array_equal(s[0].order(0), s[0].order(1))
    with pytest.raises(ValueError, match="divide"):
        StepBatchSampler(20, 6, 4, 0, 1, seed=0)


def test_lr_schedule_warmup_then_cosine():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2, min_lr=1e-5)
    lrs = []
    for t in range(11):
        sched.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == 0 and lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[10] == pytest.approx(1e-5)


def offset_teacher(wave: torch.Tensor) -> torch.Tensor:
    """fake_teacher plus a large per-dim constant, as a real (or random) CLAP token map has."""
    offset = torch.linspace(-3, 3, DIM, device=wave.device)
    return (fake_teacher(wave).float() + offset).to(torch.float16)


def test_target_stats_are_the_stores_per_dim_mean_and_std(stores):
    from train.data import PretrainDataset
    from train.pretrain import target_stats
    ds = PretrainDataset(stores["clips"], stores["targets"])
    mean, std = target_stats(ds, None, seed=0, n=100, batch=3)            # n > clips: every clip
    every = ds.targets.read(np.arange(len(ds))).astype(np.float64).reshape(-1, DIM)
    np.testing.assert_allclose(mean.numpy(), every.mean(0), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), every.std(0), atol=1e-5)
    m2, _ = target_stats(ds, None, seed=0, n=4)                            # a seeded sample: deterministic
    m3, _ = target_stats(ds, None, seed=0, n=4)
    assert torch.equal(m2, m3) and not torch.allclose(m2, mean)


def test_target_head_starts_at_the_target_offset(tmp_path):
    """With a large constant in the targets, the stats-initialised clap head starts near them; the
    mae init must reach the offset through the encoder (the collapse seen with a random teacher)."""
    torch.set_num_threads(1)
    clips = write_clips(tmp_path / "c.h5", 8)
    targets = write_targets(tmp_path / "c.targets.zarr", clips, teacher=offset_teacher)
    first = {}
    for init in ("stats", "mae"):
        cfg = load_pretrain_config("mam-clap", [f"clips={clips}", f"targets={targets}", f"run_dir={tmp_path}",
                                                f"name={init}", *TINY, "batch_size=4", "max_steps=1",
                                                f"model.target_head_init={init}"])
        main(cfg)
        first[init] = losses(tmp_path / init)[0]
    assert first["stats"] < 0.3 * first["mae"], first


def test_init_target_head_checks_shapes():
    from train.models_mam import MAMConfig, MaskedAudioModel
    m = MaskedAudioModel(MAMConfig(encoder="tiny", encoder_depth=1, target_length=T, objectives=["clap"],
                                   decoder_dim=32, decoder_heads=2), target_dim=DIM)
    mean, std = torch.linspace(-1, 1, DIM), torch.linspace(0.5, 2, DIM)
    m.init_target_head(mean, std)
    assert torch.equal(m.target_head[1].bias, mean) and torch.equal(m.target_head[1].weight, std)
    with pytest.raises(ValueError, match="do not match"):
        m.init_target_head(mean[:-1], std[:-1])
    with pytest.raises(ValueError, match="target_head_init"):
        MAMConfig(target_head_init="mean")


def test_compiled_step_gives_the_eager_losses(stores, tmp_path):
    """`compile=<backend>` runs the step through torch.compile (the dynamo `eager` backend here: the
    tracing path without a C++ toolchain); the losses are those of the plain loop."""
    torch.set_num_threads(1)
    extra = ("batch_size=4", "max_steps=2", "lr=1e-3")
    main(cfg_for("supmam-clap", stores, tmp_path / "plain", *extra))
    main(cfg_for("supmam-clap", stores, tmp_path / "compiled", *extra, "compile=eager"))
    saved = json.loads((tmp_path / "compiled" / "supmam-clap" / "config.json").read_text())
    assert saved["config"]["compile"] == "eager"
    np.testing.assert_allclose(losses(tmp_path / "compiled" / "supmam-clap"),
                               losses(tmp_path / "plain" / "supmam-clap"), rtol=1e-5)
