"""HDF5 clip store (one file per dataset split): crash-safe writer (parts -> atomic assemble) + reader.

Writing: each finished block of clips is an HDF5 part file `F.h5.parts/part-NNNNNN.h5`, written to a
temporary name and renamed (atomic); the worker that writes it also records the part's checksum and
fbank sums (attrs), so assembly only copies. `assemble` folds the parts into `F.h5.tmp` in order,
removing each part once copied (disk never holds much more than one store: docs/scale.md), sets
`complete=True`, writes the JSON report `F.h5.report.json` and renames to `F.h5`. A `kill -9` leaves
finished parts (reused by a rerun) or a finished store; one during assembly costs the rerun the
blocks already folded (featurised again, to the same bytes).
Layout of the store: docs/contracts.md ("Clip store").
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from cache_tools.atomic import atomic_path, atomic_write_text
from cache_tools.clips.checksums import (CHECKSUM_PARTS_ABOUT, block_rows_of_parts, content_digest, part_summary,
                                       read_part_summary)
from cache_tools.clips.columns import ClipIds, label_blocks, label_counts
from cache_tools.disk_space import free_bytes, require_space
from cache_tools.errors import StoreError
from cache_tools.fingerprint import assignment_digest, clip_fingerprint
from cache_tools.h5_text import fixed_utf8, read_text, text_attr
from cache_tools.clips.sources import SOURCE_IDENTITY

FORMAT = "supmam-clipstore/1"
JSON_ATTRS = ("class_names", "class_ids", "feature_params")
# where each clip came from (optional: stores written before they existed fall back to `wave`):
# source_path (UTF-8, relative to the root attr `source_root`), source_start / source_seconds
# (float64 seconds: the window read from the file), wave_length (int32: real samples in `wave`);
# newer stores also source_size / source_mtime_ns / source_sha256 (cache_tools.clips.sources)
SOURCE_DATASETS = ("source_path", "source_start", "source_seconds", "wave_length")
REQUIRED_ATTRS = ("dataset", "split", "multilabel", "class_names", "class_ids", "target_length", "sample_rate",
                  "feature_params", "norm_mean", "norm_std", "fingerprint")
# what h5py raises on damaged metadata (zeroed object headers, heaps, B-trees) or bad JSON attrs
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError)
SPLIT_NAMES = ("train", "valid", "test")   # codes 0, 1, 2 of the optional per-clip `split` dataset
# text is fixed-length UTF-8 bytes (cache_tools.h5_text: no global heap for damage to hang libhdf5 on);
# stores written before that hold variable-length strings, read the same way
TEXT_DATASETS = ("clip_id", "source_path")


def damaged(path: Path | str, e: BaseException) -> StoreError:
    """One line for a clip store whose HDF5 metadata h5py cannot read."""
    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return StoreError(path, f"damaged HDF5 file ({type(e).__name__}: {why.strip(chr(39))}); rebuild it with "
                            "`supmam prepare`")


def parts_dir(path: Path | str) -> Path:
    return Path(f"{path}.parts")


def report_path(path: Path | str) -> Path:
    return Path(f"{path}.report.json")


def tmp_path(path: Path | str) -> Path:
    return Path(f"{path}.tmp")


def _atomic_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


# ---------------------------------------------------------------- writer: parts


def open_parts(path: Path | str, job: dict) -> Path:
    """Create or reuse `F.h5.parts/` for `job` (a JSON-able description); parts of another job are dropped."""
    d = parts_dir(path)
    job_file = d / "job.json"
    if d.exists() and (not job_file.is_file() or json.loads(job_file.read_text()) != json.loads(json.dumps(job))):
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob("*.tmp.*"):   # half-written parts of a killed run
        stale.unlink()
    if not job_file.is_file():
        _atomic_json(job_file, job)
    return d


def part_path(d: Path, block: int) -> Path:
    return d / f"part-{block:06d}.h5"


def finished_blocks(d: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in d.glob("part-*.h5")}


def write_part(d: Path, block: int, clip_ids: list[str], fbank: np.ndarray, wave: np.ndarray,
               labels: np.ndarray, folds: np.ndarray | None, skipped: list[dict],
               sources: dict[str, np.ndarray] | None = None, splits: np.ndarray | None = None) -> Path:
    """One block of clips -> part file, atomically. fbank [n,T,F] f16, wave [n,S] i16, labels [n,C]|[n];
    sources: the SOURCE_DATASETS, each [n] (source_path as str objects); splits [n]: codes into SPLIT_NAMES."""
    out = part_path(d, block)
    need = fbank.size * 2 + wave.size * 2 + labels.nbytes + 2**20
    if free_bytes(d) < need:     # h5py on a full file system may crash the process instead of raising
        raise OSError(errno.ENOSPC, f"No space left on device (need {need} bytes for {out.name})", str(d))
    with atomic_path(out, out.with_name(f"{out.name}.tmp.{os.getpid()}")) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("fbank", data=fbank.astype(np.float16))
        f.create_dataset("wave", data=wave.astype(np.int16))
        f.create_dataset("labels", data=labels)
        f.create_dataset("clip_id", data=fixed_utf8(clip_ids))
        if folds is not None:
            f.create_dataset("fold", data=folds.astype(np.int8))
        for k, v in (sources or {}).items():
            f.create_dataset(k, data=fixed_utf8(v) if k in TEXT_DATASETS else v)
        if splits is not None:
            f.create_dataset("split", data=splits.astype(np.int8))
        f.attrs["skipped"] = text_attr(json.dumps(skipped))
        for k, v in part_summary(fbank.astype(np.float16), wave.astype(np.int16), labels).items():
            f.attrs[k] = v
    return out


# ---------------------------------------------------------------- writer: assemble


def assemble(path: Path | str, n_blocks: int, attrs: dict, report: dict) -> dict:
    """All parts -> `F.h5` (atomic). `attrs` are the store's root attrs minus the computed ones.

    Returns the report (also written to F.h5.report.json): `report` plus kept / skipped clips.
    """
    path = Path(path)
    d = parts_dir(path)
    parts = [part_path(d, b) for b in range(n_blocks)]
    absent = [p.name for p in parts if not p.is_file()]
    if absent:
        raise StoreError(path, f"cannot assemble: {len(absent)} of {n_blocks} parts missing ({absent[:3]} ...)")
    counts, skipped, shapes = _survey_parts(parts)
    report = dict(report, written=sum(counts), skipped=skipped)
    if not report["written"]:
        _atomic_json(report_path(path), report)
        raise StoreError(path, f"no usable clips: all {len(skipped)} were skipped; see {report_path(path)}")
    biggest = max(p.stat().st_size for p in parts)                 # each part goes once folded in
    require_space(path, int(0.02 * sum(p.stat().st_size for p in parts)) + 2 * biggest + 8 * 2**20)
    with atomic_path(path, tmp_path(path)) as tmp:                 # on failure a rerun featurises what was folded
        with h5py.File(tmp, "w") as out:
            clip_ids, mean, std, digests = _copy_parts(out, parts, counts, shapes)
            out.create_dataset("checksums", data=np.array(digests, dtype="S64"))   # [B] hex sha256
            out.create_dataset("checksum_rows", data=block_rows_of_parts(counts))          # [B+1] first clip of each
            computed = dict(format=FORMAT, sample_rate=16000, skipped=len(skipped), stats_mean=mean, stats_std=std,
                            checksum=CHECKSUM_PARTS_ABOUT,
                            fingerprint=clip_fingerprint(clip_ids, attrs["feature_params"], attrs["target_length"],
                                                         content=content_digest(digests),
                                                         assignment=assignment_digest(
                                                             out["fold"][:] if "fold" in out else None,
                                                             out["split"][:] if "split" in out else None)))
            for k, v in {**attrs, **computed}.items():
                v = json.dumps(v) if k in JSON_ATTRS else v
                out.attrs[k] = text_attr(v) if isinstance(v, str) else v
            out.attrs["complete"] = True                           # last: marks a finished file
        report["fingerprint"] = computed["fingerprint"]
        _atomic_json(report_path(path), report)
    shutil.rmtree(d)
    return report


def _survey_parts(parts: list[Path]) -> tuple[list[int], list[dict], dict]:
    """(clips per part, skipped records of all parts, {dataset: (per-clip shape, dtype)})."""
    counts, skipped, shapes = [], [], None
    for p in parts:
        with h5py.File(p, "r") as f:
            counts.append(len(f["clip_id"]))
            skipped += json.loads(f.attrs["skipped"])
            if counts[-1] and shapes is None:
                shapes = {k: (f[k].shape[1:], f[k].dtype) for k in f.keys() if k not in TEXT_DATASETS}
                shapes.update({k: None for k in TEXT_DATASETS if k in f})
    return counts, skipped, shapes


def _copy_parts(out: h5py.File, parts: list[Path], counts: list[int], shapes: dict) -> tuple:
    """Fold every part's clips into `out` in order, removing each part once copied; (clip ids, fbank
    mean, fbank std, block checksums). Checksums and sums come from the parts' attrs (pool workers)."""
    n = sum(counts)
    dsets = {k: out.create_dataset(k, shape=(n, *shape), dtype=dtype,
                                   chunks=(1, *shape) if k in ("fbank", "wave") else None)
             for k, (shape, dtype) in ((k, v) for k, v in shapes.items() if v is not None)}   # fbank [N,T,F]
    texts: dict[str, list[str]] = {k: [] for k, v in shapes.items() if v is None}    # clip_id, source_path: [N]
    total, total_sq, count, offset, digests = 0.0, 0.0, 0, 0, []
    for p, c in zip(parts, counts):
        with h5py.File(p, "r") as f:
            if c:
                for k, ds in dsets.items():
                    ds[offset:offset + c] = f[k][:]
                for k in texts:
                    texts[k] += read_text(f[k])
                got = read_part_summary(f)
                sha = got["sha256"].decode() if isinstance(got["sha256"], bytes) else str(got["sha256"])
                digests += sha.split("\n")
                total, total_sq = total + float(got["fbank_sum"]), total_sq + float(got["fbank_sumsq"])
                count += int(got["fbank_count"])
        out.flush()
        p.unlink()                                                 # folded in: disk stays ~one store
        offset += c
    for k, v in texts.items():
        out.create_dataset(k, data=fixed_utf8(v))                   # [N] S<longest>
    mean = total / count
    return texts["clip_id"], float(mean), float(np.sqrt(max(total_sq / count - mean * mean, 0.0))), digests


