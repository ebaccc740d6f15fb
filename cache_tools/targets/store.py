"""Target store: Zarr v3 sharded array of teacher token grids, its writer and a memory-mapped reader.

Layout of `T.zarr` (any zarr v3 client opens it: `zarr.open_group(T)["targets"]`):

    T.zarr/zarr.json                  group; attrs {"format": "supmam-targets/1", "array": "targets"}
    T.zarr/targets/zarr.json          float16 [N, Tt, Ft, D]; chunk (1, Tt, Ft, D) = one clip;
                                      shard (K, Tt, Ft, D) = K clips; codecs bytes (+ zstd optional)
    T.zarr/targets/c/<k>/0/0/0        shard k = clips [k*K, (k+1)*K); chunks then index at the end
    T.zarr/progress/zarr.json         an empty zarr group holding the completion records below
    T.zarr/progress/shard-<k>.json    {"complete": true, "sha256": <of the shard file or null>, "clips": n,
                                      "inputs": {<teacher input>: clips}}  (inputs: what the teacher heard)

Completion: zarr-python writes each shard file atomically (temp file + rename), so a shard is on
disk whole or not at all. Only after that is its record written (temp file + rename). A rerun
skips shards whose record exists and whose file still has the recorded size, and rewrites every
other shard from scratch, so a store finished after `kill -9` is byte-identical to one written in a
single run. When every shard has a record, `finalize` copies the records into the array attrs
(`shards`), sums their `inputs` into `teacher_input_counts` (and `teacher_input`: the one kind, or
"mixed") and sets `complete=True`; `TargetStore` refuses a store without that.

Empty chunks: zarr does not store a chunk equal to the fill value (0), and a shard whose chunks
are all empty has no file (record sha256 null). Readers return zeros for such clips.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cache_tools.atomic import atomic_write_text
from cache_tools.disk_space import require_space
from cache_tools.errors import StoreError   # one error class for both stores
from cache_tools.fingerprint import file_sha256
from cache_tools.targets.layout import ARRAY, read_attrs, shard_file  # noqa: F401  (importers use these names here too)

FORMAT = "supmam-targets/1"
SHARD_BYTES = 128 * 2**20          # default shard size: ~128 MiB
MAX_U64 = 2**64 - 1
# what a target store is: the clips it covers (PER_STORE), the teacher that made it, and its layout (LAYOUT_KEYS);
# a writer resumes only a store equal on all of them, pretraining reads several stores only from one teacher
PER_STORE_KEYS = ("clip_fingerprint", "num_clips")
LAYOUT_KEYS = ("clips_per_shard", "compression")
IDENTITY_KEYS = PER_STORE_KEYS + ("teacher", "checkpoint_sha256", "grid", "dim", "teacher_mel") + LAYOUT_KEYS
TEACHER_KEYS = tuple(k for k in IDENTITY_KEYS if k not in PER_STORE_KEYS + LAYOUT_KEYS)


def _as_json(v):
    """`v` as it reads back from the store's JSON attrs (tuples -> lists)."""
    return json.loads(json.dumps(v))


def default_clips_per_shard(grid, dim: int, n: int, shard_bytes: int = SHARD_BYTES) -> int:
    """Clips per shard so a shard holds about `shard_bytes` of fp16 (never more than n)."""
    per_clip = int(np.prod(grid)) * dim * 2
    return int(max(1, min(n, round(shard_bytes / per_clip))))


def _record_file(path, k: int) -> Path:
    return Path(path) / "progress" / f"shard-{k:06d}.json"


