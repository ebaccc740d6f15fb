"""HDF5 clip store: parts -> atomic assemble, the reader, refusing incomplete stores, fingerprints, atomic writes."""
from __future__ import annotations

import hashlib
import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from cache_tools.clips import store as clip_store
from cache_tools.atomic import atomic_path
from cache_tools.clips.store import ClipStore
from cache_tools.fingerprint import assignment_digest, clip_fingerprint
from cache_tools.errors import StoreError

T, F, S, C = 12, 128, 320, 3
PARAMS = {"num_mel_bins": F, "frame_shift": 10}


def _block(rng, ids, multilabel=False):
    n = len(ids)
    fb = rng.normal(-5, 3, size=(n, T, F)).astype(np.float16)             # [n,T,F]
    wv = rng.integers(-3000, 3000, size=(n, S)).astype(np.int16)          # [n,S]
    lab = (rng.random((n, C)) < 0.5).astype(np.uint8) if multilabel else rng.integers(0, C, n).astype(np.int64)
    return fb, wv, lab


def _attrs(dataset="esc50", multilabel=False):
    return dict(dataset=dataset, split="all", multilabel=multilabel, class_names=["a", "b, c", "d"],
                class_ids=["/m/1", "/m/2", "/m/3"], target_length=T, clip_seconds=S / 16000,
                feature_params=PARAMS, norm_mean=-6.6, norm_std=5.3)


def _write_store(path, multilabel=False, blocks=((0, 1, 2), (), (3, 4))):
    """Three blocks (the middle one all skipped) -> assembled store; returns the concatenated arrays."""
    rng = np.random.default_rng(0)
    d = clip_store.open_parts(path, {"job": 1})
    all_fb, all_wv, all_lab, ids, folds = [], [], [], [], []
    for b, idx in enumerate(blocks):
        cid = [f"clip{i}" for i in idx]
        fb, wv, lab = _block(rng, cid, multilabel)
        if not idx:
            lab = lab.reshape(0, C) if multilabel else lab
        fo = np.array([i % 5 + 1 for i in idx], np.int8)
        clip_store.write_part(d, b, cid, fb, wv, lab, fo, [] if idx else [{"clip_id": "bad", "reason": "silent"}])
        all_fb.append(fb), all_wv.append(wv), all_lab.append(lab), ids.extend(cid), folds.append(fo)
    report = clip_store.assemble(path, len(blocks), _attrs(multilabel=multilabel), {"store": str(path)})
    return np.concatenate(all_fb), np.concatenate(all_wv), np.concatenate(all_lab), ids, np.concatenate(folds), report


def test_assemble_and_read_back(tmp_path):
    path = tmp_path / "s.h5"
    fb, wv, lab, ids, folds, report = _write_store(path)
    assert not clip_store.parts_dir(path).exists() and not clip_store.tmp_path(path).exists()
    assert report["written"] == 5 and report["skipped"] == [{"clip_id": "bad", "reason": "silent"}]
    assert clip_store.report_path(path).is_file()
    s = ClipStore(path)
    assert len(s) == 5 and s.clip_ids == ids and s.num_classes == C and not s.multilabel
    assert s.class_names == ["a", "b, c", "d"] and s.class_ids[0] == "/m/1"
    assert s.target_length == T and s.sample_rate == 16000 and s.norm_mean == -6.6
    for i in range(5):
        np.testing.assert_array_equal(s.fbank(i), fb[i])
        np.testing.assert_array_equal(s.wave(i), wv[i])
        assert s.label(i).dtype == np.int64 and int(s.label(i)) == lab[i]
    np.testing.assert_array_equal(s.folds, folds)
    digests = []                                           # one checksum block per part: its clips' fbank, wave, label
    for part in ((0, 1, 2), (3, 4)):                       # (the all-skipped part has none)
        h = hashlib.sha256()
        for i in part:
            for row in (fb[i], wv[i], lab[i]):
                h.update(row.tobytes())
        digests.append(h.hexdigest())
    content = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    with h5py.File(path) as f:                             # computed by the workers that wrote the parts
        assert f["checksum_rows"][:].tolist() == [0, 3, 5]
    assignment = assignment_digest(folds, None)                   # the folds are part of the identity
    assert s.fingerprint == clip_fingerprint(ids, PARAMS, T, content=content, assignment=assignment) == report["fingerprint"]
    assert s.fingerprint != clip_fingerprint(ids, PARAMS, T, content=content)
    assert s.attrs["stats_mean"] == pytest.approx(fb.astype(np.float64).mean(), rel=1e-9)
    assert s.attrs["stats_std"] == pytest.approx(fb.astype(np.float64).std(), rel=1e-6)
    assert s.attrs["skipped"] == 1 and s.attrs["complete"] is True
    with h5py.File(path) as f:
        assert f["fbank"].chunks == (1, T, F) and f["wave"].chunks == (1, S)
        assert f["fbank"].compression is None and f["fbank"].dtype == np.float16
        assert f["wave"].dtype == np.int16 and f["labels"].dtype == np.int64
    text = s.summary()
    assert "esc50" in text and "clips 5" in text and s.fingerprint in text and "skipped 1" in text


