"""Audio files -> one HDF5 file of clip and frame embeddings (`supmam embed`); resumable, crash-safe.

Clips go in blocks; each finished block is a part file in `<out>.parts/` written atomically, so a
rerun after a crash or kill -9 embeds only the unfinished blocks, and `out` itself appears by rename.
The job fingerprint covers the encoder's weights (not its path), the settings and every file's
path, size and mtime: a rerun of the same job over a complete `out` does nothing, another job's is
refused. Bad files are skipped and listed in `<out>.report.json`, as in `prepare`; non-finite
embeddings of finite audio are the encoder's fault, an error.
"""
from __future__ import annotations
from cache_tools.errors import CheckpointError, ConfigError, InputFileError

import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from cache_tools.atomic import atomic_path, atomic_write_text
from cache_tools.fingerprint import json_fingerprint
from cache_tools.h5_text import attr_str, fixed_utf8, read_text, text_attr
from cache_tools.writer_lock import writer_lock
from pipeline.audio_io import load_clip
from pipeline.readers.spec import require_utf8_names
from train.use.embed import SHIFT_S, PretrainedEncoder, describe
from train.use.features import weights_sha256

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".aifc",
                    ".au", ".caf", ".w64", ".wma", ".webm", ".mka", ".mp4"}
RULE = ("clip = mean of the layer's patch tokens over the clip; frames = frequency-mean per patch column; "
        "timestamps = column centres (s); long clips: windows every `hop` s, each column from the window "
        "it is most central in (train/use/embed.py)")


