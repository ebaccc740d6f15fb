"""Audio decoding, AudioMAE's fbank, and `prepare`: bad-file report, kill -9 and resume, the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch
import torchaudio
from typer.testing import CliRunner

from cache_tools.clips.store import ClipStore, parts_dir, report_path
from pipeline.audio_io import load_audio, load_clip
from pipeline.app.cli import app
from pipeline.features import FBANK_PARAMS, NORM_STATS, fbank
from pipeline.prepare import featurise, _Geometry, prepare, summary_line
from pipeline.readers import ClipRecord, read_esc50, read_spc1, read_spc2
from tests.fixtures_audio import (make_audioset, make_esc50, make_spc, make_spc1_test, tone, write_bad_files,
                                  write_wav)

REPO = Path(__file__).resolve().parent.parent


def _audiomae_fbank(w: torch.Tensor, target_length: int) -> torch.Tensor:
    """AudioMAE's dataset code, written out: the Kaldi call with its arguments, then pad / cut."""
    fb = torchaudio.compliance.kaldi.fbank(w - w.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
                                           window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    p = target_length - fb.shape[0]
    return torch.nn.ZeroPad2d((0, 0, 0, p))(fb) if p > 0 else fb[:target_length]


def test_fbank_equals_audiomae_kaldi_call():
    w = torch.from_numpy(tone(1.3, seed=3)).reshape(1, -1)       # [1, n]
    for target_length in (1024, 50):                              # zero-padded, then cut
        ours = fbank(w[0].numpy(), target_length)
        assert ours.shape == (target_length, 128)
        assert torch.equal(ours, _audiomae_fbank(w, target_length))
    assert (ours[-1] != 0).any() and (fbank(w[0].numpy(), 1024)[200:] == 0).all()
    assert FBANK_PARAMS == dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                                num_mel_bins=128, dither=0.0, frame_shift=10)
    assert NORM_STATS["audioset"] == (-4.2677393, 4.5689974) and NORM_STATS["esc50"] == (-6.6268077, 5.358466)
    assert NORM_STATS["spc2"] == NORM_STATS["spc1"] == (-6.845978, 5.5654526)


def test_decoding_stereo_44k_and_offsets(tmp_path):
    files = write_bad_files(tmp_path)
    wave, reason = load_clip(files["sr44k"], 1.0)
    x, _ = sf.read(str(files["sr44k"]), dtype="float32")
    expect = torchaudio.functional.resample(torch.from_numpy(x), 44100, 16000).numpy()
    assert reason is None and wave.shape == (16000,) and np.allclose(wave, expect, atol=1e-6)
    wave, _ = load_clip(files["stereo"], 1.0)
    x, _ = sf.read(str(files["stereo"]), dtype="float32")           # [n, 2]
    assert np.allclose(wave, x.mean(axis=1), atol=1e-6)
    long = write_wav(tmp_path / "long.wav", tone(3.0, seed=4))
    padded, _ = load_audio(long, 5.0)                                # 3 s file in a 5 s clip
    assert padded.shape == (80000,) and (padded[48000:] == 0).all() and (padded[:48000] != 0).any()
    window, _ = load_clip(long, 1.0, start=2.0)
    assert np.array_equal(window, sf.read(str(long), dtype="float32")[0][32000:48000])


