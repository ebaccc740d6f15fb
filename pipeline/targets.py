"""Stage one: clip store -> target store. The teacher runs once over every clip.

Batches never cross a shard, so every clip is computed in the same batch however the shards are
split across ranks or runs: a resumed run, or one under `torchrun --nproc-per-node K` (rank r
takes shards r, r+K, ...), writes the same bytes as a single uninterrupted process.

    make_targets(clips_path, out_path, clap_ckpt=...)     # paths in: what `supmam targets` and the demo call
    build_targets(clip_store, out_path, teacher)          # any teacher with the ClapTeacher interface

A teacher has `token_grid(wave [B, S]) -> [B, Tt, Ft, D]`, `name`, `checkpoint_id` and `mel`
(pipeline.teacher.teacher_mel); `teacher_targets` is what the store holds of it (fp16).

The teacher's input (docs/fidelity.md, "Stage one: the teacher's input"): a teacher with
`token_grid_waves` and `sample_rate` (ClapTeacher) hears each clip read again from its source file at
its own rate, as laion-clap loads audio (pipeline.teacher_audio); clips whose source is not reachable,
and every clip with teacher_input="clipstore", get the clip store's 16 kHz wave upsampled. Each shard
record counts what its clips got; the store's attrs sum them (`teacher_input`, `teacher_input_counts`)
and `progress/fallback-<k>.jsonl` lists each clip that fell back and why.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cache_tools.atomic import atomic_write_text
from cache_tools.disk_space import disk_full, is_disk_full, require_space
from cache_tools.errors import SupmamError, StoreError
from cache_tools.targets.store import ShardWriter, finalize, init_store
from cache_tools.writer_lock import writer_lock
from pipeline import teacher_audio

log = logging.getLogger(__name__)
TEACHER_INPUTS = ("auto", "clipstore")   # auto: each clip from its source where reachable


class WaveDataset(Dataset):
    """Clip i of a clip store as (i, float32 wave [S] in [-1, 1), input kind, ""): for teachers
    without token_grid_waves."""

    def __init__(self, clips):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        return i, torch.from_numpy(np.asarray(self.clips.wave(i), dtype=np.float32) / 32768.0), teacher_audio.PLAIN, ""


def input_dataset(clips, teacher, teacher_input: str, source_root=None) -> tuple[Dataset, callable]:
    """(dataset, collate_fn) giving the teacher its input: clips at its own rate from their sources
    (falling back per clip) when it takes them, else the clip store's 16 kHz batches."""
    if teacher_input not in TEACHER_INPUTS:
        raise SupmamError(f"--teacher-input: must be one of {TEACHER_INPUTS}, got {teacher_input!r}")
    if not hasattr(teacher, "token_grid_waves"):
        return WaveDataset(clips), None
    use = teacher_input == "auto"
    if source_root is not None and not Path(source_root).is_dir():
        raise SupmamError(f"{source_root}: not a folder (source_root: where the clip store's source files lie now)")
    if use and not getattr(clips, "has_sources", False):
        log.warning("%s: %s; the teacher hears its 16 kHz wave upsampled (nothing above 8 kHz)",
                    getattr(clips, "path", "clip store"), teacher_audio.NO_SOURCES)
    elif use and source_root is None and not Path(clips.attrs["source_root"]).is_dir():
        log.warning("%s: its source_root %s is not a folder here: every clip falls back to 16 kHz "
                    "(give source_root / --source-root where the files lie now)", clips.path, clips.attrs["source_root"])
    return teacher_audio.TeacherInputDataset(clips, teacher.sample_rate, use, source_root), teacher_audio.collate


