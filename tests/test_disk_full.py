"""A full disk is one line, `<path>: disk full (need ~N GB, have M GB)`, never a crash; finished
work stays and a rerun with space completes (prepare: part files; targets: finished shards)."""
from __future__ import annotations

import errno
import re
import shutil
from collections import namedtuple

import numpy as np
import pytest

from cache_tools.clips import store as clip_store
from cache_tools.targets import store as target_store
from cache_tools.clips.store import ClipStore, parts_dir
from cache_tools.errors import StoreError
from cache_tools.targets.store import TargetStore
from pipeline.prepare import prepare
from pipeline.readers import read_esc50
from pipeline.targets import build_targets
from tests.fixtures_audio import make_esc50
from tests.test_targets_stage import FakeTeacher, write_clips

Usage = namedtuple("Usage", "total used free")
FULL = re.compile(r": disk full \(need ~[0-9.e+-]+ GB, have [0-9.e+-]+ GB\)")


def _fake_disk(monkeypatch, free_when):
    """shutil.disk_usage reporting 100 GB free, or 1 kB while free_when() says the disk is full."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(real(p).total, 0, 1000 if free_when() else 100 * 10**9))


def test_prepare_checks_space_before_assembly_and_resumes(tmp_path, monkeypatch):
    spec = read_esc50(make_esc50(tmp_path / "esc50"))
    out = tmp_path / "stores" / "esc50.h5"
    blocks = -(-len(spec.records) // 4)
    parts = lambda: sorted(parts_dir(out).glob("part-*.h5"))        # noqa: E731
    _fake_disk(monkeypatch, lambda: len(parts()) == blocks)          # the disk fills with the last part
    with pytest.raises(StoreError) as err:
        prepare(spec, out, workers=1, block_size=4, progress=False)
    assert str(err.value).startswith(f"{out}: disk full (need ~") and FULL.search(str(err.value))
    assert "have 1e-06 GB" in str(err.value)
    assert len(parts()) == blocks and not out.exists() and not clip_store.tmp_path(out).exists()
    monkeypatch.undo()
    report = prepare(spec, out, workers=1, block_size=4, progress=False)   # space again: assembles the kept parts
    assert report["written"] == len(spec.records) and len(ClipStore(out)) == len(spec.records)


def test_prepare_refuses_to_start_without_room(tmp_path, monkeypatch):
    spec = read_esc50(make_esc50(tmp_path / "esc50"))
    out = tmp_path / "esc50.h5"
    _fake_disk(monkeypatch, lambda: True)
    with pytest.raises(StoreError, match=FULL.pattern):
        prepare(spec, out, workers=1, progress=False)
    assert not list(parts_dir(out).glob("part-*.h5"))


def test_enospc_during_a_part_write_becomes_one_line(tmp_path, monkeypatch):
    spec = read_esc50(make_esc50(tmp_path / "esc50"))
    out = tmp_path / "esc50.h5"
    real = clip_store.write_part

    def fails_on_block_2(d, block, *args):
        if block == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(d, block, *args)

    monkeypatch.setattr(clip_store, "write_part", fails_on_block_2)
    with pytest.raises(StoreError, match=f"^{re.escape(str(out))}" + FULL.pattern):
        prepare(spec, out, workers=1, block_size=4, progress=False)
    assert sorted(p.name for p in parts_dir(out).glob("part-*.h5")) == ["part-000000.h5", "part-000001.h5"]
    monkeypatch.undo()
    assert prepare(spec, out, workers=1, block_size=4, progress=False)["written"] == len(spec.records)


def test_targets_disk_full_keeps_finished_shards(tmp_path, monkeypatch):
    clips = write_clips(tmp_path / "clips.h5", n=6)
    out = tmp_path / "t.zarr"
    real = target_store.ShardWriter.write

    def full_after_one(self, k, data, info=None):
        if k >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, k, data, info)

    monkeypatch.setattr(target_store.ShardWriter, "write", full_after_one)
    with pytest.raises(StoreError, match=f"^{re.escape(str(out))}" + FULL.pattern):
        build_targets(clips, out, FakeTeacher(), clips_per_shard=2, progress=False)
    assert target_store.ShardWriter(out).is_complete(0) and not target_store.ShardWriter(out).is_complete(1)
    monkeypatch.undo()
    s = build_targets(clips, out, FakeTeacher(), clips_per_shard=2, progress=False)
    assert s["complete"] and s["computed"] == 4                        # only the two unfinished shards
    _fake_disk(monkeypatch, lambda: True)
    with pytest.raises(StoreError, match=FULL.pattern):                # no room at all: refused up front
        build_targets(clips, tmp_path / "u.zarr", FakeTeacher(), clips_per_shard=2, progress=False)
    monkeypatch.undo()
    assert np.isfinite(TargetStore(out).read(range(6)).astype(np.float32)).all()