def test_bad_files_are_skipped_and_reported(tmp_path):
    root = make_spc(tmp_path / "v2", ["yes", "no"], per_word=3)
    bad = write_bad_files(root / "yes")
    spec = read_spc2(root, "train")
    out = tmp_path / "stores" / "spc2_train.h5"
    report = prepare(spec, out, workers=1, block_size=3, progress=False)
    skipped = {Path(s["path"]).stem: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"corrupt", "empty", "truncated", "nan", "silent"}
    assert skipped["empty"] == "empty" and skipped["silent"] == "silent"
    assert skipped["corrupt"].startswith("corrupt:") and skipped["truncated"].startswith("truncated:")
    assert skipped["nan"] == "non-finite samples"
    assert json.loads(report_path(out).read_text()) == {k: v for k, v in report.items() if k != "seconds"}
    store = ClipStore(out)
    assert len(store) == len(spec.records) - 5 == 2 * 1 + 2
    assert {"yes/stereo", "yes/sr44k"} <= set(store.clip_ids) and store.attrs["skipped"] == 5
    i = store.clip_ids.index("yes/sr44k")
    wave, _ = load_clip(bad["sr44k"], 1.0)
    assert np.abs(store.wave(i) / 32768.0 - wave).max() < 1e-4
    torch.testing.assert_close(torch.from_numpy(store.fbank(i)).float(),
                               fbank(store.wave(i) / 32768.0, 128).half().float())
    assert "5 skipped" in summary_line(report) and "4 clips written" in summary_line(report)


def test_spc1_silence_clips_are_background_windows(tmp_path):
    root = make_spc(tmp_path / "v1", ["yes", "bed"], per_word=3, noise_seconds=(11.0,))
    spec = read_spc1(root, None, "valid")
    sil = [r for r in spec.records if r.kind == "silence"]
    assert [r.start for r in sil] == [0.0, 10.0]
    g = _Geometry(1.0, 128, False, 12, False)
    fb, wave, length = featurise(sil[1], g)
    noise = sf.read(str(sil[1].path), dtype="int16")[0]
    assert np.array_equal(wave, noise[160000:176000]) and fb.shape == (128, 128) and length == 16000


def _compare_stores(a: Path, b: Path) -> None:
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert set(fa.keys()) == set(fb.keys()) and set(fa.attrs) == set(fb.attrs)
        for k in fa.keys():
            assert fa[k].dtype == fb[k].dtype and fa[k].chunks == fb[k].chunks
            assert np.array_equal(fa[k][:], fb[k][:]), k
        for k, v in fa.attrs.items():
            assert np.array_equal(v, fb.attrs[k]), k
    ra, rb = json.loads(report_path(a).read_text()), json.loads(report_path(b).read_text())
    assert {**ra, "store": None} == {**rb, "store": None}


