"""Corruption is noticed: clip-store block checksums (verify), a content fingerprint (stale
targets refused), and target shards checked against their sha256 on first read (pretraining's reader)."""
from __future__ import annotations

import h5py
import pytest

from cache_tools.clips.store import ClipStore
from cache_tools.errors import StoreError
from cache_tools.inspect import verify_store
from cache_tools.targets.store import TargetStore, shard_file
from pipeline.prepare import prepare
from pipeline.readers import read_esc50
from pipeline.targets import build_targets
from tests.fixtures_audio import make_esc50, tone, write_wav
from tests.test_targets_stage import FakeTeacher, write_clips
from train.data import PretrainDataset, check_targets_match


def _flip(path, offset: int, n: int = 8) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        raw = bytearray(f.read(n))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in raw))


def test_clip_store_verify_finds_flipped_bytes_and_names_old_stores(tmp_path):
    path = tmp_path / "clips.h5"
    write_clips(path, n=70)                                     # two checksum blocks: 64 + 6 clips
    assert verify_store(path) == []
    with h5py.File(path, "r") as f:
        off = f["wave"].id.get_chunk_info(66).byte_offset       # clip 66's wave chunk (block 1)
    _flip(path, off + 100)
    ClipStore(path)                                             # still opens: metadata intact
    assert verify_store(path) == [f"{path}: clips 64..69 corrupt (block 1 fails its sha256)"]
    with h5py.File(path, "r+") as f:                            # a store written before checksums existed
        del f["checksums"]
    assert len(ClipStore(path)) == 70
    notes = []
    assert verify_store(path, notes=notes) == []                # a note, not a failure
    assert len(notes) == 1 and "no checksums (old store)" in notes[0] and str(path) in notes[0]


def test_rebuilt_clip_store_after_one_file_changed_refuses_stale_targets(tmp_path):
    root = make_esc50(tmp_path / "esc50")
    first = tmp_path / "a.h5"
    prepare(read_esc50(root), first, workers=1, progress=False)
    targets = tmp_path / "a.targets.zarr"
    build_targets(ClipStore(first), targets, FakeTeacher(), clips_per_shard=8, progress=False)
    name = sorted((root / "audio").iterdir())[3]
    write_wav(name, tone(5.0, freq=1234.0, seed=99))            # one file changed, same name and length
    second = tmp_path / "b.h5"
    prepare(read_esc50(root), second, workers=1, progress=False)
    a, b = ClipStore(first), ClipStore(second)
    assert a.clip_ids == b.clip_ids and a.fingerprint != b.fingerprint
    with pytest.raises(StoreError, match="fingerprint"):
        check_targets_match(b, TargetStore(targets), targets)
    assert any("fingerprint" in p for p in verify_store(targets, second))
    check_targets_match(a, TargetStore(targets), targets)              # the store it was made from still pairs


def test_pretraining_reader_refuses_a_shard_with_flipped_bytes(tmp_path):
    clips = tmp_path / "clips.h5"
    write_clips(clips, n=8)
    targets = tmp_path / "t.zarr"
    build_targets(ClipStore(clips), targets, FakeTeacher(), clips_per_shard=4, progress=False)
    ds = PretrainDataset(clips, targets)
    before = ds[5]["targets"].clone()
    f = shard_file(targets, 1)
    _flip(f, f.stat().st_size // 3)                             # inside clip data, not the index
    fresh = PretrainDataset(clips, targets)                     # a new process's view
    assert fresh[1]["targets"].shape == before.shape            # shard 0 is fine
    with pytest.raises(StoreError) as err:
        fresh[5]
    assert str(err.value).startswith(f"{f}: shard 1 is corrupt")
    assert TargetStore(targets, verify=False)[5].shape == tuple(before.shape)   # unchecked, it reads on


def test_a_dataloader_worker_hitting_a_damaged_shard_gives_one_line(tmp_path):
    """torch re-raises a worker's exception as cls(traceback text): still a StoreError, cut back to
    the worker's own one-line message naming the shard."""
    from torch.utils.data import DataLoader
    clips = tmp_path / "clips.h5"
    write_clips(clips, n=8)
    targets = tmp_path / "t.zarr"
    build_targets(ClipStore(clips), targets, FakeTeacher(), clips_per_shard=4, progress=False)
    f = shard_file(targets, 1)
    _flip(f, f.stat().st_size // 3)
    loader = DataLoader(PretrainDataset(clips, targets), batch_size=4, num_workers=1)
    with pytest.raises(StoreError) as err:
        list(loader)
    assert str(err.value).startswith(f"{f}: shard 1 is corrupt") and "\n" not in str(err.value)
    assert err.value.path == f


def test_store_verify_cli_notes_an_old_clip_store_and_passes(tmp_path):
    from typer.testing import CliRunner

    from pipeline.app.cli import app
    path = tmp_path / "clips.h5"
    write_clips(path, n=4)
    with h5py.File(path, "r+") as f:                            # a store written before checksums existed
        del f["checksums"]
    res = CliRunner().invoke(app, ["store", "verify", str(path)])
    assert res.exit_code == 0, res.output
    assert f"note: {path}: no checksums (old store)" in res.output and f"{path}: OK" in res.output
