"""Issue 20, items 2-6 and 8, done as the audit did them (the tests make their own files): one writer per
output, identities that see content (checkpoint hash, split / fold, source files), stores and caches
checked before use, no number from nonsense (one class, non-finite outputs), no clobbering."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from filelock import FileLock
from typer.testing import CliRunner

import train.use.embed_files as ef
from cache_tools.clips.store import ClipStore
from cache_tools.errors import CheckpointError, ConfigError, Diverged, InputFileError, StoreError
from cache_tools.writer_lock import lock_path
from pipeline.app.cli import app
from pipeline.prepare import prepare
from pipeline.readers.folder import read_folder
from pipeline.teacher_audio import FALLBACK, TeacherInputDataset
from tests.folder_data import csv_dataset, folder_dataset
from tests.slowed import slow_embed_files
from tests.stores import TINY_PRETRAIN, class_store, spc_stores, write_clips, write_targets
from train.finetune import engine
from train.finetune.config import load_finetune_config
from train.finetune.metrics import task_metrics
from train.finetune.run import run_finetune
from train.finetune.split import assign
from train.model.checkpoint import save_checkpoint
from train.model.models_vit import AudioViT, build_encoder
from train.pretrain.config import load_pretrain_config
from train.pretrain.run import run_pretrain
from train.use.embed import load_pretrained
from train.use.embed_files import embed_files
from train.use.features import cached_features, weights_sha256

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test

TINY = ["model.encoder=tiny", "model.encoder_depth=1", "batch_size=8", "eval_batch_size=16", "num_workers=0",
        "log_every=1"]
PROBE = ["ckpt=none", "encoder=tiny", "encoder_depth=1", "device=cpu", "steps=20", "eval_every=10"]


def one_error_line(output: str) -> str:
    """The CLI's whole complaint: exactly one line, `error: ...` (no traceback)."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    errors = [ln[ln.index("error: "):] for ln in lines if "error: " in ln]   # after a progress bar's \r too
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def encoder_ckpt(path: Path, seed: int, scale: float = 1.0) -> Path:
    """A tiny pretrained-encoder checkpoint (64-d, 1 block); `scale` multiplies the patch embedding."""
    torch.manual_seed(seed)
    vit = AudioViT(target_length=128, embed_dim=64, depth=1, num_heads=1).eval()
    sd = vit.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"] * scale
    save_checkpoint(path, {"kind": "pretrain", "model": {f"encoder.{k}": v for k, v in sd.items()},
                           "norm": {"mean": -5.0, "std": 4.0}})
    return path


def tones(d: Path, n: int, seconds: float = 3.0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = np.arange(int(seconds * 16000)) / 16000
        sf.write(d / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t)).astype(np.float32), 16000)
    return d


def rows(out: Path) -> tuple[list[str], np.ndarray]:
    with h5py.File(out) as f:
        return list(f["clip_id"].asstr("utf-8")[:]), f["clip"][:]


def finetune_args(root: Path, name: str, *extra: str) -> list[str]:
    return ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "none", "--stores", str(root),
            "--runs", str(root / "runs"), "--name", name, "--device", "cpu", *TINY, *extra]


def finetune_cfg(root: Path, name: str, *extra: str):
    return load_finetune_config("spc2-mini", [f"stores={root}", f"run_dir={root / 'runs'}", f"name={name}",
                                              "init=none", "device=cpu", *TINY, *extra], task="spc2")


def probe_args(root: Path, name: str, *extra: str) -> list[str]:
    return ["probe", "--task", "spc2", "--stores", str(root), "--runs", str(root / "runs"), "--name", name,
            *PROBE, *extra]


# ------------------------------------------------------------------ 2. one writer per output


def _embed_slowly(ckpt: Path, d: Path, out: Path) -> None:             # the first writer (a forked process)
    torch.set_num_threads(1)
    slow_embed_files(0.5)                  # 5 s for 10 files (0.12 s unslowed): the second writer meets it
    embed_files(load_pretrained(ckpt), [d], out, block_size=1, progress=False)


