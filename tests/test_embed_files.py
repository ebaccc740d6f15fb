"""`supmam embed` (train.use.embed_files + pipeline.app.cli.use.embed): any format / rate / channels, bad files
skipped and reported, the HDF5 layout, resume after kill -9."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import train.use.embed_files as ef
from pipeline.audio_io import load_clip
from pipeline.app.cli import app
from train.use.embed import load_pretrained
from train.use.embed_files import embed_files, list_audio
from train.model.checkpoint import save_checkpoint
from train.model.models_vit import AudioViT
from cache_tools.errors import InputFileError
from tests.slowed import slow_embed_files

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    vit = AudioViT(target_length=128, embed_dim=64, depth=1, num_heads=1).eval()
    path = tmp_path_factory.mktemp("ck") / "checkpoint.pt"
    save_checkpoint(path, {"kind": "pretrain", "model": {f"encoder.{k}": v for k, v in vit.state_dict().items()},
                           "norm": {"mean": -5.0, "std": 4.0}})
    return path


def tone(seconds: float, sr: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size))
    return np.stack([x, 0.5 * x], 1).astype(np.float32) if channels == 2 else x.astype(np.float32)


def write_aac(path: Path, x: np.ndarray, sr: int) -> None:
    """x [n, 2] -> AAC in an .m4a container (PyAV / FFmpeg), a format soundfile cannot read."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout="stereo")
        frame.sample_rate = sr
        for pkt in [*s.encode(frame), *s.encode(None)]:
            c.mux(pkt)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    (d / "sub").mkdir()
    sf.write(d / "a.wav", tone(2.5, 16000), 16000)                                   # mono 16 kHz, 2 windows
    sf.write(d / "sub" / "b.flac", tone(1.0, 44100, channels=2, freq=300), 44100)    # stereo 44.1 kHz
    write_aac(d / "c.m4a", tone(0.7, 22050, channels=2, freq=500), 22050)            # AAC, 22.05 kHz
    sf.write(d / "silent.wav", np.zeros(16000, np.float32), 16000)
    (d / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    (d / "notes.txt").write_text("not audio")                                        # not an audio extension
    return d


def test_folder_to_h5_layout_and_values(ckpt, audio, tmp_path):
    enc = load_pretrained(ckpt)
    out = tmp_path / "emb.h5"
    r = embed_files(enc, [audio], out, block_size=2, progress=False)
    assert r["written"] == 3 and r["listed"] == 5
    reasons = {s["clip_id"]: s["reason"] for s in r["skipped"]}
    assert reasons.keys() == {"broken.wav", "silent.wav"} and reasons["silent.wav"] == "silent"
    assert reasons["broken.wav"].startswith("corrupt")
    assert json.loads(Path(f"{out}.report.json").read_text())["skipped"] == r["skipped"]
    assert not Path(f"{out}.parts").exists()
    assert b"GCOL" not in out.read_bytes()                          # text as fixed-length bytes (cache_tools.h5_text)
    with h5py.File(out) as f:
        ids = list(f["clip_id"].asstr("utf-8")[:])
        assert ids == ["a.wav", "c.m4a", "sub/b.flac"]
        off, cnt = f["frame_offset"][:], f["frame_count"][:]
        assert cnt[0] == 16 and cnt[2] == 6             # 2.5 s: 248 frames -> 16 columns; 1 s: 98 -> 6
        assert list(off) == [0, cnt[0], cnt[0] + cnt[1]] and f["frames"].shape == (cnt.sum(), 64)
        assert f["clip"].shape == (3, 64) and f["timestamps"].shape == (cnt.sum(),)
        assert f.attrs["layer"] == 0 and f.attrs["hop"] == pytest.approx(1.28)
        assert json.loads(f.attrs["encoder"])["norm_mean"] == -5.0
        for i, cid in enumerate(ids):                   # each row = embed() of the decoded file
            wave, _ = load_clip(audio / cid, 3600.0)
            e = enc.embed(wave, 16000)
            frames = f["frames"][off[i]:off[i] + cnt[i]]
            np.testing.assert_allclose(frames, e.frames[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(f["clip"][i], e.clip[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(f["timestamps"][off[i]:off[i] + cnt[i]], e.timestamps.numpy())
    again = embed_files(enc, [audio], out, block_size=2, progress=False)
    assert again["status"] == "already complete"
    with pytest.raises(InputFileError, match="emb.h5: exists and was made from other files or settings"):
        embed_files(enc, [audio], out, block_size=2, layer=0, hop=0.32, progress=False)


def test_inputs_lists_and_errors(audio, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my clips\n{audio / 'a.wav'}\n\n{audio / 'sub' / 'b.flac'}\n")
    assert [cid for cid, _ in list_audio([], files_from=lst)] == [str(audio / "a.wav"), str(audio / "sub" / "b.flac")]
    with pytest.raises(InputFileError, match="nothing.wav: no such file"):
        list_audio([tmp_path / "nothing.wav"])
    with pytest.raises(InputFileError, match="also names"):
        list_audio([audio, audio])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no audio files found"):
        list_audio([tmp_path / "empty"])


def test_cli_embed_and_its_errors(ckpt, audio, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["embed", str(audio / "a.wav"), "--ckpt", str(ckpt), "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 0, res.output
    assert "1 clips embedded, 0 skipped" in res.output
    bad = runner.invoke(app, ["embed", str(audio), "--ckpt", str(tmp_path / "missing.pt"),
                              "--out", str(tmp_path / "y.h5")])
    assert bad.exit_code == 1 and "error: " in bad.output and "missing.pt" in bad.output


def _run(ckpt, d, out):                                   # the job the test kills (a forked process)
    torch.set_num_threads(1)
    slow_embed_files(0.2)                                 # 8 files in ~1.6 s, not ~0.1 s: the kill lands mid-run
    embed_files(load_pretrained(ckpt), [d], out, block_size=1, progress=False)


def test_resume_after_kill_9(ckpt, tmp_path, monkeypatch):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(8):
        sf.write(d / f"{i}.wav", tone(6.0, 16000, freq=200 + 50 * i), 16000)
    out, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    proc = multiprocessing.get_context("fork").Process(target=_run, args=(ckpt, d, out))
    proc.start()
    parts = Path(f"{out}.parts")
    deadline = time.time() + 120
    while len(list(parts.glob("part-*.h5"))) < 2 and time.time() < deadline and proc.is_alive():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    done = {p.name for p in parts.glob("part-*.h5")}
    assert 2 <= len(done) < 8 and not out.exists(), done       # killed mid-run, after two blocks
    enc = load_pretrained(ckpt)
    calls, real = [], ef._embed_one
    monkeypatch.setattr(ef, "_embed_one", lambda *a: calls.append(a[1].name) or real(*a))
    r = embed_files(enc, [d], out, block_size=1, progress=False)
    monkeypatch.undo()
    assert r["written"] == 8 and len(calls) == 8 - len(done)   # only the unfinished blocks were embedded
    embed_files(enc, [d], clean, block_size=1, progress=False)
    with h5py.File(out) as a, h5py.File(clean) as b:
        assert list(a["clip_id"].asstr("utf-8")[:]) == list(b["clip_id"].asstr("utf-8")[:])
        np.testing.assert_array_equal(a["frames"][:], b["frames"][:])
        np.testing.assert_array_equal(a["clip"][:], b["clip"][:])
