"""What must not multiply by processes at AS-2M scale (docs/scale.md): the target store hashed once
per node (never by DataLoader workers, not again at a restart unless a shard changed), and the
per-process memory of opening stores and building the datasets, measured at two store sizes."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from bench.synthetic import logging_hash
from cache_tools.targets import verify as shard_verify
from cache_tools.targets.store import TargetStore, shard_file
from tests.stores import write_clips, write_targets
from train.data import PretrainDataset, StepBatchSampler, build_loader, verify_on_node


@pytest.fixture
def hashes(tmp_path, monkeypatch):
    """Every file any process (DataLoader workers are forked) hashes: a list of (pid, path)."""
    log = tmp_path / "hashed.log"
    monkeypatch.setattr(shard_verify, "hash_file", logging_hash(shard_verify.hash_file, log))
    return lambda: [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()] if log.exists() else []


def _stores(tmp_path, n=16):
    clips = write_clips(tmp_path / "clips.h5", n)
    targets = write_targets(tmp_path / "t.zarr", clips)                  # 4 clips per shard
    old = time.time() - 3600                                             # written an hour ago (not racy)
    for k in range(-(-n // 4)):
        os.utime(shard_file(targets, k), (old, old))
    return clips, targets


def test_workers_hash_nothing_and_a_restart_hashes_only_a_changed_shard(tmp_path, hashes):
    clips, targets = _stores(tmp_path)
    assert verify_on_node([targets], local_rank=0) == 4                  # local rank 0: every shard once
    assert len(hashes()) == 4
    assert verify_on_node([targets], local_rank=1) == 0                  # the other ranks of the node wait
    ds = PretrainDataset(clips, targets)
    sampler = StepBatchSampler(len(ds), batch_size=4, accum_steps=1, rank=0, world_size=1, seed=0)
    loader = build_loader(ds, sampler, num_workers=2, pin_memory=False, seed=0)
    got = [b["targets"] for b in loader]
    assert len(got) == 4 and all(t.shape == (4, 8, 2, 16) for t in got)
    worker_pids = {pid for pid, _ in hashes()} - {str(os.getpid())}
    assert len(hashes()) == 4 and not worker_pids                        # the workers hashed nothing
    assert verify_on_node([targets], local_rank=0) == 0                  # a second start: nothing
    f = shard_file(targets, 2)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))             # shard 2 changed (its mtime)
    assert verify_on_node([targets], local_rank=0) == 1
    assert hashes()[-1][1] == str(f)
    assert TargetStore(targets)[9].shape == (8, 2, 16) and len(hashes()) == 5   # a reader: one stat a shard


def test_a_corrupt_shard_stops_local_rank_0_and_is_never_vouched_for(tmp_path, hashes):
    from cache_tools.errors import StoreError

    clips, targets = _stores(tmp_path)
    f = shard_file(targets, 1)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"shard 1 is corrupt"):
        verify_on_node([targets], local_rank=0)
    with pytest.raises(StoreError, match=r"shard 1 is corrupt"):        # still hashed, still refused
        TargetStore(targets)[5]


def test_a_fresh_shard_is_not_remembered_within_the_racy_window(tmp_path, hashes):
    clips = write_clips(tmp_path / "clips.h5", 8)
    targets = write_targets(tmp_path / "t.zarr", clips)                  # just written: racy
    assert verify_on_node([targets], local_rank=0) == 2
    assert verify_on_node([targets], local_rank=0) == 2                  # hashed again, not trusted yet


def _folder_bytes(d) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def test_prepare_peak_disk_stays_near_the_final_store(tmp_path, monkeypatch):
    """Sampled before every file removal (parts folded in, the parts folder at the end) and by a
    polling thread: prepare's output folder never holds much more than the finished store."""
    import shutil
    import threading

    from cache_tools.clips import store as clip_store
    from pipeline.prepare import prepare
    from pipeline.readers import read_esc50
    from tests.fixtures_audio import make_esc50

    root = make_esc50(tmp_path / "esc50", per_fold=2)                  # 30 clips of 5 s
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    peak = [0]

    def sample():
        peak[0] = max(peak[0], _folder_bytes(out_dir))

    real_unlink, real_rmtree = Path.unlink, shutil.rmtree
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (sample(), real_unlink(self, *a, **k))[1])
    monkeypatch.setattr(clip_store.shutil, "rmtree", lambda *a, **k: (sample(), real_rmtree(*a, **k))[1])
    done = threading.Event()
    poll = threading.Thread(target=lambda: [sample() or time.sleep(0.002) for _ in iter(done.is_set, True)])
    poll.start()
    try:
        prepare(read_esc50(root), out_dir / "esc50.h5", workers=1, block_size=2, progress=False)
    finally:
        done.set()
        poll.join()
    final = (out_dir / "esc50.h5").stat().st_size
    assert final > 5 * 2**20
    assert peak[0] <= 1.1 * final + 2**20, (peak[0], final)                # was 2.0x: parts + the copy
    assert not (out_dir / "esc50.h5.parts").exists()


def _opened_bytes(clips, targets) -> int:
    """Bytes a process keeps (tracemalloc: Python objects and numpy arrays) after opening the stores,
    building the pretraining and fine-tuning datasets and reading one item of each."""
    import gc
    import tracemalloc

    from cache_tools.clips.store import ClipStore
    from train.finetune.data import ClipDataset

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ds = PretrainDataset(clips, targets)
    item = ds[len(ds) - 1]
    store = ClipStore(clips)
    ft = ClipDataset(store)
    x, y = ft[len(ft) - 1]
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert item["targets"].shape == (8, 2, 16) and x.shape[0] == 1
    return kept