def test_two_embeds_on_one_out_second_refused_nothing_mixed(tmp_path):
    a, b = encoder_ckpt(tmp_path / "a.pt", 0), encoder_ckpt(tmp_path / "b.pt", 1)
    d, out = tones(tmp_path / "audio", 10, seconds=6.0), tmp_path / "emb.h5"
    first = multiprocessing.get_context("fork").Process(target=_embed_slowly, args=(a, d, out))
    first.start()
    parts, deadline = Path(f"{out}.parts"), time.time() + 120
    while not list(parts.glob("part-*.h5")) and time.time() < deadline and first.is_alive():
        time.sleep(0.01)
    assert first.is_alive(), "the first writer ended before the second could start"
    res = CliRunner().invoke(app, ["embed", str(d), "--ckpt", str(b), "--out", str(out)])
    first.join(120)
    assert first.exitcode == 0
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert f"{out}: another `embed` run is writing it" in line and str(lock_path(out)) in line
    ids, clip = rows(out)                                              # every row is the first writer's
    clean = tmp_path / "clean.h5"
    embed_files(load_pretrained(a), [d], clean, block_size=1, progress=False)
    assert ids == rows(clean)[0] and np.array_equal(clip, rows(clean)[1])


@pytest.mark.parametrize("command", ["finetune", "probe", "export"])
def test_run_folders_and_exports_have_one_writer(tmp_path, command):
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    ckpt = encoder_ckpt(tmp_path / "a.pt", 0)
    out = {"finetune": tmp_path / "runs" / "x", "probe": tmp_path / "runs" / "x", "export": tmp_path / "exp"}[command]
    args = {"finetune": finetune_args(tmp_path, "x", "epochs=1"), "probe": probe_args(tmp_path, "x"),
            "export": ["export", "--ckpt", str(ckpt), "--out", str(out)]}[command]
    held = FileLock(str(lock_path(out)))                              # the first writer, still running
    held.acquire()
    try:
        res = CliRunner().invoke(app, args)
    finally:
        held.release()
    assert res.exit_code == 1
    assert f"{out}: another `{command}` run is writing it" in one_error_line(res.output)
    assert not out.exists()                                            # the second writer touched nothing
    assert CliRunner().invoke(app, args).exit_code == 0                # the lock gone: it runs


