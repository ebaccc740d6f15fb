"""Records -> HDF5 clip store: parallel, resumable, crash-safe (see cache_tools/clips/store.py).

Clips are decoded and featurised in fixed blocks by worker processes; each finished block becomes
a part file, so a rerun after a crash or `kill -9` redoes only unfinished blocks and yields the same
store as an uninterrupted run. Bad files (corrupt, empty, truncated, non-finite, silent) are
skipped and listed with their reason in `F.h5.report.json`.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache_tools.clips import store as clip_store
from cache_tools.disk_space import disk_full, is_disk_full, require_space
from cache_tools.errors import InputFileError
from cache_tools.fingerprint import json_fingerprint
from cache_tools.names import SPLITS, clip_store_name
from cache_tools.clips.sources import SOURCE_IDENTITY, changed_sources, file_identity
from cache_tools.writer_lock import writer_lock
from pipeline.audio_io import SAMPLE_RATE, load_clip, pad_to, to_int16
from pipeline.features import FBANK_PARAMS, NORM_STATS, fbank
from pipeline.parent_watch import die_with_parent
from pipeline.readers import ClipRecord, DatasetSpec, read_audioset, read_esc50, read_spc1, read_spc2

BLOCK_SIZE = 64


@dataclass(frozen=True)
class _Geometry:            # what a worker needs to turn a record into arrays
    clip_seconds: float
    target_length: int
    multilabel: bool
    num_classes: int
    with_folds: bool
    source_root: str = "/"  # clip sources are recorded relative to it (clip_store.SOURCE_DATASETS)
    with_splits: bool = False   # per-clip train/valid/test (readers/folder.py)

    @property
    def samples(self) -> int:
        return int(round(self.clip_seconds * SAMPLE_RATE))


def featurise(rec: ClipRecord, g: _Geometry) -> tuple[np.ndarray, np.ndarray, int] | str:
    """(fbank [T,128] float16, wave [S] int16, real samples n <= S), or the reason the clip is unusable."""
    seconds = g.clip_seconds if rec.duration is None else min(rec.duration, g.clip_seconds)
    wave, reason = load_clip(rec.path, seconds, rec.start)       # [n], n <= S
    if wave is None:
        return reason
    w16 = to_int16(wave)                                          # [n]; fbank from the stored samples
    fb = fbank(w16.astype(np.float32) / 32768.0, g.target_length)  # [T,128]
    if not torch.isfinite(fb).all():
        return "non-finite features"
    return fb.numpy().astype(np.float16), pad_to(w16, g.samples), min(len(w16), g.samples)


def source_of(rec: ClipRecord, g: _Geometry, length: int, memo: dict | None = None) -> tuple:
    """What the clip store records of where a clip came from (clip_store.SOURCE_DATASETS) and what the
    file was (cache_tools.clips.sources: size, mtime_ns, sha256; `memo` hashes a shared file once)."""
    seconds = g.clip_seconds if rec.duration is None else min(rec.duration, g.clip_seconds)
    size, mtime_ns, digest = file_identity(rec.path, memo)
    return (os.path.relpath(Path(rec.path).resolve(), g.source_root), float(rec.start), float(seconds), length,
            size, mtime_ns, digest)


def source_root(records: list[ClipRecord]) -> str:
    """The deepest folder holding every record's file (absolute): the clip store's `source_root`."""
    return os.path.commonpath([str(Path(r.path).resolve().parent) for r in records])


def _process_block(block: int, records: list[ClipRecord], g: _Geometry, parts: Path) -> tuple[int, int, int]:
    """Featurise one block and write its part file. Returns (block, clips in it, skipped)."""
    ids, fbanks, waves, labels, folds, splits, skipped, sources = [], [], [], [], [], [], [], []
    memo: dict = {}
    for rec in records:
        try:
            out = featurise(rec, g)
        except Exception as e:  # noqa: BLE001 - one odd file must not end the run
            out = f"error: {type(e).__name__}: {e}"
        if isinstance(out, str):
            skipped.append({"clip_id": rec.clip_id, "path": str(rec.path), "start": rec.start, "reason": out})
            continue
        try:
            sources.append(source_of(rec, g, out[2], memo))
        except OSError as e:                                  # gone between decoding and hashing
            skipped.append({"clip_id": rec.clip_id, "path": str(rec.path), "start": rec.start,
                            "reason": f"unreadable: {e.strerror}"})
            continue
        ids.append(rec.clip_id)
        fbanks.append(out[0])
        waves.append(out[1])
        if g.multilabel:
            hot = np.zeros(g.num_classes, np.uint8)               # [C]
            hot[list(rec.label)] = 1
            labels.append(hot)
        else:
            labels.append(np.int64(rec.label))
        folds.append(rec.fold or 0)
        splits.append(clip_store.SPLIT_NAMES.index(rec.split) if rec.split else -1)
    n = len(ids)
    fb = np.stack(fbanks) if n else np.zeros((0, g.target_length, FBANK_PARAMS["num_mel_bins"]), np.float16)
    wv = np.stack(waves) if n else np.zeros((0, g.samples), np.int16)
    lab = np.array(labels, dtype=np.uint8 if g.multilabel else np.int64)
    if g.multilabel and not n:
        lab = lab.reshape(0, g.num_classes)                      # [0,C]
    paths, starts, seconds, lengths, sizes, mtimes, digests = zip(*sources) if n else ((),) * 7
    src = {"source_path": np.array(paths, dtype=object), "source_start": np.array(starts, np.float64),
           "source_seconds": np.array(seconds, np.float64), "wave_length": np.array(lengths, np.int32),
           "source_size": np.array(sizes, np.int64), "source_mtime_ns": np.array(mtimes, np.int64),
           "source_sha256": np.array(digests, dtype="S64")}
    clip_store.write_part(parts, block, ids, fb, wv, lab, np.array(folds, np.int8) if g.with_folds else None,
                          skipped, src, np.array(splits, np.int8) if g.with_splits else None)
    return block, len(records), len(skipped)


def _init_worker(parent: int) -> None:
    """Pool worker set-up: one torch thread; exit when the parent dies (pipeline.parent_watch)."""
    torch.set_num_threads(1)
    die_with_parent(parent)


def _run_block(args) -> tuple[int, int, int]:
    return _process_block(*args)


def store_attrs(spec: DatasetSpec, source: str, root: str = "/") -> dict:
    mean, std = NORM_STATS[spec.dataset]
    return dict(source_root=root, dataset=spec.dataset, split=spec.split, multilabel=spec.multilabel,
                class_names=list(spec.class_names), class_ids=list(spec.class_ids),
                target_length=spec.target_length, clip_seconds=spec.clip_seconds,
                feature_params=dict(FBANK_PARAMS), norm_mean=mean, norm_std=std, source_fingerprint=source)


def source_fingerprint(spec: DatasetSpec, block_size: int) -> str:
    """Hash of everything that decides the store's contents (records, geometry, features, blocks).

    File names, not full paths: the same dataset reached through another path is the same input."""
    recs = [(r.clip_id, r.path.name, r.label, r.fold, r.start, r.duration, r.kind)
            + ((r.split,) if r.split is not None else ()) for r in spec.records]   # as before for split-less data
    return json_fingerprint([spec.dataset, spec.split, spec.class_ids, spec.target_length, spec.clip_seconds,
                             FBANK_PARAMS, block_size, recs])


def prepare(spec: DatasetSpec, out: Path | str, workers: int | None = None, block_size: int = BLOCK_SIZE,
            progress: bool = True) -> dict:
    """Write `spec` to the clip store `out`; returns the report. Skips a complete store of the same input.
    One writer per store: a second run on the same `out` is refused at once (`out.lock`)."""
    out = Path(out)
    with writer_lock(out, "prepare"):
        return _prepare(spec, out, workers, block_size, progress)


def _prepare(spec: DatasetSpec, out: Path, workers: int | None, block_size: int, progress: bool) -> dict:
    source = source_fingerprint(spec, block_size)
    if out.exists():
        attrs = clip_store.check_store(out)
        if attrs.get("source_fingerprint") != source:
            raise InputFileError(f"{out}: exists but was made from other input or settings; delete it to rebuild")
        check_sources(out)
        shutil.rmtree(clip_store.parts_dir(out), ignore_errors=True)   # left by a kill after the rename
        clip_store.tmp_path(out).unlink(missing_ok=True)
        return {"store": str(out), "status": "already complete", "written": None}
    if not spec.records:
        raise InputFileError(f"{out}: {spec.dataset}/{spec.split} lists no clips with audio "
                           f"({len(spec.missing)} listed clips have no file)")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = clip_store.open_parts(out, {"source_fingerprint": source, "n": len(spec.records),
                                        "datasets": ["fbank", "wave", *clip_store.SOURCE_DATASETS,
                                                     *SOURCE_IDENTITY]})
    g = _Geometry(spec.clip_seconds, spec.target_length, spec.multilabel, spec.num_classes,
                  with_folds=any(r.fold is not None for r in spec.records), source_root=source_root(spec.records),
                  with_splits=any(r.split is not None for r in spec.records))
    blocks = [spec.records[i:i + block_size] for i in range(0, len(spec.records), block_size)]
    done = clip_store.finished_blocks(parts)
    todo = [(b, recs, g, parts) for b, recs in enumerate(blocks) if b not in done]
    need = expected_bytes(g, len(spec.records), sum(len(t[1]) for t in todo), block_size)
    require_space(out, need)                                     # before hours of work, not at assembly
    t0 = time.time()
    bar = tqdm(total=len(spec.records), initial=sum(len(blocks[b]) for b in done if b < len(blocks)),
               unit="clip", desc=out.name, disable=not progress, dynamic_ncols=True)
    try:
        _run_blocks(todo, workers, bar)
        bar.close()
        report = clip_store.assemble(out, len(blocks), store_attrs(spec, source, g.source_root), {
            "store": str(out), "dataset": spec.dataset, "split": spec.split,
            "listed": len(spec.records) + len(spec.missing), "missing": list(spec.missing)})
    except OSError as e:                                         # finished parts stay: a rerun resumes
        if is_disk_full(e):
            raise disk_full(out, need) from None
        raise
    report["seconds"] = round(time.time() - t0, 3)   # only in the returned dict, not in the files
    return report


def check_sources(out: Path) -> None:
    """InputFileError if a source file of the complete store `out` changed since it was made (the
    same names are not the same input: cache_tools.clips.sources; one stat per file unchanged)."""
    store = clip_store.ClipStore(out)
    if not store.has_source_identity:
        return                                                   # an older store: nothing recorded to compare
    changed, _, _ = changed_sources(store)
    if changed:
        raise InputFileError(f"{out}: {len(changed)} source file{'s' if len(changed) > 1 else ''} changed since "
                             f"it was made (first: {changed[0]}); delete it to rebuild")


def expected_bytes(g: _Geometry, clips: int, todo: int, block_size: int = BLOCK_SIZE) -> int:
    """Disk the rest of the run needs: the `todo` clips' part files, then two parts more while
    assembly folds them into the store (each part is removed once copied: ~1x the store, never 2x);
    2% and 8 MiB of margin for HDF5's own data."""
    per_clip = g.target_length * FBANK_PARAMS["num_mel_bins"] * 2 + g.samples * 2 + max(g.num_classes, 8) + 64
    return int(1.02 * per_clip * (todo + 2 * min(block_size, clips))) + 8 * 2**20


