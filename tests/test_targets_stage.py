"""Stage one: clip store -> target store (fake and real teachers, resume after kill -9, torchrun ranks).

Run as a script (`python tests/test_targets_stage.py CLIPS OUT K [DELAY]`) it writes targets with
the fake teacher; the tests start it in subprocesses (SIGKILL, torchrun).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cache_tools.clips.store import ClipStore  # noqa: E402
from cache_tools.targets.store import TargetStore, shard_file  # noqa: E402
from pipeline.targets import build_targets  # noqa: E402
from pipeline.teacher import HTSAT_MEL  # noqa: E402
from tests.stores import write_clip_store  # noqa: E402
from cache_tools.errors import StoreError

S = 16000  # 1 s clips


class FakeTeacher:
    """Seeded conv net with the ClapTeacher interface: wave [B, S] -> [B, Tt, Ft, D] = [B, 32, 2, 16]."""

    name, checkpoint_id, dim = "fake conv teacher", "untrained:seed=3", 16
    mel = HTSAT_MEL

    def __init__(self, delay: float = 0.0):
        self.w = torch.randn(self.dim, 1, 64, generator=torch.Generator().manual_seed(3))  # [D, 1, 64]
        self.delay = delay

    def token_grid(self, wave):
        b = wave.shape[0]
        x = torch.tanh(F.conv1d(wave[:, None], self.w, stride=16))  # [B, D, L]
        time.sleep(self.delay)
        return F.adaptive_avg_pool1d(x, 64).transpose(1, 2).reshape(b, 32, 2, self.dim)  # [B, 64, D] -> [B, Tt, Ft, D]


def write_clips(path, n=10, seed=0):
    """A real clip store of n one-second clips (noise bursts at seeded places; ids depend on the seed)."""
    rng = np.random.default_rng(seed)
    wv = np.zeros((n, S), np.int16)
    for i in range(n):
        start = rng.integers(0, S // 2)
        wv[i, start:start + S // 4] = rng.integers(-8000, 8000, S // 4)
    fb = rng.normal(-5, 3, size=(n, 100, 128)).astype(np.float16)
    ids = [f"s{seed}c{i}" for i in range(n)]
    return write_clip_store(path, fb, wv, rng.integers(0, 3, n), ["a", "b", "c"], ids=ids, clip_seconds=1.0)


def shard_bytes(out):
    files = sorted((Path(out) / "targets" / "c").rglob("*"))
    return {str(f.relative_to(out)): f.read_bytes() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips") / "c.h5")


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "t.zarr"
    build_targets(clips, out, FakeTeacher(), batch_size=3, clips_per_shard=4, progress=False)
    return out


def test_targets_match_the_teacher(clips, reference, capsys):
    s = TargetStore(reference)
    assert s.shape == (10, 32, 2, 16) and s.clip_fingerprint == clips.fingerprint
    assert s.teacher_name == "fake conv teacher" and s.attrs["checkpoint_sha256"] == "untrained:seed=3"
    assert s.attrs["teacher_mel"]["n_mels"] == 64 and s.attrs["clip_seconds"] == 1.0
    wave = torch.from_numpy(np.stack([clips.wave(i) for i in range(10)]).astype(np.float32) / 32768)
    want = FakeTeacher().token_grid(wave).half().numpy()  # [B, Tt, Ft, D]
    assert np.abs(s.read(range(10)).astype(np.float32) - want).max() < 1e-3
    assert np.abs(want).max() > 0.05  # not trivially zero
    build_targets(clips, reference, FakeTeacher(), batch_size=3, clips_per_shard=4)  # all shards done: no work
    out = capsys.readouterr().out
    assert "0 computed" in out and "complete=True" in out and "WARNING: the teacher has untrained" in out


def test_refuses_other_clips_or_teacher(clips, reference, tmp_path):
    other = write_clips(tmp_path / "other.h5", n=10, seed=1)
    with pytest.raises(StoreError, match=f"store has '{clips.fingerprint}', this run has '{other.fingerprint}'"):
        build_targets(other, reference, FakeTeacher(), clips_per_shard=4, progress=False)
    t = FakeTeacher()
    t.checkpoint_id = "untrained:seed=4"
    with pytest.raises(StoreError, match="untrained:seed=3.*untrained:seed=4"):
        build_targets(clips, reference, t, clips_per_shard=4, progress=False)


def test_rerun_after_losing_a_shard_is_identical(clips, reference, tmp_path):
    out = tmp_path / "t.zarr"
    build_targets(clips, out, FakeTeacher(), batch_size=3, clips_per_shard=4, progress=False)
    shard_file(out, 1).unlink()
    with pytest.raises(StoreError):
        TargetStore(out)[4]
    summary = build_targets(clips, out, FakeTeacher(), batch_size=3, clips_per_shard=4, progress=False)
    assert summary["computed"] == 4 and shard_bytes(out) == shard_bytes(reference)


def run_script(clips, out, k, delay=0.0, torchrun=0, **env):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
                              if torchrun else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen(cmd + [__file__, str(clips.path), str(out), str(k), str(delay)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_then_rerun_is_bit_identical(clips, reference, tmp_path):
    out = tmp_path / "t.zarr"
    p = run_script(clips, out, 4, delay=0.4)  # 3 batches a shard: ~1.2 s per shard
    deadline = time.time() + 60
    while not (out / "progress" / "shard-000000.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    with pytest.raises(StoreError, match="incomplete"):
        TargetStore(out)
    p = run_script(clips, out, 4)
    assert p.wait(timeout=120) == 0, p.stdout.read()
    assert shard_bytes(out) == shard_bytes(reference)
    assert "computed" in p.stdout.read()


def test_torchrun_two_ranks_same_bytes(clips, reference, tmp_path):
    out = tmp_path / "t.zarr"
    p = run_script(clips, out, 4, torchrun=2)
    assert p.wait(timeout=180) == 0, p.stdout.read()
    assert shard_bytes(out) == shard_bytes(reference)
    assert TargetStore(out).attrs["complete"]


def test_a_rank_without_disk_space_stops_every_rank_before_the_teacher_runs(clips, tmp_path):
    out = tmp_path / "t.zarr"
    p = run_script(clips, out, 4, delay=0.4, torchrun=2, TEST_FULL_DISK_RANK="1")
    assert p.wait(timeout=180) != 0
    log = p.stdout.read()
    assert "disk full" in log and f"{out}: rank 1 stopped before the teacher ran: {out}: disk full" in log, log
    assert not list((out / "progress").glob("shard-*.json"))          # rank 0 computed nothing either


@pytest.mark.slow
def test_cli_with_real_teacher(tmp_path):
    from typer.testing import CliRunner

    from pipeline.app.cli import app

    clips = write_clips(tmp_path / "c.h5", n=5)
    out = tmp_path / "t.zarr"
    r = CliRunner().invoke(app, ["targets", "--clips", str(clips.path), "--out", str(out), "--batch-size", "3",
                                 "--clips-per-shard", "3", "--workers", "0"])
    assert r.exit_code == 0, r.output
    s = TargetStore(out)
    assert s.shape == (5, 32, 2, 768) and s.teacher_name == "laion-clap HTSAT-tiny"
    assert s.attrs["checkpoint_sha256"] == "untrained:seed=0" and s.attrs["teacher_mel"]["n_mels"] == 64
    got = s.read(range(5)).astype(np.float32)  # [5, Tt, Ft, D]
    assert np.isfinite(got).all() and got.std() > 0 and not np.allclose(got[0], got[1])
    assert "no CLAP semantics" in r.output
    from pipeline.app.online_teacher import online_teacher   # `--teacher online`: the same numbers as the store
    online = online_teacher(None, "HTSAT-tiny", seed=0, device="cpu")
    wave = torch.from_numpy(np.stack([clips.wave(i) for i in range(5)]).astype(np.float32) / 32768)  # [5, S]
    assert online.grid == s.grid and online.dim == s.dim and online.teacher_mel == s.attrs["teacher_mel"]
    got = online(wave)                                                          # [5, Tt, Ft, D] f16
    assert got.dtype == torch.float16   # batches of 5 here, of 3 in the store: fp16 rounding may differ by an ulp
    np.testing.assert_allclose(got.float().numpy(), s.read(range(5)).astype(np.float32), rtol=2e-3, atol=2e-3)
    r = CliRunner().invoke(app, ["store", "verify", str(out), "--clips", str(clips.path)])
    assert r.exit_code == 0, r.output
    other = write_clips(tmp_path / "o.h5", n=5, seed=5)
    r = CliRunner().invoke(app, ["store", "verify", str(out), "--clips", str(other.path)])
    assert r.exit_code == 1 and other.fingerprint in r.output


if __name__ == "__main__":
    torch.set_num_threads(1)
    if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("TEST_FULL_DISK_RANK"):
        import shutil                                                # this rank's disk has no room
        shutil.disk_usage = lambda path: shutil._ntuple_diskusage(10**12, 10**12, 0)
    clips_path, out_path, k, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    build_targets(ClipStore(clips_path), out_path, FakeTeacher(delay), batch_size=3, clips_per_shard=k,
                  workers=1, progress=True)