def _write_fallbacks(out, k: int, entries: list[dict]) -> None:
    """Shard k's clips that fell back, one JSON line each (none: no file), before the shard's record."""
    path = Path(out) / "progress" / f"fallback-{k:06d}.jsonl"
    if entries:
        atomic_write_text(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    else:
        path.unlink(missing_ok=True)


def default_workers() -> int:
    """DataLoader workers decoding sources for one rank: the cores this process may use (its affinity
    mask: SLURM's or taskset's), shared by the node's ranks (torchrun's LOCAL_WORLD_SIZE), one left
    to the rank itself; at least 1. On a 96-core node with 8 GPUs: 11 per rank."""
    from cache_tools.targets.verify import default_workers as cores

    return max(1, cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _shard_batches(writer: ShardWriter, shards: list[int], batch_size: int) -> list[list[int]]:
    """Clip-index batches, each inside one shard, shards in the given order."""
    return [list(r[j:j + batch_size]) for k in shards for r in [writer.clips(k)] for j in range(0, len(r), batch_size)]


def _init_distributed(device: str) -> tuple[int, int, bool]:
    """(rank, world, whether we started the process group). WORLD_SIZE>1 comes from torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), True


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _agree(world: int, error: Exception | None, out, what: str) -> None:
    """Every rank learns whether any rank failed a step (a collective, so it also orders that step
    before anything after it): the failing rank raises its own error, the others a StoreError
    `rank r <what>: <why>` (instead of going on, then waiting at a barrier that never comes)."""
    said = [None if error is None else str(error)]
    if world > 1:
        said = [None] * world
        dist.all_gather_object(said, None if error is None else str(error))
    if error is not None:
        raise error
    for r, why in enumerate(said):
        if why:
            raise StoreError(out, f"rank {r} {what}: {why}")


def teacher_identity(teacher, clips, checkpoint: str | None) -> dict:
    """The attrs that tie a target store to its clips and its teacher (teacher.describe() when it has one)."""
    cid = str(teacher.checkpoint_id)
    ident = {"teacher": str(teacher.name), "checkpoint": str(checkpoint) if checkpoint else None,
             "checkpoint_sha256": cid.removeprefix("sha256:"), "checkpoint_id": cid,
             "teacher_mel": dict(teacher.mel)}
    if hasattr(teacher, "describe"):
        ident.update({k: v for k, v in teacher.describe().items() if k != "dim"})
    ident["clip_fingerprint"] = str(clips.fingerprint)
    ident["clip_seconds"] = len(clips.wave(0)) / float(getattr(clips, "sample_rate", 16000))
    return ident


@torch.no_grad()
def teacher_targets(teacher, wave: torch.Tensor | list[torch.Tensor], device: str) -> torch.Tensor:
    """wave [B, S] float in [-1, 1] at 16 kHz, or a list of B clips (S_i,) at the teacher's own rate
    -> [B, Tt, Ft, D] float16 on `device`: what the target store holds for these clips (on CUDA the
    teacher runs under fp16 autocast). The online teacher calls this too (16 kHz batches)."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=str(device).startswith("cuda")):
        if isinstance(wave, list):
            return teacher.token_grid_waves(wave).to(torch.float16)  # [B, Tt, Ft, D]
        return teacher.token_grid(wave.to(device, non_blocking=True)).to(torch.float16)  # [B, Tt, Ft, D]


def build_targets(clips, out, teacher, *, checkpoint: str | None = None, batch_size: int = 8,
                  device: str = "cpu", clips_per_shard: int | None = None, workers: int = 0,
                  compression: str | None = None, progress: bool = True, teacher_input: str = "auto",
                  source_root: Path | str | None = None) -> dict:
    """Run `teacher` over every clip of `clips` (a ClipStore or the same interface) into the target
    store `out`, skipping complete shards. Returns a summary dict (rank 0's view). One writer per
    store: rank 0 holds `out.lock`; a second `targets` run on the same `out` is refused at once.
    teacher_input "auto": clips from their source files at the teacher's rate where reachable
    (source_root replaces the clip store's recorded one); "clipstore": the 16 kHz waves, upsampled."""
    rank, world, started = _init_distributed(device)
    t0 = time.perf_counter()
    n, s = len(clips), len(clips.wave(0))
    data = input_dataset(clips, teacher, teacher_input, source_root)   # (dataset, collate_fn)
    identity = {**teacher_identity(teacher, clips, checkpoint), "teacher_input_mode": teacher_input}
    if "grid" in identity and hasattr(teacher, "dim"):  # ClapTeacher.describe(): grid in (Tt, Ft) order
        (tt, ft), d = identity.pop("grid"), int(teacher.dim)
    else:  # any other teacher: one forward on silence tells the geometry
        _, tt, ft, d = teacher_targets(teacher, torch.zeros(1, s), device).shape  # [1, Tt, Ft, D]
    lock = contextlib.ExitStack()
    error = None
    if rank == 0:  # rank 0 takes the writer lock and creates the array (or checks it) before anyone writes
        try:
            lock.enter_context(writer_lock(out, "targets"))
            init_store(out, n, (tt, ft), d, identity, clips_per_shard, compression)
        except Exception as e:  # noqa: BLE001 - every rank learns of it below, so none writes or hangs
            lock.close()
            error = e
    _agree(world, error, out, "refused the store")   # also orders creation before any other rank opens the store
    with lock:
        summary = _compute(clips, out, teacher, (tt, ft, d), data, rank, world, batch_size, device, workers,
                           progress)
    if started:
        dist.destroy_process_group()
    summary.update(clips=n, teacher=identity["teacher"], checkpoint=identity["checkpoint_sha256"],
                   seconds=time.perf_counter() - t0)
    if rank == 0 and progress:
        print(summary_line(summary), flush=True)
    return summary


def _compute(clips, out, teacher, geometry: tuple, data: tuple, rank: int, world: int, batch_size: int,
             device: str, workers: int, progress: bool) -> dict:
    """This rank's unfinished shards -> the store; finalize on rank 0. Returns the summary's counts."""
    tt, ft, d = geometry
    writer = ShardWriter(out)
    mine = [k for k in range(rank, writer.num_shards, world) if not writer.is_complete(k)]
    need = sum(len(writer.clips(k)) for k in mine) * tt * ft * d * 2 + 2**20 * (1 + len(mine))
    try:
        require_space(out, need)                                   # this rank's shards, before the teacher runs
        short = None
    except StoreError as e:
        short = e
    _agree(world, short, out, "stopped before the teacher ran")
    try:
        todo, inputs = _write_shards(clips, out, writer, mine, teacher, geometry, data, rank, world, batch_size,
                                     device, workers, progress)
    except OSError as e:                                           # finished shards keep their records
        if is_disk_full(e):
            raise disk_full(out, need) from None
        raise
    _barrier(world)
    complete = finalize(out) if rank == 0 else None
    _barrier(world)
    return {"out": str(out), "computed": todo, "shards": writer.num_shards, "complete": complete,
            "grid": [tt, ft], "dim": d, "rank": rank, "world": world, "teacher_input": dict(sorted(inputs.items())),
            "fallback_lists": len(list((Path(out) / "progress").glob("fallback-*.jsonl")))}


def _write_shards(clips, out, writer: ShardWriter, mine: list[int], teacher, geometry: tuple, data: tuple,
                  rank: int, world: int, batch_size: int, device: str, workers: int,
                  progress: bool) -> tuple[int, Counter]:
    """The teacher over the clips of shards `mine`, each shard written whole when full, after its
    fallback list, with its record counting what its clips heard. Returns (clips done, those counts)."""
    tt, ft, d = geometry
    dataset, collate = data
    loader = DataLoader(dataset, batch_sampler=_shard_batches(writer, mine, batch_size), collate_fn=collate,
                        num_workers=workers, worker_init_fn=_one_thread if workers else None,
                        pin_memory=str(device).startswith("cuda"))
    todo = sum(len(writer.clips(k)) for k in mine)
    bar = tqdm(total=todo, unit="clip", desc=f"targets[{rank}/{world}]", disable=not progress or rank != 0,
               dynamic_ncols=True)
    shard, buf, counts, fell, total, warned = None, None, Counter(), [], Counter(), 0
    for idx, wave, kinds, reasons in loader:
        k = int(idx[0]) // writer.k
        if k != shard:
            shard, buf, counts, fell = k, np.zeros((len(writer.clips(k)), tt, ft, d), dtype=np.float16), Counter(), []
        rows = idx.numpy() - k * writer.k
        buf[rows] = teacher_targets(teacher, wave, device).cpu().numpy()  # [b, Tt, Ft, D]; buf [n_k, Tt, Ft, D]
        counts.update(kinds)
        new = [{"clip": i, "clip_id": clips.clip_ids[i], "reason": why} for i, why in zip(idx.tolist(), reasons) if why]
        for e in new[:max(0, 5 - warned)]:   # the rest: progress/fallback-<k>.jsonl and the summary's counts
            log.warning("clip %d (%s): the teacher hears the 16 kHz fallback: %s", e["clip"], e["clip_id"], e["reason"])
        fell, warned = fell + new, warned + len(new)
        if rows[-1] == len(buf) - 1:  # shard full: its fallbacks, the shard, then its record
            _write_fallbacks(out, k, fell)
            writer.write(k, buf, {"inputs": dict(sorted(counts.items()))})
            total += counts
        bar.update(len(idx))
    bar.close()
    return todo, total


def make_targets(clips: Path | str, out: Path | str, clap_ckpt: Path | str | None = None,
                 clap_model: str = "HTSAT-tiny", fusion: bool = False, seed: int = 0, device: str = "cpu",
                 batch_size: int = 8, clips_per_shard: int | None = None, workers: int | None = None,
                 compression: str | None = None, teacher_input: str = "auto",
                 source_root: Path | str | None = None) -> dict:
    """The clip store at `clips` -> the target store `out`, with laion-clap's `clap_model` loaded from
    `clap_ckpt` (None: weights seeded by `seed`). device "cuda" means this rank's GPU (LOCAL_RANK);
    on CUDA the teacher runs in fp16. teacher_input / source_root: see build_targets. workers: DataLoader
    workers decoding the sources (None: default_workers(), from the cores available).
    Returns build_targets' summary."""
    from cache_tools.clips.store import ClipStore
    from pipeline.teacher import ClapTeacher

    from train.distributed import resolve_device

    resolve_device(device)                                         # one line if there is no such device
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    store = ClipStore(clips)
    workers = default_workers() if workers is None else workers
    teacher = ClapTeacher.from_checkpoint(clap_ckpt, model=clap_model, fusion=fusion, seed=seed, device=device,
                                          amp_dtype="fp16" if device.startswith("cuda") else None)
    return build_targets(store, out, teacher, checkpoint=str(clap_ckpt) if clap_ckpt else None,
                         batch_size=batch_size, device=device, clips_per_shard=clips_per_shard, workers=workers,
                         compression=compression, teacher_input=teacher_input, source_root=source_root)


def summary_line(s: dict) -> str:
    line = (f"targets: {s['out']}: {s['clips']} clips, grid {s['grid'][0]}x{s['grid'][1]}x{s['dim']}, "
            f"{s['computed']} computed here in {s['seconds']:.1f} s "
            f"({s['computed'] / max(s['seconds'], 1e-9):.1f} clips/s), {s['shards']} shards, "
            f"complete={s['complete']}; teacher {s['teacher']} ({s['checkpoint']})")
    if s.get("teacher_input"):
        line += "\nteacher input (clips computed here): " + ", ".join(f"{k} {v}" for k, v in s["teacher_input"].items())
        if s.get("fallback_lists"):
            line += f" (why clips fell back: {s['out']}/progress/fallback-*.jsonl)"
    if str(s["checkpoint"]).startswith("untrained"):
        line += ("\nWARNING: the teacher has untrained (seeded random) weights: these targets carry no CLAP "
                 "semantics. Pass --clap-ckpt with a laion-clap checkpoint for real targets.")
    return line