def _run_blocks(todo: list, workers: int | None, bar) -> None:
    """Featurise and write every block in `todo`: in-process with one worker, else a process pool."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)                                 # one clip at a time: threads only contend
        try:
            for task in todo:
                bar.update(_run_block(task)[1])
        finally:
            torch.set_num_threads(threads)
        return
    # fork where there is one (no re-import of torch per worker); workers only open their own files
    # and run torch single-threaded, as DataLoader workers do
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        for fut in as_completed([pool.submit(_run_block, task) for task in todo]):
            bar.update(fut.result()[1])


def summary_line(report: dict) -> str:
    if report.get("status") == "already complete":
        return f"{report['store']}: already complete, skipped"
    secs = report["seconds"]
    done = report["written"] + len(report["skipped"])
    return (f"{report['store']}: {report['written']} clips written, {len(report['skipped'])} skipped, "
            f"{len(report['missing'])} missing ({secs:.1f} s, {done / max(secs, 1e-9):.1f} clips/s); "
            f"report {clip_store.report_path(report['store'])}")


_MINI_READERS = {   # dataset -> reader of its split under the mini-data root
    "audioset": lambda root, split: read_audioset(root / "audioset", split=split),
    "esc50": lambda root, split: read_esc50(root / "esc50"),
    "spc2": lambda root, split: read_spc2(root / "speech_commands_v0.02", split),
    "spc1": lambda root, split: read_spc1(root / "speech_commands_v0.01", root / "speech_commands_test_set_v0.01",
                                          split),
}


def mini_jobs(root: Path | str) -> list[tuple[str, callable]]:
    """(store file name, reader thunk) for every store of the built-in mini datasets under `root`,
    in cache_tools.names order."""
    root = Path(root)
    return [(clip_store_name(d, split), partial(_MINI_READERS[d], root, split))
            for d, splits in SPLITS.items() for split in splits]


def prepare_all(root: Path | str, out: Path | str, workers: int | None = None, block_size: int = BLOCK_SIZE,
                progress: bool = True) -> list[dict]:
    """Every mini store (AudioSet x3, ESC-50, SPC-2 x3, SPC-1 x3) from the mini-data `root` into the
    folder `out`; complete stores are skipped. Prints one summary line per store; returns the reports."""
    reports = []
    for name, read in mini_jobs(root):
        reports.append(prepare(read(), Path(out) / name, workers=workers, block_size=block_size, progress=progress))
        if progress:
            print(summary_line(reports[-1]), flush=True)
    return reports