def test_pretrain_has_one_writer_and_a_refused_resume_writes_nothing(tmp_path):
    write_targets(tmp_path / "t.zarr", write_clips(tmp_path / "c.h5", 8))
    base = [f"clips={tmp_path / 'c.h5'}", f"targets={tmp_path / 't.zarr'}", f"run_dir={tmp_path / 'runs'}",
            "name=p", "batch_size=4", "max_steps=2", *TINY_PRETRAIN]
    run = tmp_path / "runs" / "p"
    held = FileLock(str(lock_path(run)))                              # the first writer, still running
    held.acquire()
    try:
        with pytest.raises(StoreError, match=f"{run}: another `pretrain` run is writing it"):
            run_pretrain(load_pretrain_config("supmam-clap-mini", base))
    finally:
        held.release()
    assert not run.exists()                                            # the second writer touched nothing
    run_pretrain(load_pretrain_config("supmam-clap-mini", base))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other = load_pretrain_config("supmam-clap-mini", base + ["model.mask_ratio=0.5"])
    with pytest.raises(ConfigError, match=r"config.json: --resume with other settings.*model.mask_ratio: 0.2 -> 0.5"):
        run_pretrain(other, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before   # config.json unchanged
    (run / "config.json").unlink()                                     # no config.json: the checkpoint's config
    with pytest.raises(ConfigError, match=r"checkpoint.pt: written with other settings.*mask_ratio"):
        run_pretrain(other, resume=True)
    assert not (run / "config.json").exists()
    where = load_pretrain_config("supmam-clap-mini", base + ["num_workers=1", "ckpt_every=5"])
    assert run_pretrain(where, resume=True) == run / "checkpoint-final.pt"   # where it runs may change


# ------------------------------------------------------------------ 3. identities, not paths


def test_embed_resume_sees_a_replaced_checkpoint(tmp_path, monkeypatch):
    d, out, ckpt = tones(tmp_path / "audio", 4), tmp_path / "emb.h5", tmp_path / "model.pt"
    encoder_ckpt(ckpt, 0)
    real, calls = ef._embed_block, []

    def crash_after_two(enc, block, *a):
        if len(calls) == 2:
            raise KeyboardInterrupt                                   # killed after two finished blocks
        calls.append(block)
        return real(enc, block, *a)

    monkeypatch.setattr(ef, "_embed_block", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed_files(load_pretrained(ckpt), [d], out, block_size=1, progress=False)
    monkeypatch.undo()
    assert len(list(Path(f"{out}.parts").glob("part-*.h5"))) == 2
    encoder_ckpt(ckpt, 1)                                              # another model at the same path
    embed_files(load_pretrained(ckpt), [d], out, block_size=1, progress=False)
    clean = tmp_path / "clean.h5"
    embed_files(load_pretrained(ckpt), [d], clean, block_size=1, progress=False)
    assert np.array_equal(rows(out)[1], rows(clean)[1])                # no row of the old model
    encoder_ckpt(ckpt, 2)                                              # and a complete file is not "already complete"
    with pytest.raises(InputFileError, match="exists and was made from other files or settings"):
        embed_files(load_pretrained(ckpt), [d], out, block_size=1, progress=False)


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    m.pop("train_seconds")
    return m


def test_finetune_overwrite_drops_the_old_resume_state(tmp_path, monkeypatch):
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    run = tmp_path / "runs" / "r"
    run_finetune(finetune_cfg(tmp_path, "r", "epochs=2", "seed=5"))
    assert (run / "last.pt").exists() and (run / "metrics.json").exists()

    def killed(*a, **k):
        raise KeyboardInterrupt                                        # the new run dies in its epoch 1
    monkeypatch.setattr(engine, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(finetune_cfg(tmp_path, "r", "epochs=3"), overwrite=True)
    monkeypatch.undo()
    left = sorted(p.name for p in run.iterdir())
    assert not {"last.pt", "checkpoint.pt", "checkpoint-final.pt", "metrics.json"} & set(left), left
    run_finetune(finetune_cfg(tmp_path, "r", "epochs=3"), resume=True)   # starts at epoch 1, not the old model
    run_finetune(finetune_cfg(tmp_path, "fresh", "epochs=3"))
    assert _metrics(run) == _metrics(tmp_path / "runs" / "fresh")


@pytest.mark.parametrize("other", [["model.encoder_depth=2"], ["--preset", "spc2"]])
def test_refused_resume_leaves_the_run_alone(tmp_path, other):
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    res = CliRunner().invoke(app, finetune_args(tmp_path, "c", "epochs=1"))
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "c"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = finetune_args(tmp_path, "c", "epochs=1") + ["--resume"]
    if other[0] == "--preset":
        args[args.index("spc2-mini")] = "spc2"
    else:
        args += other
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert "config.json: --resume with other settings" in line
    assert ("model.encoder_depth: 1 -> 2" if other[0] != "--preset" else "preset: 'spc2-mini' -> 'spc2'") in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before   # config.json unchanged
    (run / "config.json").unlink()                                     # no config.json: last.pt's config refuses
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "last.pt: written with other settings" in one_error_line(res.output)


def test_swapping_train_and_test_changes_the_fingerprint_and_resume_refuses(tmp_path):
    root = tmp_path / "data"
    labels = csv_dataset(root, per_split=(4, 1, 2))
    store = tmp_path / "mine.h5"
    prepare(read_folder(root, labels), store, workers=1, progress=False)
    first = ClipStore(store).fingerprint
    args = ["finetune", "--task", "custom", "--preset", "custom-mini", "--clips", str(store), "--init", "none",
            "--runs", str(tmp_path / "runs"), "--name", "s", "--device", "cpu", *TINY, "epochs=1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    text = labels.read_text()                                          # train <-> test, same files and ids
    labels.write_text(text.replace(",train", ",TMP").replace(",test", ",train").replace(",TMP", ",test"))
    store.unlink()
    prepare(read_folder(root, labels), store, workers=1, progress=False)
    assert ClipStore(store).clip_ids and ClipStore(store).fingerprint != first
    res = CliRunner().invoke(app, args + ["--resume"])
    assert res.exit_code == 1 and "last.pt: trained on stores" in one_error_line(res.output)


# ------------------------------------------------------------------ 4. sources that change


def test_a_changed_source_is_noticed_by_prepare_targets_and_verify(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=3)
    store = tmp_path / "f.h5"
    prepare(read_folder(root), store, workers=1, progress=False)
    s = ClipStore(store)
    assert s.has_source_identity
    i = next(k for k, c in enumerate(s.clip_ids) if c.endswith(".wav"))   # PCM: new audio keeps the size
    victim, other = root / s.clip_ids[i], (i + 1) % len(s)
    st = victim.stat()
    x, sr = sf.read(victim)
    sf.write(victim, np.roll(x, 1000, axis=0), sr, subtype=sf.info(victim).subtype)   # new audio, same length
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))             # ... and the old mtime
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    res = CliRunner().invoke(app, ["store", "verify", str(store)])    # verify hashes every source
    assert res.exit_code == 1 and f"source {victim}: changed since the store was made: sha256" in res.output
    ds = TeacherInputDataset(ClipStore(store), 48000)                  # targets hashes what it reads
    _, _, kind, why = ds[i]
    assert kind == FALLBACK and "changed since the store was made" in why   # the teacher hears the stored clip
    assert ds[other][2] != FALLBACK and ds[other][3] == ""              # the unchanged files: from source
    os.utime(victim)                                                   # a replaced file's usual new mtime:
    with pytest.raises(InputFileError, match=r"f\.h5: 1 source file changed since it was made .*sha256"):
        prepare(read_folder(root), store, workers=1, progress=False)   # a rerun is not "already complete"
    victim.write_bytes(victim.read_bytes()[:-2])                       # another size: no hash needed
    with pytest.raises(InputFileError, match=r"changed since the store was made: \d+ bytes"):
        prepare(read_folder(root), store, workers=1, progress=False)


# ------------------------------------------------------------------ 5. check what you read


def _flip_byte(store: Path, clip: int = 1) -> None:
    with h5py.File(store) as f:
        off = f["fbank"].id.get_chunk_info(clip).byte_offset
    with open(store, "r+b") as fh:
        fh.seek(off + 100)
        b = fh.read(1)
        fh.seek(off + 100)
        fh.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("command", ["finetune", "probe"])
def test_a_flipped_byte_stops_finetune_and_probe_before_use(tmp_path, command):
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    store = tmp_path / "spc2_train.h5"
    _flip_byte(store)
    args = finetune_args(tmp_path, "x", "epochs=1") if command == "finetune" else probe_args(tmp_path, "x")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert f"{store}: clips 0..11 corrupt" in line and "rebuild it" in line
    assert not (tmp_path / "runs" / "x" / "metrics.json").exists()


def test_clip_store_check_runs_once_per_change(tmp_path):
    from cache_tools.clips import verify as clip_verify
    store = tmp_path / "s.h5"
    class_store(store, np.arange(12) % 3, ["a", "b", "c"])
    old = time.time() - 60
    os.utime(store, (old, old))                                        # not racy: it may be remembered
    fp = ClipStore(store).fingerprint
    assert clip_verify.verified(store, fp) is True                     # hashed
    assert clip_verify.verified(store, fp) is False                    # remembered: one stat
    _flip_byte(store, 0)
    with pytest.raises(StoreError, match="s.h5: clips 0..11 corrupt"):
        clip_verify.verified(store, fp)


def test_probe_feature_cache_is_checked(tmp_path, capsys):
    store = class_store(tmp_path / "s.h5", np.arange(12) % 3, ["a", "b", "c"])
    torch.manual_seed(0)
    vit = build_encoder("tiny", 1, target_length=64).eval()
    digest, cache = weights_sha256(vit), tmp_path / "cache"
    feats, info = cached_features(vit, digest, store, 0, "mean", cache, torch.device("cpu"))
    path = Path(info["path"])
    assert not info["hit"] and cached_features(vit, digest, store, 0, "mean", cache, torch.device("cpu"))[1]["hit"]
    np.save(path, np.full_like(feats, np.nan))                         # a NaN cache of the right shape
    again, info = cached_features(vit, digest, store, 0, "mean", cache, torch.device("cpu"))
    assert not info["hit"] and np.array_equal(again, feats)
    assert "sha256 differs" in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:-100])                         # truncated
    again, info = cached_features(vit, digest, store, 0, "mean", cache, torch.device("cpu"))
    assert not info["hit"] and np.array_equal(again, feats)
    nan = np.full_like(feats, np.nan)                                  # NaN, with its sha256 written beside it
    np.save(path, nan)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": hashlib.sha256(nan.tobytes()).hexdigest()}))
    again, info = cached_features(vit, digest, store, 0, "mean", cache, torch.device("cpu"))
    assert not info["hit"] and np.array_equal(again, feats) and "NaN" in capsys.readouterr().out
    with open(path, "wb") as f:                                        # a header claiming 2^40 rows: nothing read
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 192)})
        f.write(b"\0" * 64)
    again, info = cached_features(vit, digest, store, 0, "mean", cache, torch.device("cpu"))
    assert not info["hit"] and np.array_equal(again, feats) and "expected float32 (12, 192)" in capsys.readouterr().out