def init_store(path, n: int, grid, dim: int, identity: dict, clips_per_shard: int | None = None,
               compression: str | None = None) -> None:
    """Create the store (rank 0 only), or check that an existing one was made from the same
    clips and teacher. `identity` holds teacher / checkpoint / teacher_mel / clip_fingerprint."""
    import zarr

    path = Path(path)
    k = clips_per_shard or default_clips_per_shard(grid, dim, n)
    if compression not in (None, "zstd"):
        raise StoreError(path, f"compression must be None or 'zstd', got {compression!r}")
    attrs = dict(format=FORMAT, **identity, grid=[int(g) for g in grid], dim=int(dim), num_clips=int(n),
                 clips_per_shard=int(k), compression=compression, complete=False, shards={})
    if (path / ARRAY / "zarr.json").exists():
        old = read_attrs(path)
        diff = [key for key in IDENTITY_KEYS if _as_json(old.get(key)) != _as_json(attrs.get(key))]
        if old.get("format") != FORMAT or diff:
            both = "; ".join(f"{key}: store has {old.get(key)!r}, this run has {attrs.get(key)!r}" for key in diff)
            raise StoreError(path, f"refusing to write into an existing target store made differently ({both}); "
                                   "use another --out or delete it")
        return
    if path.exists() and any(path.iterdir()):
        raise StoreError(path, "exists and is not a target store; refusing to write into it")
    tt, ft = grid
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"format": FORMAT, "array": ARRAY})
    compressors = None
    if compression == "zstd":
        from zarr.codecs import ZstdCodec
        compressors = [ZstdCodec(level=3)]
    group.create_array(ARRAY, shape=(n, tt, ft, dim), dtype="float16", chunks=(1, tt, ft, dim),
                       shards=(k, tt, ft, dim), compressors=compressors, fill_value=0, attributes=attrs)
    zarr.open_group(str(path / "progress"), mode="w", zarr_format=3,
                    attributes={"about": "per-shard completion records shard-<k>.json (supmam)"})


