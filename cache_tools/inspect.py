"""`supmam store inspect / verify`: describe a clip store (HDF5) or target store (Zarr), check it."""
from __future__ import annotations

import json
from pathlib import Path

from cache_tools.targets.verify import verify_shards
from cache_tools.targets.store import ARRAY, FORMAT, ShardWriter, read_attrs, shard_file
from cache_tools.errors import StoreError


def is_target_store(path) -> bool:
    return (Path(path) / ARRAY / "zarr.json").is_file()


def inspect_store(path) -> str:
    """A few lines describing the store at `path` (either kind)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(path, "no such file or directory")
    if not is_target_store(path):
        from cache_tools.clips.store import ClipStore

        return ClipStore(path).summary()
    a = read_attrs(path)
    meta = json.loads((path / ARRAY / "zarr.json").read_text())
    n, tt, ft, d = meta["shape"]
    writer = ShardWriter(path)
    done = sum(writer.is_complete(k) for k in range(writer.num_shards))
    return "\n".join([
        f"target store {path} ({a.get('format')}, {'complete' if a.get('complete') else 'INCOMPLETE'})",
        f"  targets {meta['data_type']} [{n}, {tt}, {ft}, {d}]: grid {tt} time x {ft} freq, dim {d}; "
        f"{2 * tt * ft * d} bytes per clip; compression {a.get('compression')}",
        f"  teacher {a.get('teacher')}  checkpoint {a.get('checkpoint')}  id {a.get('checkpoint_sha256')}",
        f"  teacher mel {a.get('teacher_mel')}; clips of {a.get('clip_seconds')} s",
        f"  teacher input {a.get('teacher_input', 'not recorded (the 16 kHz clip-store wave)')} "
        f"{a.get('teacher_input_counts', '')}",
        f"  clip fingerprint {a.get('clip_fingerprint')}",
        f"  shards {done}/{writer.num_shards} complete, {writer.k} clips per shard",
    ])


def verify_sources(store, notes: list[str] | None = None) -> list[str]:
    """Source files that changed since `prepare` read them: every reachable source file is hashed and
    compared with its recorded size and sha256 (cache_tools.clips.sources, deep: a file replaced with
    its mtime kept is caught too); missing sources and stores that recorded none are notes."""
    from cache_tools.clips.sources import changed_sources

    if not store.has_source_identity:
        if notes is not None and store.has_sources:
            notes.append(f"{store.path}: no source identities (older store): changed sources cannot be noticed")
        return []
    changed, missing, checked = changed_sources(store, deep=True)
    if missing and notes is not None:
        notes.append(f"{store.path}: {missing} of {checked} source files not found under "
                     f"{store.attrs.get('source_root')} (not checked)")
    return [f"{store.path}: source {c}" for c in changed]


def verify_store(path, clips=None, notes: list[str] | None = None, workers: int | None = None) -> list[str]:
    """Problems found (empty list: all good). Clip store: every block's sha256 (a store written
    before checksums existed is not a failure: "no checksums (old store)" goes to `notes`). Target
    store: every shard's record and sha256; with `clips`, the clip store's fingerprint against the
    targets' record. Every shard is hashed (passes are remembered for the readers). `workers` processes / threads hash in parallel (default: the cores available)."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: no such file or directory"]
    if not is_target_store(path):
        from cache_tools.clips.checksums import old_store_note, verify_checksums
        from cache_tools.clips.store import H5_ERRORS, ClipStore, damaged

        try:
            store = ClipStore(path)
        except StoreError as e:
            return [str(e)]
        try:
            if notes is not None and (note := old_store_note(path)):
                notes.append(note)
            return verify_checksums(path, workers) + verify_sources(store, notes)
        except H5_ERRORS as e:
            return [str(damaged(path, e))]
    try:
        a = read_attrs(path)
        writer = ShardWriter(path)
    except (StoreError, ValueError, KeyError) as e:
        return [f"{path}: cannot open as a target store ({e})"]
    problems = []
    if a.get("format") != FORMAT:
        problems.append(f"{path}: format {a.get('format')!r}, expected {FORMAT!r}")
    if not a.get("complete"):
        problems.append(f"{path}: not finalized (complete=false); rerun `supmam targets`")
    records = {str(k): writer.record(k) for k in range(writer.num_shards)}
    done = [k for k in range(writer.num_shards) if (records[str(k)] or {}).get("complete")]
    problems += [f"{shard_file(path, k)}: shard {k} incomplete (no completion record)"
                 for k in range(writer.num_shards) if k not in set(done)]
    for k, why in verify_shards(path, writer.num_shards, records, workers, shards=done, trust=False):
        problems.append(f"{shard_file(path, k)}: " + why.replace(" is corrupt: its sha256 ", " corrupt (sha256 ")
                        .replace(" differs from the recorded ", " != recorded ") + (")" if "corrupt" in why else ""))
    if clips is not None:
        from cache_tools.clips.store import ClipStore

        try:
            fp = ClipStore(clips).fingerprint
        except StoreError as e:
            return problems + [str(e)]
        if fp != a.get("clip_fingerprint"):
            problems.append(f"{path}: made from clip store fingerprint {a.get('clip_fingerprint')}, "
                            f"but {clips} has fingerprint {fp}")
    return problems
