"""One writer per output: a second `prepare` on one --out, or `targets` on one store, is refused at once."""
from __future__ import annotations

import time

import pytest
from filelock import FileLock

from cache_tools.errors import StoreError
from cache_tools.writer_lock import lock_path
from pipeline.prepare import prepare
from pipeline.readers import read_esc50
from pipeline.targets import build_targets
from tests.fixtures_audio import make_esc50
from tests.test_targets_stage import FakeTeacher, write_clips


def test_second_prepare_on_one_out_is_refused(tmp_path):
    spec = read_esc50(make_esc50(tmp_path / "esc50"))
    out = tmp_path / "stores" / "esc50.h5"
    held = FileLock(str(lock_path(out)))                       # the first writer, still running
    held.acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError) as err:
            prepare(spec, out, workers=1, progress=False)
        assert time.monotonic() - t0 < 2.0                     # at once, not after waiting
    finally:
        held.release()
    msg = str(err.value)
    assert msg.startswith(f"{out}: another `prepare` run is writing it") and str(lock_path(out)) in msg
    assert not out.exists() and not (tmp_path / "stores" / "esc50.h5.parts").exists()   # it touched nothing
    report = prepare(spec, out, workers=1, progress=False)     # the lock gone: runs
    assert report["written"] == len(spec.records)


def test_second_targets_on_one_store_is_refused(tmp_path):
    clips = write_clips(tmp_path / "clips.h5", n=4)
    out = tmp_path / "t.zarr"
    held = FileLock(str(lock_path(out)))
    held.acquire()
    try:
        with pytest.raises(StoreError, match=r"t\.zarr: another `targets` run is writing it \(it holds .*t\.zarr\.lock\)"):
            build_targets(clips, out, FakeTeacher(), clips_per_shard=2, progress=False)
    finally:
        held.release()
    assert not out.exists()
    assert build_targets(clips, out, FakeTeacher(), clips_per_shard=2, progress=False)["complete"]
