"""`make bench`: CPU benchmarks of every stage, each figure a ratio against a baseline measured in
the same run (so machine load mostly cancels). Prints a table, writes JSON (--out).

    .venv/bin/python bench/bench_cpu.py --out bench/results-cpu.json     # ~3-4 min on 2 cores
    .venv/bin/python bench/bench_cpu.py --quick --out /tmp/b.json        # every section, toy sizes

Sections (bench_stores.py for the store ones):
  target_reads   TargetStore vs raw .npy memmap vs zarr-python; random single clips, batches of 64
  clip_reads     ClipStore fbank / wave reads vs raw .npy memmap
  prepare        decode + resample + fbank per clip (pipeline.prepare.featurise) and the whole
                 `prepare` (1 worker, incl. the store) vs the bare Kaldi fbank call; one thread
  teacher        HTSAT-tiny (random weights) token_grid clips/s; `build_targets` (loader + teacher +
                 shard writes) vs the bare teacher forward
  pretrain_step  supmam-clap step (fwd + bwd + AdamW), tiny and base encoders: cached targets vs
                 online teacher; the data loader's clips/s (one process) vs the step's (one thread)
  storage        bytes per clip of each store vs per-patch targets at the student's grid
  finetune_loader  fine-tuning's training loader, one process: stored fbank vs waveform mixup vs the
                 as2m preset (mixup + gain: every clip's fbank recomputed) (bench_finetune.py)
Threads: torch uses one thread here ("per core" figures); zarr/h5py/numpy reads are single-threaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import bench_finetune, bench_stores, common, synthetic  # noqa: E402

SIZES = {  # full vs --quick
    "full": dict(target_clips=2000, shard_clips=1365, clip_clips=256, wavs=12, stage_clips=8, seconds=10.0, T=1024,
                 batch=4, depth=None, steps=3, min_time=0.6, ft_clips=96, ft_batch=16),
    "quick": dict(target_clips=64, shard_clips=16, clip_clips=8, wavs=2, stage_clips=2, seconds=1.0, T=128,
                  batch=2, depth=1, steps=1, min_time=0.05, ft_clips=8, ft_batch=2),
}


def prepare(tmp: Path, sz: dict) -> dict:
    """Per-clip featurisation and the whole prepare stage (1 worker) vs the bare Kaldi fbank call."""
    import torchaudio

    from pipeline import prepare as prep
    from pipeline.features import FBANK_PARAMS
    from pipeline.readers import ClipRecord, DatasetSpec
    secs = sz["seconds"]
    paths = synthetic.write_wavs(tmp / "wavs", sz["wavs"], seconds=secs, sr=44100, channels=2)
    recs = [ClipRecord(clip_id=p.stem, path=p, label=i % 3) for i, p in enumerate(paths)]
    spec = DatasetSpec("esc50", "bench", ["a", "b", "c"], ["a", "b", "c"], False, sz["T"], secs, recs)
    g = prep._Geometry(secs, sz["T"], False, 3, False)
    w = torch.randn(1, int(secs * 16000)) * 0.1  # [1,S] 16 kHz
    it = iter(range(10**9))
    bare = common.rate(lambda: torchaudio.compliance.kaldi.fbank(w - w.mean(), **FBANK_PARAMS), 1, sz["min_time"])
    feat = common.rate(lambda: prep.featurise(recs[next(it) % len(recs)], g), 1, sz["min_time"])
    breakdown = featurise_breakdown(paths[0], sz["T"], sz["min_time"])
    t0 = time.perf_counter()
    report = prep.prepare(spec, tmp / "prep.h5", workers=1, block_size=max(1, len(recs) // 2), progress=False)
    whole = len(recs) / (time.perf_counter() - t0)
    return {"clip_seconds": secs, "source": "44.1 kHz stereo PCM16 wav", "clips": len(recs),
            "written": report.get("written"),
            "clips_per_s_per_core": {"bare_fbank": round(bare, 1), "featurise": round(feat, 1),
                                     "prepare_1_worker": round(whole, 1)},
            "ms_per_clip_breakdown": breakdown,
            "ratio_featurise_vs_bare_fbank": common.ratio(feat, bare),
            "ratio_prepare_vs_bare_fbank": common.ratio(whole, bare)}


def featurise_breakdown(path: Path, target_length: int, min_time: float) -> dict:
    """ms per clip of each step featurise takes, done the way pipeline.audio_io does them."""
    import soundfile as sf

    from pipeline.audio_io import resample
    from pipeline.features import fbank
    x, sr = sf.read(path, dtype="float32", always_2d=True)                    # [S, ch]
    mono = np.ascontiguousarray(x.mean(axis=1), dtype=np.float32)            # [S]
    w16 = resample(torch.from_numpy(mono), sr, 16000)                        # [S']
    ms = lambda fn: round(1e3 / common.rate(fn, 1, min_time), 3)  # noqa: E731
    return {"decode": ms(lambda: sf.read(path, dtype="float32", always_2d=True)),
            "downmix_np_mean": ms(lambda: x.mean(axis=1)),
            "downmix_matvec": ms(lambda: x @ np.full(x.shape[1], 1 / x.shape[1], np.float32)),
            "resample": ms(lambda: resample(torch.from_numpy(mono), sr, 16000)),
            "fbank": ms(lambda: fbank(w16, target_length))}


def stage_stores(tmp: Path, sz: dict) -> dict:
    """A small clip store + its target store written by the real teacher (shared by two sections)."""
    from pipeline.teacher import ClapTeacher
    tmp.mkdir(parents=True, exist_ok=True)
    clips = synthetic.write_clip_store(tmp / "stage.h5", sz["stage_clips"], sz["T"], sz["seconds"], seed=3)
    teacher = ClapTeacher.from_checkpoint(None, model="HTSAT-tiny", seed=0, device="cpu")
    return {"clips": clips, "targets": tmp / "stage.targets.zarr", "teacher": teacher}


def teacher(tmp: Path, sz: dict, stage: dict) -> dict:
    """Bare token_grid clips/s vs build_targets (DataLoader + teacher + fp16 shard writes).
    Fills `stage` with the clip store, target store and teacher for pretrain_step."""
    from cache_tools.clips.store import ClipStore
    from pipeline.targets import build_targets
    stage.update(stage_stores(tmp, sz))
    t, store = stage["teacher"], ClipStore(stage["clips"])
    n, b = len(store), min(sz["batch"], len(store))
    wave = torch.from_numpy(np.stack([store.wave(i) for i in range(b)]).astype(np.float32) / 32768)  # [B,S]
    bare = common.rate(lambda: t.token_grid(wave), b, sz["min_time"], max_calls=max(1, n // b))
    t0 = time.perf_counter()
    s = build_targets(store, stage["targets"], t, batch_size=b, device="cpu", workers=0, progress=False)
    full = n / (time.perf_counter() - t0)
    return {"teacher": t.name, "checkpoint": t.checkpoint_id, "batch": b, "clips": n,
            "clip_seconds": sz["seconds"], "grid": s["grid"], "dim": s["dim"],
            "clips_per_s_per_core": {"token_grid": round(bare, 3), "build_targets": round(full, 3)},
            "ratio_build_targets_vs_token_grid": common.ratio(full, bare),
            "store_write_overhead": round(1 - full / bare, 4)}


def pretrain_step(stage: dict, sz: dict) -> dict:
    """supmam-clap step for tiny and base encoders, cached vs online targets; loader vs step."""
    from cache_tools.clips.store import ClipStore
    from cache_tools.grid_map import map_targets, teacher_to_patch_index
    from cache_tools.targets.store import TargetStore
    from pipeline.targets import teacher_targets
    from train.config import load_config
    from train.data import PretrainDataset, StepBatchSampler, build_loader
    from train.model.models_mam import MaskedAudioModel
    from train.pretrain.config import PretrainConfig
    base_cfg = load_config(PretrainConfig, "supmam-clap").model
    b, teach = sz["batch"], stage["teacher"]
    loaders = {}
    for mode, kw in (("cached", dict(targets_path=stage["targets"])), ("online", dict(with_wave=True))):
        ds = PretrainDataset(stage["clips"], **kw)
        dl = build_loader(ds, StepBatchSampler(len(ds), b, 1, 0, 1, 0), num_workers=0, pin_memory=False, seed=0)
        batches = list(dl)  # first pass untimed: the stores' handles and page cache warm up
        loaders[mode] = (batches, common.rate(lambda: list(dl), len(batches) * b, sz["min_time"], warmup=0))
    tstore, clips = TargetStore(stage["targets"]), ClipStore(stage["clips"])
    out = {"preset": "supmam-clap", "batch": b, "target_length": sz["T"], "threads": torch.get_num_threads(),
           "loader_clips_per_s_one_process": {k: round(v[1], 1) for k, v in loaders.items()}}
    for enc in ("tiny", "base"):
        cfg = dataclasses.replace(base_cfg, encoder=enc, encoder_depth=sz["depth"])
        torch.manual_seed(0)
        model = MaskedAudioModel(cfg, target_length=sz["T"], target_dim=tstore.dim, num_classes=clips.num_classes,
                                 multilabel=True)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.05)
        index = teacher_to_patch_index(tstore.grid, tstore.attrs["teacher_mel"], model.encoder.patch_grid,
                                       clip_seconds=sz["seconds"])  # [N]
        it = iter(range(10**9))

        def step(mode: str) -> None:
            batch = loaders[mode][0][next(it) % len(loaders[mode][0])]
            if mode == "online":
                grid = teacher_targets(teach, batch["wave"], "cpu")                # [B,Tt,Ft,D] f16
            else:
                grid = batch["targets"]                                           # [B,Tt,Ft,D] f16
            targets = map_targets(grid, index).float()                            # [B,N,D]
            loss, _, _ = model(batch["fbank"], targets=targets, labels=batch["label"],
                               generator=torch.Generator().manual_seed(1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        spent = {"cached": 0.0, "online": 0.0}
        for i in range(1 + sz["steps"]):       # interleaved, so load drifts hit both modes alike
            for mode in spent:
                t0 = time.perf_counter()
                step(mode)
                spent[mode] += (time.perf_counter() - t0) if i else 0.0  # first round: warm-up
        rates = {m: sz["steps"] * b / t for m, t in spent.items()}
        lc, lo = loaders["cached"][1], loaders["online"][1]
        out[enc] = {"encoder_depth": len(model.encoder.blocks), "embed_dim": model.encoder.embed_dim,
                    "step_clips_per_s": {k: round(v, 3) for k, v in rates.items()},
                    "ratio_online_vs_cached": common.ratio(rates["online"], rates["cached"]),
                    "ratio_loader_vs_step_cached": common.ratio(lc, rates["cached"]),
                    "ratio_loader_vs_step_online": common.ratio(lo, rates["online"]),
                    "waits": "step" if lc > rates["cached"] else "loader"}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CPU benchmarks (ratios against same-run baselines)")
    ap.add_argument("--out", default="bench/results-cpu.json")
    ap.add_argument("--quick", action="store_true", help="toy sizes: every section in seconds (tests)")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sz = SIZES["quick" if args.quick else "full"]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="supmam-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"machine": common.machine_info(), "mode": "quick" if args.quick else "full", "sizes": sz,
           "notes": "every file is read once before read timings (warm page cache); torch runs one thread",
           "sections": {}}
    sec = res["sections"]
    try:
        sec["target_reads"] = common.run_section("target_reads", bench_stores.target_reads, tmp / "t",
                                                 sz["target_clips"], sz["min_time"])
        sec["shard_check"] = common.run_section("shard_check", bench_stores.shard_check, tmp / "h",
                                                sz["shard_clips"])
        sec["clip_reads"] = common.run_section("clip_reads", bench_stores.clip_reads, tmp / "c",
                                               sz["clip_clips"], sz["min_time"])
        sec["prepare"] = common.run_section("prepare", prepare, tmp / "p", sz)
        stage = {}
        sec["teacher"] = common.run_section("teacher", teacher, tmp / "s", sz, stage)
        sec["pretrain_step"] = common.run_section("pretrain_step", pretrain_step, stage, sz)
        sec["finetune_loader"] = common.run_section("finetune_loader", bench_finetune.loader, tmp / "f",
                                                    sz["ft_clips"], sz["T"], sz["seconds"], sz["ft_batch"], 0,
                                                    sz["min_time"] * 5)
        ok = all(sec[k].get("status") == "ok" for k in ("target_reads", "clip_reads"))
        sec["storage"] = (common.run_section("storage", bench_stores.storage, sec["target_reads"], sec["clip_reads"])
                          if ok else {"status": "error", "error": "needs target_reads and clip_reads"})
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for s in sec.values():
        s.pop("_store_path", None)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["table"] = table(sec)
    common.write_json(args.out, res)
    print(f"wrote {args.out} ({res['wall_s']} s; load average {res['machine'].get('loadavg_1m')} -> "
          f"{res['machine']['loadavg_1m_end']} on {res['machine']['cpu_count']} cores)")
    return 0 if all(s.get("status") == "ok" for s in sec.values()) else 1


def table(sec: dict) -> str:
    """One row per ratio: section, what, ratio (and errors)."""
    rows = []
    for name, s in sec.items():
        if s.get("status") != "ok":
            rows.append([name, "ERROR", s.get("error", "")[:70]])
            continue
        for k, v in _flat(s):
            if "ratio" in k or k.endswith("overhead") or k.endswith("waits"):
                rows.append([name, k, v])
    return common.print_table(rows, ["section", "measure", "value"])


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


if __name__ == "__main__":
    sys.exit(main())