class ShardWriter:
    """Writes whole shards of an existing store; any rank may use one for its own shards."""

    def __init__(self, path):
        import zarr

        self.path = Path(path)
        self.attrs = read_attrs(path)
        self.array = zarr.open_array(str(self.path / ARRAY), mode="r+")
        self.n, self.k = self.array.shape[0], int(self.attrs["clips_per_shard"])
        self.num_shards = -(-self.n // self.k)

    def clips(self, k: int) -> range:
        return range(k * self.k, min(self.n, (k + 1) * self.k))

    def record(self, k: int) -> dict | None:
        rec = self.attrs.get("shards", {}).get(str(k))
        f = _record_file(self.path, k)
        if rec is None and f.exists():
            rec = json.loads(f.read_text())
        return rec

    def is_complete(self, k: int) -> bool:
        rec = self.record(k)
        if not rec or not rec.get("complete"):
            return False
        f = shard_file(self.path, k)
        return (rec.get("sha256") is None) == (not f.exists()) and (not f.exists() or f.stat().st_size == rec.get("bytes"))

    def write(self, k: int, data: np.ndarray, info: dict | None = None) -> dict:
        """data: float16 [n_k, Tt, Ft, D] for clips(k). Writes the shard, then its record (plus `info`,
        e.g. {"inputs": {kind: clips}})."""
        rng = self.clips(k)
        if data.shape != (len(rng), *self.array.shape[1:]):
            raise ValueError(f"shard {k} of {self.path}: expected {(len(rng), *self.array.shape[1:])}, got {data.shape}")
        f = shard_file(self.path, k)
        require_space(self.path, data.nbytes + 16 * self.k + 2**20)   # zarr writes a temp file, then renames
        if f.parent.exists():  # leftovers of a killed run: a stale shard or zarr's *.partial temp files
            for stale in f.parent.glob("0*"):
                stale.unlink()
        self.array[rng.start:rng.stop] = data
        rec = {"complete": True, "sha256": file_sha256(f), "bytes": f.stat().st_size if f.exists() else 0,
               "clips": len(rng), **(info or {})}
        atomic_write_text(_record_file(self.path, k), json.dumps(rec, sort_keys=True))
        return rec


def finalize(path) -> bool:
    """Copy the per-shard records into the array attrs; complete=True when every shard has one."""
    import zarr

    writer = ShardWriter(path)
    shards = {str(k): writer.record(k) for k in range(writer.num_shards) if writer.is_complete(k)}
    complete = len(shards) == writer.num_shards
    array = zarr.open_array(str(Path(path) / ARRAY), mode="r+")
    array.update_attributes({"shards": shards, "complete": complete, **input_counts(shards.values())})
    return complete


def input_counts(records) -> dict:
    """{"teacher_input_counts": {kind: clips}, "teacher_input": kind or "mixed"} summed over shard
    records that say what the teacher heard; {} when none does (stores written before they did)."""
    counts: dict[str, int] = {}
    for rec in records:
        for kind, n in (rec.get("inputs") or {}).items():
            counts[kind] = counts.get(kind, 0) + int(n)
    if not counts:
        return {}
    used = [k for k, n in counts.items() if n]
    return {"teacher_input_counts": dict(sorted(counts.items())), "teacher_input": used[0] if len(used) == 1 else "mixed"}


class TargetStore:
    """Reader: store[i] -> float16 [Tt, Ft, D]; store.read(indices) -> [B, Tt, Ft, D].

    Uncompressed shards are memory-mapped and chunks sliced through the shard index (zarr v3
    sharding: (offset, nbytes) uint64 little-endian per chunk, crc32c after, at the end or start);
    compressed stores are read through zarr-python. Fork-safe: maps open lazily per shard.

    verify (default): before the first read from a shard, its file is checked against the sha256 its
    completion record holds (StoreError naming the shard if it differs), so a run never trains on
    flipped bytes. A shard that passed before and whose file has not changed (size, mtime, inode:
    cache_tools.targets.verify) costs one stat, no hashing: `verify_all()` on one process per node
    (pretraining's local rank 0) hashes the store once, and every other reader and DataLoader
    worker on that node, and every later start, hashes nothing."""

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        self.verify = verify
        self.attrs = read_attrs(self.path)
        if self.attrs.get("format") != FORMAT:
            raise StoreError(self.path, f"format is {self.attrs.get('format')!r}, expected {FORMAT!r}")
        if not self.attrs.get("complete"):
            done = len(self.attrs.get("shards", {}))
            raise StoreError(self.path, f"incomplete target store ({done} shards finalized); rerun `supmam targets`")
        meta = json.loads((self.path / ARRAY / "zarr.json").read_text())
        self.shape = tuple(meta["shape"])
        self.grid = tuple(self.shape[1:3])
        self.dim = int(self.shape[3])
        self.clip_fingerprint = self.attrs.get("clip_fingerprint")
        self.teacher_name = self.attrs.get("teacher")
        self.fill = np.float16(meta.get("fill_value", 0))
        shard = meta["codecs"][0]
        cfg = shard.get("configuration", {})
        inner = [c["name"] for c in cfg.get("codecs", [])]
        index = [c["name"] for c in cfg.get("index_codecs", [])]
        self.k = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self._mappable = (meta["data_type"] == "float16" and shard["name"] == "sharding_indexed"
                          and inner == ["bytes"] and cfg["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                          and index == ["bytes", "crc32c"] and list(cfg["chunk_shape"]) == [1, *self.shape[1:]])
        self._index_at_end = cfg.get("index_location", "end") == "end"
        self._chunk_bytes = 2 * int(np.prod(self.shape[1:]))
        self.num_shards = -(-self.shape[0] // self.k)
        self._shards: dict[int, tuple] = {}
        self._checked = np.zeros(self.num_shards, bool)   # [S] shard checked in this process
        self._cache = None                                  # shard_verify.VerifiedCache, built on first check
        self._zarr = None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"TargetStore({str(self.path)!r}, shape={self.shape}, teacher={self.teacher_name!r})"

    def __getstate__(self):  # maps are per process: reopen after pickling (spawned DataLoader workers)
        return {**self.__dict__, "_shards": {}, "_checked": np.zeros(self.num_shards, bool), "_cache": None,
                "_zarr": None}

    def _verified(self):
        from cache_tools.targets.verify import VerifiedCache

        if self._cache is None:
            self._cache = VerifiedCache(self.path, self.attrs.get("shards", {}), self.num_shards)
        return self._cache

    def _check_shard(self, k: int) -> None:
        """Once per shard and process: unless the verified cache vouches for the unchanged file, the
        shard file's sha256 (read from the file) against its completion record."""
        if not self.verify or self._checked[k]:
            return
        from cache_tools.targets.verify import check_shard

        cache = self._verified()
        trusted = cache.trusted(k)
        problem = None if trusted else check_shard(cache, k)
        if problem:
            raise StoreError(shard_file(self.path, k), f"{problem}; rerun `supmam targets` into a new store "
                                                       "(`supmam store verify` lists every bad shard)")
        if not trusted:
            cache.save()
        self._checked[k] = True

    def verify_all(self, workers: int | None = None) -> int:
        """Check every shard not yet trusted, `workers` threads at a time (default: the cores available);
        StoreError naming the first bad shard. Returns the number of shards hashed."""
        from cache_tools.targets import verify as shard_verify

        before = len(shard_verify.HASHED)
        bad = shard_verify.verify_shards(self.path, self.num_shards, self.attrs.get("shards", {}), workers)
        if bad:
            k, problem = bad[0]
            more = f" ({len(bad) - 1} more bad shards)" if len(bad) > 1 else ""
            raise StoreError(shard_file(self.path, k), f"{problem}{more}; rerun `supmam targets` into a new store")
        self._checked[:] = True
        return len(shard_verify.HASHED) - before

    def _shard(self, k: int) -> tuple:
        """(view float16 [R, Tt, Ft, D] of shard k's chunk bytes, rows: int64 [K], row of each clip or -1).

        Reads the shard index (checked against its crc32c) once; zarr writes the chunks of a
        shard back to back, so every chunk of clip j is row rows[j] of one strided view."""
        if k in self._shards:
            return self._shards[k]
        f = shard_file(self.path, k)
        if not f.exists():  # an all-empty shard has no file (its record says sha256 null)
            if (self.attrs.get("shards", {}).get(str(k)) or {}).get("sha256") is not None:
                raise StoreError(f, f"shard {k} is missing (its completion record names a file); rerun `supmam targets`")
            self._shards[k] = (None, np.full(self.k, -1, np.int64))
            return self._shards[k]
        import google_crc32c

        self._check_shard(k)                                  # the file, before it is mapped
        mm = np.memmap(f, dtype=np.uint8, mode="r")
        size = 16 * self.k + 4
        if mm.size < size:
            raise StoreError(f, f"shard file is {mm.size} bytes, shorter than its {size}-byte index")
        raw = bytes(mm[-size:] if self._index_at_end else mm[:size])
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise StoreError(f, "shard index fails its crc32c check (corrupt shard)")
        index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.k, 2)  # [K, (offset, nbytes)]
        used = index[:, 0] != MAX_U64
        offs, cb = index[used, 0].astype(np.int64), self._chunk_bytes
        base = int(offs.min()) if used.any() else 0
        if np.any(index[used, 1] != cb) or np.any((offs - base) % cb) or np.any(offs + cb > mm.size):
            raise StoreError(f, f"shard index does not describe {cb}-byte chunks inside the file (corrupt shard)")
        nrows = int((offs.max() - base) // cb + 1) if used.any() else 0
        view = np.frombuffer(mm, dtype="<f2", count=nrows * cb // 2, offset=base).reshape(nrows, *self.shape[1:])
        rows = np.where(used, (index[:, 0].astype(np.int64) - base) // cb, -1)  # [K] int64
        self._shards[k] = (view, rows)
        return self._shards[k]

    def _index(self, i) -> int:
        i = int(i)
        if i < 0:
            i += self.shape[0]
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"clip {i} out of range for {self.path} ({len(self)} clips)")
        return i

    def __getitem__(self, i) -> np.ndarray:
        i = self._index(i)
        if not self._mappable:
            self._check_shard(i // self.k)
            return self._zarr_array()[i]
        view, rows = self._shards.get(i // self.k) or self._shard(i // self.k)
        r = int(rows[i % self.k])
        return view[r].copy() if r >= 0 else np.full(self.shape[1:], self.fill, dtype=np.float16)

    def read(self, indices) -> np.ndarray:
        idx = [self._index(i) for i in np.asarray(indices).reshape(-1)]
        if not self._mappable:
            for k in sorted({i // self.k for i in idx}):
                self._check_shard(k)
            return self._zarr_array().get_orthogonal_selection((np.asarray(idx, dtype=np.int64),))
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.float16)  # [B, Tt, Ft, D]
        for b, i in enumerate(idx):
            view, rows = self._shards.get(i // self.k) or self._shard(i // self.k)
            r = int(rows[i % self.k])
            out[b] = view[r] if r >= 0 else self.fill
        return out

    def _zarr_array(self):
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_array(str(self.path / ARRAY), mode="r")
        return self._zarr

