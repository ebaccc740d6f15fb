"""Pretraining loop: presets' objectives learn, resume is exact, DDP (gloo) runs, online == cached
targets, mismatched stores and unknown config keys are refused. Tiny models, T=128, a few clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_tools.clips import store as cs
from tests.stores import DIM, GRID, T, TEACHER_MEL, fake_teacher, write_clips, write_targets
from tests.stores import TINY_PRETRAIN as TINY
from train.data import PretrainDataset, StepBatchSampler, check_targets_match, clip_gain
from train.lr_sched import build_scheduler
from train.pretrain.config import PretrainConfig, load_pretrain_config
from train.pretrain.run import OnlineTeacher, run_pretrain
from cache_tools.errors import ConfigError, StoreError


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
    cfg = cfg_for(preset, stores, tmp_path, "batch_size=8", "max_steps=30", "blr=0.064", "ckpt_every=1000")   # lr 2e-3
    final = run_pretrain(cfg)
    run = tmp_path / preset
    ls = losses(run)
    assert len(ls) == 30 and all(np.isfinite(ls))
    assert np.mean(ls[-5:]) < 0.9 * np.mean(ls[:3]), ls
    state = torch.load(final, weights_only=True)
    assert state["step"] == 30 and state["config"]["model"]["objectives"] == cfg.model.objectives
    assert state["norm"] == {"mean": -4.0, "std": 2.0}                # the clip store's stats, kept for embedding
    saved = json.loads((run / "config.json").read_text())
    assert saved["derived"]["total_steps"] == 30 and saved["derived"]["patch_grid"] == [T // 16, 8]
    assert saved["derived"]["target_length"] == T and saved["derived"]["lr"] == pytest.approx(2e-3)   # from the store
    assert (run / "curves.png").stat().st_size > 0
    assert (tmp_path / "latest-pretrain").read_text().strip() == str(final.resolve())
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert set(cfg.model.objectives) <= set(first) and {"lr", "clips_per_s", "data_wait"} <= set(first)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_losses(stores, tmp_path, workers):
    torch.set_num_threads(1)
    # 4 clips per update over 8 clips: the interruption (update 3) falls mid-epoch
    extra = ("batch_size=4", "max_steps=6", "ckpt_every=2", "blr=0.064", f"num_workers={workers}")   # lr 1e-3
    full = run_pretrain(cfg_for("supmam-clap", stores, tmp_path / "a", *extra))
    run_pretrain(cfg_for("supmam-clap", stores, tmp_path / "b", *extra), stop_after=3)
    assert len(losses(tmp_path / "b" / "supmam-clap")) == 3
    resumed = run_pretrain(cfg_for("supmam-clap", stores, tmp_path / "b", *extra), resume=True)
    a, b = losses(tmp_path / "a" / "supmam-clap"), losses(tmp_path / "b" / "supmam-clap")
    assert len(a) == 6 and a == b
    wa, wb = torch.load(full, weights_only=True)["model"], torch.load(resumed, weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_online_teacher_matches_cached(stores, tmp_path):
    torch.set_num_threads(1)
    extra = ("batch_size=4", "max_steps=1")
    run_pretrain(cfg_for("mam-clap", stores, tmp_path / "cached", *extra))
    online = OnlineTeacher(fn=fake_teacher, name="fake-teacher", grid=GRID, dim=DIM, teacher_mel=TEACHER_MEL)
    run_pretrain(cfg_for("mam-clap", stores, tmp_path / "online", "teacher=online", "targets=/nonexistent", *extra),
         online_teacher=online)
    assert losses(tmp_path / "cached" / "mam-clap") == losses(tmp_path / "online" / "mam-clap")


def test_mismatched_target_store_is_refused(stores, tmp_path):
    other = write_clips(tmp_path / "other.h5", 8, prefix="other")
    cfg = cfg_for("mam-clap", stores, tmp_path, f"clips={other}", "batch_size=4", "max_steps=1")
    with pytest.raises(StoreError) as e:
        run_pretrain(cfg)
    msg = str(e.value)
    fp_other, fp_ok = cs.ClipStore(other).fingerprint, cs.ClipStore(stores["clips"]).fingerprint
    assert str(other) in msg and str(stores["targets"]) in msg and fp_other in msg and fp_ok in msg
    assert "supmam targets" in msg
    fewer = write_clips(tmp_path / "fewer.h5", 6)     # same ids as the first 6: another fingerprint
    with pytest.raises(StoreError):
        run_pretrain(cfg_for("mam-clap", stores, tmp_path, f"clips={fewer}", "batch_size=4", "max_steps=1"))


def test_store_count_mismatch_is_refused(stores):
    clips = cs.ClipStore(stores["clips"])
    short = type("Short", (), {"clip_fingerprint": clips.fingerprint, "__len__": lambda self: len(clips) - 1})()
    with pytest.raises(StoreError, match=f"holds {len(clips) - 1} clips but the clip store"):
        check_targets_match(clips, short, "t.zarr")


def test_ddp_two_processes_gloo(stores, tmp_path, torchrun):
    args = [f"clips={stores['clips']}", f"targets={stores['targets']}", f"run_dir={tmp_path}", "name=ddp",
            *TINY, "batch_size=8", "max_steps=3", "accum_steps=2"]
    r = torchrun("from train.pretrain.config import load_pretrain_config\nfrom train.pretrain.run import run_pretrain\n"
                 f"run_pretrain(load_pretrain_config('supmam-clap', {args!r}))")
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoint-final.pt", weights_only=True)
    assert state["step"] == 3 and state["derived"]["world_size"] == 2 and state["derived"]["micro_batch"] == 2
    assert len(losses(tmp_path / "ddp")) == 3


def test_cli_pretrain_runs_a_preset_with_overrides(stores, tmp_path):
    from typer.testing import CliRunner

    from pipeline.app.cli import app
    args = ["pretrain", "--preset", "mam-clap", "--clips", str(stores["clips"]), "--targets", str(stores["targets"]),
            "--runs", str(tmp_path), "--device", "cpu", *TINY, "batch_size=4", "max_steps=2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mam-clap" / "checkpoint-final.pt").is_file() and len(losses(tmp_path / "mam-clap")) == 2
    cfg = torch.load(tmp_path / "mam-clap" / "checkpoint-final.pt", weights_only=True)["config"]
    assert (cfg["clips"], cfg["targets"], cfg["run_dir"], cfg["name"]) == (      # the flags are config keys
        [str(stores["clips"])], [str(stores["targets"])], str(tmp_path), "mam-clap")
    r = CliRunner().invoke(app, args + ["model.bogus=3"])
    assert r.exit_code == 1 and "bogus" in r.output


def test_config_rejects_unknown_keys_and_presets_load():
    with pytest.raises(ConfigError, match="bogus"):
        load_pretrain_config("supmam-clap-mini", ["bogus=1"])
    with pytest.raises(ConfigError, match="bogus"):
        load_pretrain_config("supmam-clap-mini", ["model.bogus=1"])
    with pytest.raises(ConfigError):
        load_pretrain_config("supmam-clap-mini", ["batch_size=lots"])
    with pytest.raises(ConfigError, match="lr is derived: set blr"):
        load_pretrain_config("supmam-clap-mini", ["lr=1e-3"])
    with pytest.raises(ConfigError, match="target_length"):       # geometry is the clip store's
        load_pretrain_config("supmam-clap-mini", ["model.target_length=128"])
    with pytest.raises(ConfigError, match="mam-clap.toml: model: mask_ratio must be in"):
        load_pretrain_config("mam-clap", ["model.mask_ratio=1.0"])
    cfg = load_pretrain_config("mam-clap", ["stores=/s"])           # store paths: default names under `stores`
    assert cfg.clips == ["/s/audioset_balanced_train.h5", "/s/audioset_unbalanced_train.h5"]     # AS-2M
    assert cfg.targets == ["/s/audioset_balanced_train.targets.zarr", "/s/audioset_unbalanced_train.targets.zarr"]
    assert cfg.name == "mam-clap"
    mini = load_pretrain_config("mam-clap-mini", ["stores=/s"])     # the mini data: the one unbalanced store
    assert (mini.clips, mini.targets) == (["/s/audioset_unbalanced_train.h5"],
                                          ["/s/audioset_unbalanced_train.targets.zarr"])
    one = load_pretrain_config("mam-clap", ["clips=/a/x.h5"])       # a single path is a list of one
    assert (one.clips, one.targets) == (["/a/x.h5"], ["/a/x.targets.zarr"])
    with pytest.raises(ConfigError, match="one target store per clip store"):
        load_pretrain_config("mam-clap", ['clips=["/a.h5", "/b.h5"]', "targets=/a.targets.zarr"])
    want = {"audiomae": (["rec"], 0.8, 16, "odd"), "supmam": (["rec", "cls"], 0.4, 16, "odd"),
            "mam-clap": (["clap"], 0.2, 1, "all"), "supmam-clap": (["clap", "cls"], 0.2, 1, "all")}
    for name, (obj, ratio, depth, shifts) in want.items():
        full, mini = load_pretrain_config(name), load_pretrain_config(f"{name}-mini")
        assert (full.model.objectives, full.model.mask_ratio, full.model.decoder_depth) == (obj, ratio, depth)
        assert full.model.decoder_shift_blocks == mini.model.decoder_shift_blocks == shifts
        assert full.model.encoder == "base" and full.batch_size == 128 and full.lr == 2e-4   # blr 4e-4
        assert full.betas == (0.9, 0.95) and mini.lr == 5e-4                              # blr 8e-3 at batch 16
        assert full.weight_decay == 1e-4 and full.clip_set == "as2m" and mini.clip_set == "unbalanced"
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
    with pytest.raises(ConfigError, match="divide"):
        StepBatchSampler(20, 6, 4, 0, 1, seed=0)


def test_seeded_sampler_hands_out_the_same_item_seeds_for_any_world_size_and_resume():
    one = StepBatchSampler(24, 8, 1, 0, 1, seed=3, seeded=True)
    two = [StepBatchSampler(24, 8, 1, r, 2, seed=3, seeded=True) for r in range(2)]   # 4 clips per rank
    one.set_position(1)
    for x in two:
        x.set_position(1)
    whole = list(one)                                                 # 3 updates of 8 (index, seed) pairs
    split = list(zip(*(list(x) for x in two)))                        # per update: (rank 0's, rank 1's) micro-batches
    assert [sorted(u) for u in whole] == [sorted(a + b) for a, b in split]
    assert [i for i, _ in whole[0]] == one.order(1)[0, 0].tolist()     # the unseeded order, with seeds beside it
    seeds = [q for u in whole for _, q in u]
    assert len(set(seeds)) == 24                                      # one seed per place in the epoch
    one.set_position(1, 2)
    assert list(one) == whole[2:]                                     # a resume mid-epoch draws what it would have
    one.set_position(2)
    assert not {q for u in one for _, q in u} & set(seeds)           # a new epoch, new draws
    plain = StepBatchSampler(24, 8, 1, 0, 1, seed=3)
    plain.set_position(1)
    assert list(plain) == [[i for i, _ in u] for u in whole]           # unseeded: the same indices, bare


def test_pretraining_gain_is_audiomae_roll_mag_aug_on_the_stored_fbank(tmp_path):
    import torchaudio
    from tests.stores import SR, wave_clips, wave_store
    waves = wave_clips(4, seed=1)
    store = wave_store(tmp_path / "w.h5", waves, np.arange(4) % 2, ["a", "b"], 128, SR)
    on, off = PretrainDataset(store.path, gain=True), PretrainDataset(store.path)
    kaldi = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                 num_mel_bins=128, dither=0.0, frame_shift=10)       # AudioMAE dataset.py's call, spelled out
    for i, seed in ((0, 11), (1, 12), (2, 13), (3, 14)):
        g = clip_gain(seed)
        w = torch.as_tensor(waves[i], dtype=torch.float32)[None] / 32768.0
        w = g * (w - w.mean())                                            # dataset.py: mean removed, then x mag
        ref = torchaudio.compliance.kaldi.fbank(w, **kaldi)               # [frames, 128]
        ref = torch.nn.functional.pad(ref, (0, 0, 0, 128 - ref.shape[0]))[:128]
        x = on[(i, seed)]["fbank"][0] * 2 * store.norm_std + store.norm_mean   # undo (x - mean) / (2 std)
        assert torch.allclose(x, ref, atol=2e-2), (i, g, (x - ref).abs().max())
        assert torch.equal(off[(i, seed)]["fbank"], off[i]["fbank"])     # gain off: the seed is ignored
        assert torch.equal(on[i]["fbank"], off[i]["fbank"])              # no seed (e.g. target stats): no gain
    gains = np.array([clip_gain(s) for s in range(2000)])
    assert 0.5 < gains.min() and gains.max() < 1.5                        # Beta(10, 10) + 0.5
    assert abs(gains.mean() - 1.0) < 0.01 and abs(gains.std() - np.sqrt(100 / (400 * 21))) < 0.01


def test_audiomae_pretrains_with_the_gain_and_resumes_exactly(stores, tmp_path):
    torch.set_num_threads(1)
    extra = ("batch_size=4", "max_steps=4", "ckpt_every=2", "blr=0.064", "num_workers=2")
    assert load_pretrain_config("audiomae").roll_mag_aug and not load_pretrain_config("supmam").roll_mag_aug
    run_pretrain(cfg_for("audiomae", stores, tmp_path / "a", *extra))
    run_pretrain(cfg_for("audiomae", stores, tmp_path / "b", *extra), stop_after=3)
    run_pretrain(cfg_for("audiomae", stores, tmp_path / "b", *extra), resume=True)
    run_pretrain(cfg_for("audiomae", stores, tmp_path / "c", *extra, "roll_mag_aug=false"))
    a, b, c = (losses(tmp_path / r / "audiomae") for r in "abc")
    assert len(a) == 4 and a == b                                     # the gains follow the clips through a resume
    assert a[0] != c[0]                                               # and reach the model
    import multiprocessing
    assert multiprocessing.active_children() == []                   # every run ended its DataLoader workers


def test_a_process_that_pretrained_with_workers_exits(stores, tmp_path):
    """The workers ignore SIGTERM (train.stop_signal), so multiprocessing's exit could not end them: the
    run must end them itself, else the process hangs at exit waiting for them."""
    import subprocess
    import sys
    code = ("import torch; torch.set_num_threads(1)\n"
            "from tests.test_pretrain import cfg_for\nfrom train.pretrain.run import run_pretrain\n"
            f"run_pretrain(cfg_for('audiomae', {({k: str(v) for k, v in stores.items()})!r}, {str(tmp_path / 'x')!r}, "
            "'batch_size=4', "
            "'max_steps=2', 'num_workers=2'))\nprint('done')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("done"), r.stderr[-2000:]


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
    from train.pretrain.run import target_stats
    ds = PretrainDataset(stores["clips"], stores["targets"])
    mean, std = target_stats(ds, None, seed=0, n=100, batch=3)            # n > clips: every clip
    every = ds.read_targets(np.arange(len(ds))).astype(np.float64).reshape(-1, DIM)
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
        run_pretrain(cfg)
        first[init] = losses(tmp_path / init)[0]
    assert first["stats"] < 0.3 * first["mae"], first


def test_init_target_head_checks_shapes():
    from train.model.models_mam import MAMConfig, MaskedAudioModel
    m = MaskedAudioModel(MAMConfig(encoder="tiny", encoder_depth=1, objectives=["clap"], decoder_dim=32,
                                   decoder_heads=2), target_length=T, target_dim=DIM)
    mean, std = torch.linspace(-1, 1, DIM), torch.linspace(0.5, 2, DIM)
    m.init_target_head(mean, std)
    assert torch.equal(m.target_head[1].bias, mean) and torch.equal(m.target_head[1].weight, std)
    with pytest.raises(ValueError, match="do not match"):
        m.init_target_head(mean[:-1], std[:-1])
    with pytest.raises(ConfigError, match="target_head_init"):
        MAMConfig(target_head_init="mean")


def test_compiled_step_gives_the_eager_losses(stores, tmp_path):
    """`compile=<backend>` runs the step through torch.compile (the dynamo `eager` backend here: the
    tracing path without a C++ toolchain); the losses are those of the plain loop."""
    torch.set_num_threads(1)
    extra = ("batch_size=4", "max_steps=2", "blr=0.064")
    run_pretrain(cfg_for("supmam-clap", stores, tmp_path / "plain", *extra))
    run_pretrain(cfg_for("supmam-clap", stores, tmp_path / "compiled", *extra, "compile=eager"))
    saved = json.loads((tmp_path / "compiled" / "supmam-clap" / "config.json").read_text())
    assert saved["config"]["compile"] == "eager"
    np.testing.assert_allclose(losses(tmp_path / "compiled" / "supmam-clap"),
                               losses(tmp_path / "plain" / "supmam-clap"), rtol=1e-5)


@pytest.fixture(scope="module")
def two(tmp_path_factory, stores):
    """Two clip stores (8 + 4 clips, same classes) and their target stores: one pretraining dataset."""
    d = tmp_path_factory.mktemp("two")
    b = write_clips(d / "b.h5", 4, seed=1, prefix="b")
    return {"clips": [stores["clips"], b], "targets": [stores["targets"], write_targets(d / "b.targets.zarr", b)]}


def test_several_stores_are_one_dataset(two):
    from train.data import PretrainDataset
    ds = PretrainDataset(two["clips"], two["targets"])
    a, b = (PretrainDataset(c, t) for c, t in zip(two["clips"], two["targets"]))
    assert len(ds) == 12 and ds.locate(9) == (1, 1) and ds.locate(7) == (0, 7)
    item, ref = ds[9], b[1]                                        # dataset clip 9 = clip 1 of the second store
    for key in ("fbank", "label", "targets"):
        assert torch.equal(item[key], ref[key]), key
    assert int(item["index"]) == 9 and torch.equal(ds[3]["targets"], a[3]["targets"])
    np.testing.assert_array_equal(ds.read_targets([9, 0]), np.stack([b.read_targets([1])[0], a.read_targets([0])[0]]))
    with pytest.raises(IndexError):
        ds[12]


def two_cfg(two, run_dir: Path, *extra: str) -> PretrainConfig:
    return load_pretrain_config("supmam-clap", [f"clips={json.dumps([str(c) for c in two['clips']])}",
                                                f"targets={json.dumps([str(t) for t in two['targets']])}",
                                                f"run_dir={run_dir}", "name=two", *TINY, *extra])


def test_several_stores_pretrain_and_resume_exactly(two, tmp_path):
    """12 clips from two stores, 4 per update: 3 updates per epoch; the run is cut mid-epoch and resumed."""
    torch.set_num_threads(1)
    extra = ("batch_size=4", "max_steps=5", "ckpt_every=2", "blr=0.064")
    run_pretrain(two_cfg(two, tmp_path / "a", *extra))
    run_pretrain(two_cfg(two, tmp_path / "b", *extra), stop_after=2)
    run_pretrain(two_cfg(two, tmp_path / "b", *extra), resume=True)
    a, b = losses(tmp_path / "a" / "two"), losses(tmp_path / "b" / "two")
    assert len(a) == 5 and a == b
    saved = json.loads((tmp_path / "a" / "two" / "config.json").read_text())
    assert saved["derived"]["num_clips"] == 12 and saved["derived"]["steps_per_epoch"] == 3
    fps = saved["fingerprints"]
    assert fps["clips"] == [cs.ClipStore(c).fingerprint for c in two["clips"]] and len(set(fps["targets"])) == 2
    other = write_clips(tmp_path / "o.h5", 4, seed=2, prefix="o")   # other stores: the checkpoint refuses them
    swapped = dict(two, clips=[two["clips"][0], other], targets=[two["targets"][0],
                                                                 write_targets(tmp_path / "o.targets.zarr", other)])
    with pytest.raises(StoreError, match="trained on stores"):
        run_pretrain(two_cfg(swapped, tmp_path / "b", *extra), resume=True)


def test_stores_of_another_label_space_or_teacher_are_refused(two, tmp_path):
    from tests.stores import write_clip_store
    from train.data import PretrainDataset
    from train.pretrain.targets import target_info
    first = two["clips"][0]
    named = write_clips(tmp_path / "named.h5", 4, prefix="n", class_names=["x", "y", "z"])
    with pytest.raises(StoreError) as e:
        PretrainDataset([first, named])
    assert str(e.value).startswith(f"{named}: class_ids, class_names differ from the clip store {first}")
    short = write_clip_store(tmp_path / "short.h5", np.zeros((4, 64, 128), np.float16), np.zeros((4, 16000), np.int16),
                             np.arange(4) % 3, ["c0", "c1", "c2"], norm_mean=-4.0, norm_std=2.0)
    with pytest.raises(StoreError, match=f"^{short.path}: target_length differs from the clip store {first}"):
        PretrainDataset([first, short.path])
    with pytest.raises(StoreError, match=f"target store {two['targets'][0]} was computed from a clip store"):
        PretrainDataset(two["clips"], [two["targets"][0], two["targets"][0]])     # each pair is checked
    other_teacher = write_targets(tmp_path / "b2.targets.zarr", two["clips"][1], checkpoint_sha256="another")
    ds = PretrainDataset(two["clips"], [two["targets"][0], other_teacher])
    with pytest.raises(StoreError, match=f"^{other_teacher}: checkpoint_sha256 differs from the target store"):
        target_info(ds, None)


def test_paper_preset_refuses_untrained_teacher_targets(stores, tmp_path):
    """A paper preset refuses a target store whose teacher is `untrained:seed=N` (one line, before any
    update); allow_untrained_teacher=true trains on it; the mini presets allow it in their TOML."""
    torch.set_num_threads(1)
    tiny = [o for o in TINY if not o.startswith("allow_untrained_teacher")]
    args = [f"clips={stores['clips']}", f"targets={stores['targets']}", f"run_dir={tmp_path}", "name=u", *tiny,
            "batch_size=4", "max_steps=1"]
    with pytest.raises(ConfigError) as e:
        run_pretrain(load_pretrain_config("supmam-clap", args))
    msg = str(e.value)
    assert "\n" not in msg and "untrained teacher" in msg and "untrained:seed=7" in msg
    assert "allow_untrained_teacher=true" in msg and not (tmp_path / "u" / "log.jsonl").exists()
    assert run_pretrain(load_pretrain_config("supmam-clap", [*args, "allow_untrained_teacher=true"])).exists()
    assert load_pretrain_config("supmam-clap-mini").allow_untrained_teacher
    assert not load_pretrain_config("supmam-clap").allow_untrained_teacher
    # reconstruction alone reads no targets: nothing to refuse
    assert run_pretrain(load_pretrain_config("audiomae", [*args, "name=a"])).exists()


def test_target_alignment_and_padding_options_train(tmp_path):
    """bilinear alignment and target_padding=drop: the clap term changes, and with drop the patches
    past a short clip's real end (here 0.5 s of the 1 s clips) are out of Eq. 1."""
    import numpy as np
    from cache_tools.clips import store as cstore
    from tests.stores import write_clip_store
    torch.set_num_threads(1)
    src = cstore.ClipStore(write_clips(tmp_path / "src.h5", 8))
    n = len(src)
    fb = np.stack([src.fbank(i) for i in range(n)])
    wave = np.stack([src.wave(i) for i in range(n)])
    wave[:, wave.shape[1] // 2:] = 0                                                     # real audio: 0.5 s
    sources = {"source_path": np.array([f"c{i}.wav" for i in range(n)]), "source_start": np.zeros(n),
               "source_seconds": np.full(n, 0.5), "wave_length": np.full(n, wave.shape[1] // 2, np.int32)}
    clips = tmp_path / "short.h5"
    write_clip_store(clips, fb, wave, np.asarray(src.labels), src.class_names, sources=sources,
                     source_root=str(tmp_path), norm_mean=-4.0, norm_std=2.0)
    targets = write_targets(tmp_path / "short.targets.zarr", clips)
    first = {}
    runs = {"map": ["target_padding=map"], "bilinear": ["target_padding=map", "target_alignment=bilinear"],
            "drop": ["target_padding=drop"]}
    for name, ovs in runs.items():
        cfg = load_pretrain_config("mam-clap", [f"clips={clips}", f"targets={targets}", f"run_dir={tmp_path}",
                                                f"name={name}", *TINY, "batch_size=4", "max_steps=1", *ovs])
        run_pretrain(cfg)
        first[name] = json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0])["clap"]
    assert len(set(first.values())) == 3, first
    from cache_tools.grid_map import padding_valid
    from train.pretrain.targets import clip_seconds
    from train.data import PretrainDataset
    secs = clip_seconds(PretrainDataset([str(clips)], [str(targets)]))
    assert torch.allclose(secs, torch.full((n,), 0.5, dtype=torch.float64))
    assert padding_valid(secs, T // 16).sum(1).tolist() == [3.0] * n                   # centres 0.09, 0.25, 0.41 s