def test_multilabel_store(tmp_path):
    fb, wv, lab, ids, _, _ = _write_store(tmp_path / "m.h5", multilabel=True)
    s = ClipStore(tmp_path / "m.h5")
    assert s.multilabel and s.labels.dtype == np.uint8 and s.labels.shape == (5, C)
    np.testing.assert_array_equal(s.label(3), lab[3].astype(np.float32))
    assert s.label(3).dtype == np.float32


def _read_in_child(store, q):
    q.put(float(store.fbank(4).astype(np.float32).sum()))


def test_reader_is_fork_and_pickle_safe(tmp_path):
    fb, *_ = _write_store(tmp_path / "s.h5")
    s = ClipStore(tmp_path / "s.h5")
    s.fbank(0)                                    # parent holds an open handle
    q = multiprocessing.get_context("fork").Queue()
    p = multiprocessing.get_context("fork").Process(target=_read_in_child, args=(s, q))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and q.get(timeout=5) == pytest.approx(float(fb[4].astype(np.float32).sum()))
    clone = pickle.loads(pickle.dumps(s))
    assert clone._file is None
    np.testing.assert_array_equal(clone.fbank(2), fb[2])


def test_refuses_missing_and_incomplete_stores(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(StoreError, match="no such clip store"):
        ClipStore(path)
    clip_store.tmp_path(path).write_bytes(b"half")
    with pytest.raises(StoreError, match=r"x\.h5: incomplete: assembly was interrupted"):
        ClipStore(path)
    clip_store.tmp_path(path).unlink()
    d = clip_store.open_parts(path, {"job": 1})
    fb, wv, lab = _block(np.random.default_rng(0), ["a"])
    clip_store.write_part(d, 0, ["a"], fb, wv, lab, None, [])
    with pytest.raises(StoreError, match="only 1 finished blocks"):
        ClipStore(path)
    with pytest.raises(StoreError, match="2 of 3 parts missing"):
        clip_store.assemble(path, 3, _attrs(), {})
    with h5py.File(path, "w") as f:                # a file whose writer died before `complete`
        f.attrs["format"] = clip_store.FORMAT
    with pytest.raises(StoreError, match="complete"):
        ClipStore(path)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        ClipStore(path)


def test_open_parts_drops_parts_of_another_job(tmp_path):
    path = tmp_path / "s.h5"
    d = clip_store.open_parts(path, {"job": 1})
    fb, wv, lab = _block(np.random.default_rng(0), ["a"])
    clip_store.write_part(d, 0, ["a"], fb, wv, lab, None, [])
    (d / "part-000001.h5.tmp.123").write_bytes(b"half-written")
    assert clip_store.finished_blocks(clip_store.open_parts(path, {"job": 1})) == {0}
    assert not list(d.glob("*.tmp.*"))
    assert clip_store.finished_blocks(clip_store.open_parts(path, {"job": 2})) == set()


def test_fingerprint_depends_on_order_params_and_length():
    a = clip_fingerprint(["x", "y"], PARAMS, 128)
    assert len(a) == 16 and set(a) <= set("0123456789abcdef")
    assert a == clip_fingerprint(["x", "y"], dict(reversed(PARAMS.items())), 128)
    assert a != clip_fingerprint(["y", "x"], PARAMS, 128)
    assert a != clip_fingerprint(["xy"], PARAMS, 128)
    assert a != clip_fingerprint(["x", "y"], {**PARAMS, "frame_shift": 20}, 128)
    assert a != clip_fingerprint(["x", "y"], PARAMS, 1024)


def test_atomic_path_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