def test_per_process_memory_does_not_grow_with_the_store(tmp_path):
    import torch

    from tests.stores import fake_teacher, write_target_store

    kept = {}
    for n in (100, 200, 800):                      # 100: a warm-up (first-use caches of the libraries)
        clips = write_clips(tmp_path / f"c{n}.h5", n)
        from cache_tools.clips.store import ClipStore
        store = ClipStore(clips)
        waves = torch.from_numpy(np.stack([store.wave(i) for i in range(n)]).astype(np.float32) / 32768.0)
        ident = {"teacher": "fake-teacher", "checkpoint": None, "checkpoint_sha256": "untrained:seed=7",
                 "teacher_mel": {}, "clip_fingerprint": store.fingerprint}
        targets = write_target_store(tmp_path / f"t{n}.zarr", fake_teacher(waves).numpy(), ident, clips_per_shard=800)
        kept[n] = _opened_bytes(clips, targets)
    growth_per_clip = (kept[800] - kept[200]) / 600
    # a list of clip-id str and the labels in memory cost ~75 bytes a clip here (~600 B with AudioSet's
    # 527 classes): 2 M clips x 8 ranks x their workers. Now nothing N-sized is kept at open; the bound
    # leaves a few KB for allocations that are not the store's (one 3.12 run in a long batch saw some)
    assert growth_per_clip < 10, kept


def test_parallel_audio_scan_lists_what_the_serial_walk_lists(tmp_path):
    from pipeline.readers import audio_files
    from pipeline.readers.audioset import scan_audio

    for i, rel in enumerate(["a/x.wav", "a/b/y.FLAC", "c/z.txt", "top.wav", "c/d/e/w.mp3", "c/.hidden.wav"]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\0" * i)
    (tmp_path / "f.wav").mkdir()                                          # a folder named like audio: not a file
    assert scan_audio(tmp_path, workers=3) == audio_files(tmp_path)
    assert len(audio_files(tmp_path)) == 5


def test_parallel_clip_store_verify_names_the_same_block_as_the_serial_one(tmp_path):
    import h5py

    from cache_tools.clips.checksums import verify_checksums

    path = write_clips(tmp_path / "c.h5", 40 * 64 + 3)                   # 41 checksum blocks
    with h5py.File(path, "r") as f:
        off = f["fbank"].id.get_chunk_info(30 * 64 + 5).byte_offset
    with open(path, "r+b") as f:
        f.seek(off + 10)
        f.write(b"\xff" * 8)
    want = [f"{path}: clips 1920..1983 corrupt (block 30 fails its sha256)"]
    assert verify_checksums(path, workers=1) == want == verify_checksums(path, workers=2)


def test_targets_decodes_with_this_ranks_share_of_the_cores(monkeypatch):
    from pipeline.targets import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 11                                        # 96 cores / 8 ranks, one for the rank
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers() == 95
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 1


def test_bench_scale_section_runs_and_its_rows_hold(tmp_path):
    """`make bench`'s scale rows at a toy size: what docs/scale.md's table is made of."""
    import json

    from bench import bench_scale

    assert bench_scale.main(["--sizes", "130", "--out", str(tmp_path / "s.json"), "--tmp", str(tmp_path / "w")]) == 0
    row = json.loads((tmp_path / "s.json").read_text())["rows"]["130"]
    integrity, prep, mem = row["integrity"], row["prepare"], row["memory"]
    assert integrity["hashed_by_workers_before_mb"] == pytest.approx(2 * integrity["store_mb"], rel=0.02)
    assert integrity["hashed_by_workers_after_mb"] == 0 == integrity["hashed_by_main_after_mb"]
    assert prep["peak_disk_over_store"] < 1.5 < prep["peak_disk_over_store_before"]
    assert mem["open_bytes_per_clip_before"] > 500 and mem["open_kept_bytes"] < mem["open_kept_bytes_before"] + 2**20


def test_finetuning_weights_read_labels_in_blocks_not_whole(tmp_path):
    """AS-2M fine-tuning builds the class-balance weights on every rank: two passes over row blocks of
    the stores' labels, never the [N, 527] array (1 GB per rank at 2 M). Same weights as the array."""
    import tracemalloc

    from tests.stores import write_clip_store
    from train.finetune import data as fd
    from train.finetune.augment import TrainClips

    rng = np.random.default_rng(0)
    names = [f"c{k}" for k in range(527)]
    peaks = {}
    for n in (3000, 12000):
        labels = (rng.random((n, 527)) < 0.01).astype(np.uint8)
        labels[np.arange(n), rng.integers(0, 527, n)] = 1
        store = write_clip_store(tmp_path / f"s{n}.h5", np.zeros((n, 16, 128), np.float16),
                                 np.zeros((n, 8), np.int16), labels, names)
        rows = np.concatenate([np.arange(0, n, 3), rng.permutation(n)[:50]])   # a subset, partly scattered
        ds = TrainClips([store], [rows])
        assert np.array_equal(np.concatenate(list(ds.label_blocks())), labels[rows])
        expected = fd.class_balance_weights(labels[rows])                      # the one-array form
        blocks = lambda: store.label_blocks(rows, block=500)                   # noqa: E731
        tracemalloc.start()
        got = fd.class_balance_weights(blocks)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the whole label array grows by 9000 x 527 B = 4.7 MB between the sizes; blocks only by the [n] outputs
    assert peaks[12000] - peaks[3000] < 1_000_000, peaks