# ------------------------------------------------------------------ 6. no confident number from nonsense


def test_one_class_folder_is_refused_by_finetune_and_probe(tmp_path):
    folder_dataset(tmp_path / "top" / "data", per_class=3)             # --root one level too high
    store = tmp_path / "one.h5"
    prepare(read_folder(tmp_path / "top"), store, workers=1, progress=False)
    assert ClipStore(store).class_names == ["data"]
    for args in (["finetune", "--task", "custom", "--preset", "custom-mini", "--init", "none", *TINY, "epochs=1"],
                 ["probe", "--task", "custom", *PROBE]):
        res = CliRunner().invoke(app, [*args, "--clips", str(store), "--runs", str(tmp_path / "runs"),
                                       "--name", args[0]])
        assert res.exit_code == 1
        line = one_error_line(res.output)
        assert f"{store}: its clips hold only class 'data'" in line and "two classes or more" in line
        assert not (tmp_path / "runs" / args[0] / "metrics.json").exists()


def test_a_class_too_small_to_split_is_named(tmp_path):
    labels = np.array([0] * 8 + [1] * 8 + [2])                         # 'c' has one clip
    store = class_store(tmp_path / "s.h5", labels, ["a", "b", "c"])
    a = assign(store, 0, 0.1, 0.2)
    assert any("too small to split" in n and "'c' (1 clip)" in n for n in a.notes), a.notes
    assert a.record()["notes"] == a.notes