def list_audio(inputs: list[str | Path], files_from: str | Path | None = None) -> list[tuple[str, Path]]:
    """[(clip id, path)] sorted by id. A file is taken whatever its extension (id: the path as given), a
    folder searched for AUDIO_EXTENSIONS (id: the path relative to it); `files_from` adds one path per
    line. Duplicate ids are refused: they would be one row of the output."""
    items: list[tuple[str, Path]] = []
    if files_from is not None:
        try:
            lines = Path(files_from).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise InputFileError(f"{files_from}: cannot read the file list ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise InputFileError(f"{files_from}: the file list is not UTF-8 text (byte 0x{e.object[e.start]:02x} "
                                 f"at offset {e.start})") from None
        inputs = [*inputs, *(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))]
    for inp in map(Path, inputs):
        if inp.is_dir():
            items += [(p.relative_to(inp).as_posix(), p) for p in sorted(inp.rglob("*"))
                      if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
        elif inp.exists():
            items.append((str(inp), inp))
        else:
            raise InputFileError(f"{inp}: no such file or folder")
    require_utf8_names(p for _, p in items)                       # clip ids are UTF-8 text in the HDF5 file
    seen: dict[str, Path] = {}
    for cid, p in items:
        if cid in seen:
            raise InputFileError(f"{p}: clip id {cid!r} also names {seen[cid]}; pass the folders separately")
        seen[cid] = p
    if not items:
        raise InputFileError(f"{', '.join(map(str, inputs)) or '(no inputs)'}: no audio files found "
                              f"(folders are searched for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    return sorted(items)


def _embed_one(enc: PretrainedEncoder, path: Path, layer: int, hop: float | None, max_seconds: float):
    """(clip [D], frames [T', D], timestamps [T']) as numpy, or the reason the file is unusable."""
    wave, reason = load_clip(path, max_seconds)                          # [n] mono 16 kHz
    if wave is None:
        return reason
    e = enc.embed(wave, enc.sample_rate, layer=layer, hop=hop, patches=False)   # frames only: no [T', F', D]
    clip, frames = e.clip[0].cpu().numpy(), e.frames[0].cpu().numpy()       # [D], [T', D]
    if not (np.isfinite(clip).all() and np.isfinite(frames).all()):
        raise CheckpointError(f"{enc.source}: NaN or infinite embeddings of {path} (finite audio): the encoder's "
                              "weights or normalisation are broken; nothing of this block is written")
    return clip, frames, e.timestamps.numpy()


def _write_part(parts: Path, block: int, rows: list, skipped: list[dict], dim: int) -> None:
    out = parts / f"part-{block:06d}.h5"
    with atomic_path(out, out.with_name(f"{out.name}.tmp.{os.getpid()}")) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("clip_id", data=fixed_utf8(r[0] for r in rows))
        f.create_dataset("path", data=fixed_utf8(r[1] for r in rows))
        f.create_dataset("clip", data=np.stack([r[2] for r in rows]) if rows else np.zeros((0, dim), np.float32))
        f.create_dataset("frames", data=np.concatenate([r[3] for r in rows]) if rows
                         else np.zeros((0, dim), np.float32))
        f.create_dataset("timestamps", data=np.concatenate([r[4] for r in rows]) if rows else np.zeros(0, np.float64))
        f.create_dataset("frame_count", data=np.array([len(r[3]) for r in rows], np.int64))
        f.attrs["skipped"] = text_attr(json.dumps(skipped))


def _embed_block(enc, block: int, items: list[tuple[str, Path]], parts: Path, opts: dict, bar) -> None:
    rows, skipped = [], []
    for cid, path in items:
        try:
            got = _embed_one(enc, path, opts["layer"], opts["hop"], opts["max_seconds"])
        except CheckpointError:                                  # the encoder's fault, not the file's: stop
            raise
        except Exception as e:  # noqa: BLE001 - one odd file must not end the run
            got = f"error: {type(e).__name__}: {e}"
        if isinstance(got, str):
            skipped.append({"clip_id": cid, "path": str(path), "reason": got})
        else:
            rows.append((cid, str(path), *got))
        bar.update(1)
    _write_part(parts, block, rows, skipped, enc.embed_dim)


def _assemble(out: Path, parts: Path, n_blocks: int, attrs: dict) -> tuple[int, list[dict]]:
    names = [parts / f"part-{b:06d}.h5" for b in range(n_blocks)]
    data: dict[str, list] = {k: [] for k in ("clip_id", "path", "clip", "frames", "timestamps", "frame_count")}
    skipped: list[dict] = []
    for p in names:
        with h5py.File(p, "r") as f:
            for k in data:
                data[k].append(np.array(read_text(f[k]), dtype=object) if k in ("clip_id", "path") else f[k][:])
            skipped += json.loads(f.attrs["skipped"])
    cols = {k: np.concatenate(v) for k, v in data.items()}
    n = len(cols["clip_id"])
    if n == 0:
        return 0, skipped
    with atomic_path(out, Path(f"{out}.tmp")) as tmp, h5py.File(tmp, "w") as f:
        for k in ("clip_id", "path"):
            f.create_dataset(k, data=fixed_utf8(cols[k]))               # [N] S<longest>, UTF-8 (no global heap)
        for k in ("clip", "frames", "timestamps", "frame_count"):
            f.create_dataset(k, data=cols[k])
        offsets = np.concatenate([[0], np.cumsum(cols["frame_count"])[:-1]]).astype(np.int64)   # [N]
        f.create_dataset("frame_offset", data=offsets)
        f.attrs.update({k: text_attr(v) if isinstance(v, str) else v for k, v in attrs.items()})
    return n, skipped


def embed_files(encoder: PretrainedEncoder, inputs: list[str | Path], out: str | Path, layer: int = -1,
                hop: float | None = None, max_seconds: float = 3600.0, block_size: int = 32,
                files_from: str | Path | None = None, progress: bool = True) -> dict:
    """Embed `inputs` (16 kHz mono, read up to `max_seconds`) into HDF5 `out`, one writer (`<out>.lock`).
    N clips, M frames: clip_id, path [N] fixed-length UTF-8 bytes (h5py: `.asstr()`); clip float32 [N, D];
    frames float32 [M, D], timestamps float64 [M] (s from the clip's start): clip i's are frame_count[i]
    rows from frame_offset[i]; attrs (text as bytes): encoder (JSON), layer, hop, window, rule, job."""
    out = Path(out)
    if out.is_symlink():
        raise InputFileError(f"{out}: is a symlink; embed writes only a real file (choose another --out)")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not 0 < max_seconds <= 86400:
        raise ConfigError(f"--max-seconds {max_seconds}: must be a number of seconds in (0, 86400]")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"--block-size {block_size}: must be a whole number of clips, at least 1")
    with writer_lock(out, "embed"):
        return _embed_files(encoder, inputs, out, layer, hop, max_seconds, block_size, files_from, progress)


def _embed_files(encoder: PretrainedEncoder, inputs: list[str | Path], out: Path, layer: int, hop: float | None,
                 max_seconds: float, block_size: int, files_from: str | Path | None, progress: bool) -> dict:
    t0 = time.time()
    items = list_audio(inputs, files_from)
    if not -encoder.depth <= layer < encoder.depth:
        raise ConfigError(f"layer {layer}: this encoder has {encoder.depth} blocks (0..{encoder.depth - 1}, or "
                          f"-1..-{encoder.depth} from the last)")
    layer %= encoder.depth
    hop_s = encoder.hop_columns(hop) * encoder.vit.patch * SHIFT_S
    opts = {"layer": layer, "hop": hop_s, "max_seconds": float(max_seconds)}
    files = [(cid, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for cid, p in items]
    weights = weights_sha256(encoder.vit)        # the encoder's content: a checkpoint replaced at its path differs
    job = json_fingerprint({"encoder": describe(encoder), "weights_sha256": weights, **opts,
                            "block_size": block_size, "files": files})
    report_file = Path(f"{out}.report.json")
    if out.exists():
        try:
            with h5py.File(out, "r") as f:
                same, written = attr_str(f.attrs.get("job")) == job, len(f["clip_id"]) if "clip_id" in f else 0
        except OSError as e:
            raise InputFileError(f"{out}: exists and is not an HDF5 file ({e}); delete it or choose "
                                  f"another --out") from e
        if not same:
            raise InputFileError(f"{out}: exists and was made from other files or settings; delete it or "
                                  f"choose another --out")
        return {"out": str(out), "status": "already complete", "written": int(written)}
    parts = Path(f"{out}.parts")
    if parts.exists() and (parts / "job.json").is_file() and json.loads((parts / "job.json").read_text()) != job:
        shutil.rmtree(parts)                                        # parts of another job
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob("*.tmp.*"):                             # half-written parts of a killed run
        stale.unlink()
    atomic_write_text(parts / "job.json", json.dumps(job))
    blocks = [items[i:i + block_size] for i in range(0, len(items), block_size)]
    done = {int(p.stem.split("-")[1]) for p in parts.glob("part-*.h5")}
    bar = tqdm(total=len(items), initial=sum(len(blocks[b]) for b in done if b < len(blocks)), unit="clip",
               desc=out.name, disable=not progress, dynamic_ncols=True)
    for b, block in enumerate(blocks):
        if b not in done:
            _embed_block(encoder, b, block, parts, opts, bar)
    bar.close()
    attrs = {"encoder": json.dumps({**describe(encoder), "weights_sha256": weights}), "layer": layer, "hop": hop_s,
             "window": encoder.window_frames * SHIFT_S, "rule": RULE, "job": job}
    n, skipped = _assemble(out, parts, len(blocks), attrs)
    report = {"out": str(out), "written": n, "skipped": skipped, "listed": len(items)}
    atomic_write_text(report_file, json.dumps(report, indent=1))
    if n == 0:
        raise InputFileError(f"{out}: no usable clips: all {len(skipped)} files were skipped; see {report_file}")
    shutil.rmtree(parts)
    return {**report, "seconds": round(time.time() - t0, 3)}


def summary_line(report: dict) -> str:
    if report.get("status") == "already complete":
        return f"{report['out']}: already complete ({report['written']} clips), skipped"
    secs = report["seconds"]
    return (f"{report['out']}: {report['written']} clips embedded, {len(report['skipped'])} skipped "
            f"({secs:.1f} s, {report['listed'] / max(secs, 1e-9):.2f} clips/s); report {report['out']}.report.json")
