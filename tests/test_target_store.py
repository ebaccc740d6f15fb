"""Target store: sharded Zarr writer, memory-mapped reader, completion records, inspect / verify."""
import json
import pickle

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from cache_tools.inspect import inspect_store, verify_store
from cache_tools.targets.store import ShardWriter, TargetStore, finalize, init_store, shard_file
from pipeline.app.cli import app
from tests.stores import write_target_store
from cache_tools.errors import StoreError

IDENT = {"teacher": "fake", "checkpoint": None, "checkpoint_sha256": "untrained:seed=0",
         "clip_fingerprint": "abc123", "teacher_mel": {"n_mels": 64}}


@pytest.fixture
def data():
    x = np.random.default_rng(0).standard_normal((11, 8, 2, 16)).astype(np.float16)  # [N, Tt, Ft, D]
    x[5] = 0  # an all-fill-value clip: zarr stores no chunk for it
    return x


def test_roundtrip_matches_zarr_python(tmp_path, data):
    write_target_store(tmp_path / "t.zarr", data, IDENT)
    s = TargetStore(tmp_path / "t.zarr")
    assert len(s) == 11 and s.shape == (11, 8, 2, 16) and s.grid == (8, 2) and s.dim == 16
    assert s.clip_fingerprint == "abc123" and s.teacher_name == "fake"
    assert np.array_equal(s.read(np.arange(11)), data)
    assert all(np.array_equal(s[i], data[i]) for i in range(-11, 11))
    via_zarr = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["targets"][:]
    assert via_zarr.dtype == np.float16 and np.array_equal(via_zarr, s.read(range(11)))
    assert s[3].flags.writeable and s.read([2, 9, 2]).shape == (3, 8, 2, 16)
    with pytest.raises(IndexError):
        s[11]
    # the partial last shard (clips 8..10 of 4 per shard) and the absent chunk of clip 5
    index = np.frombuffer(shard_file(tmp_path / "t.zarr", 1).read_bytes()[-4 * 16 - 4:-4], "<u8").reshape(4, 2)
    assert index[1, 0] == 2**64 - 1 and np.array_equal(s[5], np.zeros((8, 2, 16), np.float16))
    clone = pickle.loads(pickle.dumps(s))
    assert np.array_equal(clone[10], data[10])


def test_zstd_store_reads_through_zarr(tmp_path, data):
    write_target_store(tmp_path / "z.zarr", data, IDENT, compression="zstd")
    s = TargetStore(tmp_path / "z.zarr")
    assert not s._mappable
    assert np.array_equal(s.read([0, 10, 5]), data[[0, 10, 5]]) and np.array_equal(s[7], data[7])


def test_incomplete_and_corrupt_stores_are_refused(tmp_path, data):
    p = tmp_path / "t.zarr"
    write_target_store(p, data, IDENT, finish=False)
    with pytest.raises(StoreError, match="incomplete"):
        TargetStore(p)
    finalize(p)
    f = shard_file(p, 0)
    raw = bytearray(f.read_bytes())
    raw[-10] ^= 0xFF  # inside the shard index
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"c/0/0/0/0: shard 0 is corrupt: its sha256"):
        TargetStore(p)[0]                                  # the recorded sha256, checked on first read
    with pytest.raises(StoreError, match=r"c/0/0/0/0.*crc32c"):
        TargetStore(p, verify=False)[0]                    # unchecked, the index's own crc32c still holds
    assert any("shard 0 corrupt" in m for m in verify_store(p))


def test_rerun_requires_same_identity(tmp_path, data):
    p = tmp_path / "t.zarr"
    write_target_store(p, data, IDENT)
    init_store(p, 11, (8, 2), 16, IDENT, clips_per_shard=4)  # same identity: accepted
    with pytest.raises(StoreError, match="clip_fingerprint: store has 'abc123', this run has 'zzz'"):
        init_store(p, 11, (8, 2), 16, {**IDENT, "clip_fingerprint": "zzz"}, clips_per_shard=4)
    with pytest.raises(StoreError, match="checkpoint_sha256"):
        init_store(p, 11, (8, 2), 16, {**IDENT, "checkpoint_sha256": "untrained:seed=1"}, clips_per_shard=4)


def test_write_replaces_stale_shard_and_records(tmp_path, data):
    p = tmp_path / "t.zarr"
    init_store(p, 11, (8, 2), 16, IDENT, clips_per_shard=4)
    w = ShardWriter(p)
    assert w.num_shards == 3 and not w.is_complete(0)
    f = shard_file(p, 0)
    f.parent.mkdir(parents=True)
    f.write_bytes(b"half a shard")          # what a killed writer might leave
    (f.parent / "0.deadbeef.partial").write_bytes(b"x")
    rec = w.write(0, data[:4])
    assert w.is_complete(0) and rec["bytes"] == f.stat().st_size and sorted(x.name for x in f.parent.iterdir()) == ["0"]
    assert json.loads((p / "progress" / "shard-000000.json").read_text())["sha256"] == rec["sha256"]
    with pytest.raises(ValueError, match="expected"):
        w.write(1, data[:3])


def test_inspect_verify_cli(tmp_path, data):
    p = tmp_path / "t.zarr"
    write_target_store(p, data, IDENT)
    text = inspect_store(p)
    assert "[11, 8, 2, 16]" in text and "shards 3/3 complete" in text and "abc123" in text and "512 bytes per clip" in text
    runner = CliRunner()
    r = runner.invoke(app, ["store", "verify", str(p)])
    assert r.exit_code == 0 and "OK" in r.output
    f = shard_file(p, 2)
    raw = bytearray(f.read_bytes())
    raw[3] ^= 0x01  # a data byte: the index still checks out, the sha256 does not
    f.write_bytes(bytes(raw))
    r = runner.invoke(app, ["store", "verify", str(p)])
    assert r.exit_code == 1 and "shard 2 corrupt" in r.output and "c/2/0/0/0" in r.output
    (p / "progress" / "shard-000001.json").unlink()
    a = json.loads((p / "targets" / "zarr.json").read_text())
    a["attributes"]["shards"].pop("1")
    (p / "targets" / "zarr.json").write_text(json.dumps(a))
    assert any("shard 1 incomplete" in m for m in verify_store(p))
    r = runner.invoke(app, ["store", "inspect", str(p)])
    assert r.exit_code == 0 and "shards 2/3 complete" in r.output
    r = runner.invoke(app, ["store", "inspect", str(tmp_path / "nope.zarr")])
    assert r.exit_code == 1 and "nope.zarr" in r.output



def test_an_unknown_compression_is_refused_before_the_store_is_made(tmp_path):
    p = tmp_path / "t.zarr"
    with pytest.raises(StoreError, match=r"t\.zarr: compression must be None or 'zstd', got 'gzip'"):
        init_store(p, 4, (8, 2), 16, IDENT, compression="gzip")
    assert not p.exists()