# ---------------------------------------------------------------- reader


def _read_attrs(f: h5py.File) -> dict:
    out = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        if k in JSON_ATTRS and isinstance(v, str):
            v = json.loads(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def check_store(path: Path | str) -> dict:
    """The store's attrs if `path` is a complete clip store; else StoreError saying why."""
    path = Path(path)
    if not path.exists():
        if tmp_path(path).exists():
            raise StoreError(path, f"incomplete: assembly was interrupted (leftover {tmp_path(path).name}); "
                                   "rerun `supmam prepare` to finish it")
        if parts_dir(path).is_dir():
            k = len(finished_blocks(parts_dir(path)))
            raise StoreError(path, f"incomplete: only {k} finished blocks in {parts_dir(path).name}; "
                                   "rerun `supmam prepare` to finish it")
        raise StoreError(path, "no such clip store (create it with `supmam prepare`)")
    try:
        with h5py.File(path, "r") as f:
            attrs = _read_attrs(f)
            keys = set(f.keys())
    except OSError as e:
        if h5py.is_hdf5(path):
            raise damaged(path, e) from None
        raise StoreError(path, f"not a readable HDF5 file ({e})") from None
    except H5_ERRORS as e:
        raise damaged(path, e) from None
    if attrs.get("format") != FORMAT:
        raise StoreError(path, f"not a supmam clip store (format={attrs.get('format')!r}, expected {FORMAT!r})")
    if attrs.get("complete") is not True:
        raise StoreError(path, "incomplete: the `complete` flag is not set; rerun `supmam prepare`")
    lacking = {"fbank", "wave", "labels", "clip_id"} - keys
    if lacking:
        raise StoreError(path, f"corrupt: datasets {sorted(lacking)} are missing")
    lacking = [k for k in REQUIRED_ATTRS if k not in attrs]
    if lacking:
        raise StoreError(path, f"corrupt: attrs {lacking} are missing")
    return attrs


class ClipStore:
    """Reader. The HDF5 file is opened lazily in each process, so DataLoader workers can fork.

    Nothing N-sized is read at open but the folds and splits (int8 [N]): `label(i)` reads one row,
    `labels` reads them all on each use (a caller keeps what it needs), `clip_ids` reads the ids
    once, as one bytes array (ClipIds). Opening a store costs the same at 2 M clips as at 1 k."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.attrs = check_store(self.path)
        try:
            with h5py.File(self.path, "r") as f:
                if len(f["labels"]) and len(f["clip_id"]):          # their metadata (and first rows) read now:
                    f["labels"][0], f["clip_id"][0]                 # damage shows at open, not mid-training
                self.folds = f["fold"][:] if "fold" in f else None   # [N] int8 or None
                self.splits = f["split"][:] if "split" in f else None  # [N] int8 codes into SPLIT_NAMES, or None
                self._n = len(f["fbank"])
                self.has_sources = all(k in f for k in SOURCE_DATASETS)
                self.has_source_identity = self.has_sources and all(k in f for k in SOURCE_IDENTITY)
        except H5_ERRORS as e:
            raise damaged(self.path, e) from None
        a = self.attrs
        self.fingerprint, self.dataset, self.split = a["fingerprint"], a["dataset"], a["split"]
        self.multilabel, self.class_names, self.class_ids = bool(a["multilabel"]), a["class_names"], a["class_ids"]
        self.num_classes = len(self.class_names)
        self.target_length, self.sample_rate = int(a["target_length"]), int(a["sample_rate"])
        self.norm_mean, self.norm_std = float(a["norm_mean"]), float(a["norm_std"])
        self._file, self._pid, self._dsets = None, None, {}
        self.clip_ids = ClipIds(self)                            # [N] str, read on first use

    @property
    def labels(self) -> np.ndarray:
        """[N,C] uint8 multi-hot or [N] int64 class ids, read from the file on each use (not kept)."""
        return self._row("labels", slice(None))

    def label_blocks(self, rows: np.ndarray | None = None, block: int = 65536):
        """`labels` of `rows` (None: all) in order, `block` rows at a time (cache_tools.clips.columns)."""
        return label_blocks(self, rows, block)

    def label_counts(self) -> np.ndarray:
        """int64 [C]: clips per class, read in blocks."""
        return label_counts(self)

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():    # one handle per process (fork-safe)
            self._file, self._pid, self._dsets = h5py.File(self.path, "r"), os.getpid(), {}
        return self._file

    def _dset(self, name: str) -> h5py.Dataset:
        """Cached dataset handle: looking a dataset up by name costs ~3x a one-chunk read."""
        f = self._h5()
        if name not in self._dsets:
            self._dsets[name] = f[name]
        return self._dsets[name]

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None, "_dsets": {}}

    def __len__(self) -> int:
        return self._n

    def _row(self, name: str, i: int) -> np.ndarray:
        try:
            return self._dset(name)[i]
        except H5_ERRORS as e:
            raise damaged(self.path, e) from None

    def fbank(self, i: int) -> np.ndarray:
        return self._row("fbank", i)                             # [T,128] float16

    def wave(self, i: int) -> np.ndarray:
        return self._row("wave", i)                              # [S] int16

    def label(self, i: int) -> np.ndarray:
        row = self._row("labels", int(i))                        # one row read: labels are not kept in memory
        if self.multilabel:
            return row.astype(np.float32)                        # [C] multi-hot
        return np.asarray(row, dtype=np.int64)                   # [] class id

    def source(self, i: int, root: Path | str | None = None) -> tuple[Path, float, float]:
        """(file, start s, seconds) clip i was read from; `root` replaces the recorded source_root.
        Only for stores with has_sources."""
        rel = read_text(self._dset("source_path"), i)
        base = Path(root if root is not None else self.attrs["source_root"])
        return base / rel, float(self._dset("source_start")[i]), float(self._dset("source_seconds")[i])

    def source_identity(self, i: int) -> tuple[int, int, str] | None:
        """(size, mtime_ns, sha256 hex) of clip i's source file when `prepare` read it
        (cache_tools.clips.sources), or None for a store that did not record them."""
        if not self.has_source_identity:
            return None
        return (int(self._dset("source_size")[i]), int(self._dset("source_mtime_ns")[i]),
                self._dset("source_sha256")[i].decode("ascii"))

    def wave_length(self, i: int) -> int:
        """Samples of clip i's real audio in wave(i) (the rest is zero padding); S where not recorded."""
        if self.has_sources:
            return int(self._dset("wave_length")[i])
        return int(self._dset("wave").shape[1])

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._dsets = None, {}

    def summary(self) -> str:
        a = self.attrs
        counts = label_counts(self)
        wave_len = self._row("wave", 0).shape[0]
        lines = [
            f"clip store {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB, {a['format']})",
            f"  dataset {self.dataset}  split {self.split}  clips {len(self)}  skipped {a.get('skipped', 0)}",
            f"  classes {self.num_classes} ({'multi-label' if self.multilabel else 'single-label'}); "
            f"clips per class min {int(counts.min())} max {int(counts.max())}",
            f"  fbank float16 [{len(self)}, {self.target_length}, {a['feature_params']['num_mel_bins']}]  "
            f"wave int16 [{len(self)}, {wave_len}] at {self.sample_rate} Hz",
            f"  norm (AudioMAE) mean {self.norm_mean:.4f} std {self.norm_std:.4f}; "
            f"split stats mean {a['stats_mean']:.4f} std {a['stats_std']:.4f}",
            f"  fingerprint {self.fingerprint}",
        ]
        if self.folds is not None:
            lines.append(f"  folds {sorted(set(int(x) for x in self.folds))}")
        lines.append(f"  sources under {a['source_root']}" if self.has_sources else
                     "  no source records (an older store): stage one's teacher hears `wave`, upsampled")
        if self.splits is not None:
            counts = np.bincount(self.splits, minlength=len(SPLIT_NAMES))
            lines.append("  splits " + ", ".join(f"{n} {c}" for n, c in zip(SPLIT_NAMES, counts)))
        return "\n".join(lines)