def test_kill_minus_nine_then_resume_equals_uninterrupted_run(tmp_path):
    root = make_esc50(tmp_path / "esc", per_fold=2)                # 30 clips of 5 s, one block each
    write_bad_files(tmp_path / "bad")
    (root / "audio" / "1-1000-A-0.wav").write_bytes((tmp_path / "bad" / "corrupt.wav").read_bytes())
    ref = tmp_path / "ref.h5"
    prepare(read_esc50(root), ref, workers=1, block_size=1, progress=False)
    out = tmp_path / "killed" / "esc50.h5"
    cmd = [sys.executable, "-c", "import runpy, sys; from tests.slowed import slow_prepare_blocks; "  # +0.1 s/block
           "slow_prepare_blocks(0.1); sys.argv[0] = 'supmam'; runpy.run_module('pipeline.app.cli', run_name='__main__')",
           "prepare", "esc50", "--root", str(root), "--out", str(out), "--workers", "1", "--block-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for kill_after in (2, 8):                                      # two kills at different points
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(list(parts_dir(out).glob("part-*.h5"))) < kill_after and proc.poll() is None:
            assert time.time() < deadline, "prepare made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists(), "the run finished before it could be killed"
        done = len(list(parts_dir(out).glob("part-*.h5")))
        assert kill_after <= done < 30
    Path(f"{out}.tmp").write_bytes(b"\x89HDF\r\n half an assembly")      # as if killed while assembling
    report = prepare(read_esc50(root), out, workers=2, block_size=1, progress=False)   # resume in a pool
    assert not parts_dir(out).exists() and report["written"] == 29
    _compare_stores(ref, out)
    store = ClipStore(out)
    assert store.folds is not None and sorted(set(store.folds.tolist())) == [1, 2, 3, 4, 5]
    parts_dir(out).mkdir()                                         # as if killed between rename and cleanup
    Path(f"{out}.tmp").write_bytes(b"stale")
    assert prepare(read_esc50(root), out, workers=1, block_size=1, progress=False)["status"] == "already complete"
    assert not parts_dir(out).exists() and not Path(f"{out}.tmp").exists()
    _compare_stores(ref, out)


def test_cli_reports_wrong_layout_and_other_input(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "esc50", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "e.h5")])
    assert res.exit_code == 1 and "Expected layout" in res.output and str(tmp_path / "nope") in res.output
    root = make_spc(tmp_path / "v2", ["yes", "no"], per_word=3)
    out = tmp_path / "s.h5"
    args = ["prepare", "spc2", "--root", str(root), "--split", "valid", "--out", str(out), "--workers", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "2 clips written" in res.output and ClipStore(out).split == "valid"
    moved = tmp_path / "moved"
    root.rename(moved)                                             # same data, another path: still complete
    res = runner.invoke(app, ["prepare", "spc2", "--root", str(moved), *args[4:]])
    assert res.exit_code == 0 and "already complete" in res.output
    args[3] = str(moved)
    res = runner.invoke(app, args[:5] + ["test"] + args[6:])
    assert res.exit_code == 1 and "other input" in res.output
    bogus = ClipRecord("x", tmp_path / "x.wav", 0)
    assert featurise(bogus, _Geometry(1.0, 128, False, 2, False)) == "corrupt: file does not exist"


def test_prepare_all_writes_every_mini_store_then_skips(tmp_path):
    root = tmp_path / "mini"
    make_audioset(root / "audioset")
    make_esc50(root / "esc50")
    make_spc(root / "speech_commands_v0.02", ["yes", "no", "wow"], per_word=3)
    make_spc(root / "speech_commands_v0.01", ["yes", "go", "bed"], per_word=3, noise_seconds=(3.0,))
    make_spc1_test(root / "speech_commands_test_set_v0.01", ["yes", "_unknown_", "_silence_"])
    args = ["prepare", "all", "--root", str(root), "--out", str(tmp_path / "stores"), "--workers", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "stores").glob("*.h5"))
    assert names == sorted(["audioset_balanced_train.h5", "audioset_unbalanced_train.h5", "audioset_eval.h5",
                            "esc50.h5", *(f"spc{v}_{s}.h5" for v in (1, 2) for s in ("train", "valid", "test"))])
    counts = {n: len(ClipStore(tmp_path / "stores" / n)) for n in names}
    assert counts["audioset_balanced_train.h5"] == 3 and counts["esc50.h5"] == 15
    assert counts["spc1_train.h5"] == 3 + 2 and counts["spc1_test.h5"] == 6 and counts["spc2_valid.h5"] == 3
    s = ClipStore(tmp_path / "stores" / "audioset_balanced_train.h5")
    assert s.multilabel and s.target_length == 1024 and s.wave(0).shape == (160000,) and s.fbank(0).shape == (1024, 128)
    assert json.loads(report_path(s.path).read_text())["missing"] == ["nofile_0.000"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and res.output.count("already complete") == 10


def test_an_unexpected_error_skips_only_that_clip(tmp_path, monkeypatch):
    import pipeline.prepare as prep
    root = make_spc(tmp_path / "v2", ["yes", "no"], per_word=3)
    real = prep.featurise

    def flaky(rec, g):
        if rec.clip_id.startswith("no/"):
            raise RuntimeError("decoder exploded")
        return real(rec, g)
    monkeypatch.setattr(prep, "featurise", flaky)
    report = prep.prepare(read_spc2(root, "train"), tmp_path / "s.h5", workers=1, block_size=1, progress=False)
    assert report["written"] == 1 and [s["reason"] for s in report["skipped"]] == [
        "error: RuntimeError: decoder exploded"]
    assert ClipStore(tmp_path / "s.h5").clip_ids == [r.clip_id for r in read_spc2(root, "train").records
                                                     if r.clip_id.startswith("yes/")]