def test_non_finite_outputs_are_errors_not_rows(tmp_path):
    ckpt = encoder_ckpt(tmp_path / "huge.pt", 0, scale=1e30)           # finite weights, activations overflow
    d, out = tones(tmp_path / "audio", 2), tmp_path / "emb.h5"
    res = CliRunner().invoke(app, ["embed", str(d), "--ckpt", str(ckpt), "--out", str(out)])
    assert res.exit_code == 1 and "NaN or infinite embeddings" in one_error_line(res.output)
    assert not out.exists() and not list(Path(f"{out}.parts").glob("part-*.h5"))   # no block counted as done
    store = class_store(tmp_path / "s.h5", np.arange(12) % 3, ["a", "b", "c"])
    vit = build_encoder("tiny", 1, target_length=64)
    with torch.no_grad():
        vit.patch_embed.proj.weight.mul_(1e30)
    with pytest.raises(CheckpointError, match="NaN or infinite features for 12 of 12 clips"):
        cached_features(vit, "x" * 64, store, 0, "mean", tmp_path / "cache", torch.device("cpu"))
    assert not list((tmp_path / "cache").glob("*.npy"))
    scores = np.full((4, 3), np.nan)
    with pytest.raises(Diverged, match="scores of 4 of 4 clips are NaN"):
        task_metrics(scores, np.arange(4) % 3, False)


# ------------------------------------------------------------------ 8. do not clobber


def test_export_refuses_a_folder_it_did_not_make_and_symlinks(tmp_path):
    ckpt = encoder_ckpt(tmp_path / "a.pt", 0)
    run = tmp_path / "pretrain-run"                                    # a pretraining run's own folder
    run.mkdir()
    (run / "config.json").write_text('{"config": {"preset": "mine"}}')
    (run / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    before = (run / "config.json").read_bytes()
    res = CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(run)])
    assert res.exit_code == 1 and "a folder export did not make" in one_error_line(res.output)
    assert (run / "config.json").read_bytes() == before and not (run / "model.safetensors").exists()
    res = CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(run), "--overwrite"])
    assert res.exit_code == 0, res.output
    exp = tmp_path / "exp"
    assert CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(exp)]).exit_code == 0
    assert CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(exp)]).exit_code == 0  # its own
    target = tmp_path / "elsewhere"
    target.mkdir()
    for link, to in ((tmp_path / "link", target), (tmp_path / "dangling", tmp_path / "nowhere")):
        link.symlink_to(to)
        res = CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(link), "--overwrite"])
        assert res.exit_code == 1 and "is a symlink" in one_error_line(res.output)
    assert not any(target.iterdir()) and not (tmp_path / "nowhere").exists()


def test_probe_rerun_under_one_name_follows_finetunes_rule(tmp_path):
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    assert CliRunner().invoke(app, probe_args(tmp_path, "p")).exit_code == 0
    run = tmp_path / "runs" / "p"
    before = (run / "metrics.json").read_bytes()
    res = CliRunner().invoke(app, probe_args(tmp_path, "p", "steps=30"))
    assert res.exit_code == 1 and "holds metrics.json from an earlier run" in one_error_line(res.output)
    assert (run / "metrics.json").read_bytes() == before
    config = (run / "config.json").read_bytes()
    res = CliRunner().invoke(app, probe_args(tmp_path, "p", "steps=30", "--resume"))
    assert res.exit_code == 1 and "steps: 20 -> 30" in one_error_line(res.output)
    assert (run / "config.json").read_bytes() == config
    assert CliRunner().invoke(app, probe_args(tmp_path, "p", "--resume")).exit_code == 0
    assert CliRunner().invoke(app, probe_args(tmp_path, "p", "steps=30", "--overwrite")).exit_code == 0
    assert json.loads((run / "config.json").read_text())["config"]["steps"] == 30
