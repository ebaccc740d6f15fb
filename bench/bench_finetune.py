"""Fine-tuning's training loader (train.finetune.augment.TrainClips: waveform mixup, gain, masks) against its
stored-fbank baseline, and, on a GPU, against the ViT fine-tuning step it has to feed.

    loader(tmp, n=..., T=1024, seconds=10.0, batch=32, workers=0, min_time=...)   # bench_cpu.py section
    step(dev, dry, batch)                                                       # gpu_bench.py: clips/s

Loader variants, each through a real DataLoader with SeededSampler (what fit() builds):
  stored       freqm 48 / timem 192 on the stored fbank (no wave work: the AS presets without mixup)
  mixup        + waveform mixup with probability 0.5: half the clips get two waves mixed, then an fbank
  as2m         the as2m preset: mixup 0.5 + roll_mag_aug, so every clip's fbank is recomputed
The bare Kaldi fbank of one clip (cache_tools.fbank) is the per-clip floor of the wave path.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from bench import common, synthetic


def loader(tmp: Path, n: int, T: int, seconds: float, batch: int, workers: int, min_time: float) -> dict:
    """clips/s of the training loader (one process when workers=0) for each variant, and their ratios."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from cache_tools.clips.store import ClipStore
    from cache_tools.fbank import fbank
    from train.finetune.augment import Augment, SeededSampler, TrainClips
    from train.data import worker_init
    from train.finetune.config import load_finetune_config
    from train.finetune.protocols import augment
    tmp.mkdir(parents=True, exist_ok=True)
    store = ClipStore(synthetic.write_clip_store(tmp / "ft.h5", n, T, seconds, seed=5))
    preset = augment(load_finetune_config("as2m", ["init=none"]))
    variants = {"stored": Augment(freqm=48, timem=min(192, T)),
                "mixup": Augment(freqm=48, timem=min(192, T), mixup=0.5),
                "as2m": dataclasses.replace(preset, timem=min(preset.timem, T))}
    rates = {}
    for name, aug in variants.items():
        ds = TrainClips([store], None, aug)
        sampler = SeededSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), seed=0)
        dl = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, worker_init_fn=worker_init,
                        persistent_workers=workers > 0, drop_last=True)
        rates[name] = common.rate(lambda: [None for _ in dl], (n // batch) * batch, min_time)
    w = torch.from_numpy(np.asarray(store.wave(0), np.float32) / 32768)                    # [S]
    bare = common.rate(lambda: fbank(w, T), 1, min_time)
    return {"clips": n, "clip_seconds": seconds, "target_length": T, "batch": batch, "workers": workers,
            "threads": torch.get_num_threads(),
            "clips_per_s": {k: round(v, 1) for k, v in rates.items()} | {"bare_fbank": round(bare, 1)},
            "ratio_mixup_vs_stored": common.ratio(rates["mixup"], rates["stored"]),
            "ratio_as2m_vs_stored": common.ratio(rates["as2m"], rates["stored"]),
            "ratio_as2m_vs_bare_fbank": common.ratio(rates["as2m"], bare)}


def step(dev, dry: bool, batch: int, steps: int, warmup: int) -> dict:
    """clips/s of one fine-tuning update: AudioViT fwd (token masking 0.2 / 0.2) + BCE + bwd + AdamW."""
    import torch
    from train.model.models_vit import build_encoder
    T = 128 if dry else 1024
    torch.manual_seed(0)
    vit = build_encoder("tiny" if dry else "base", 1 if dry else None, target_length=T, num_classes=527,
                        drop_path_rate=0.1).to(dev).train()
    cuda = dev.type == "cuda"
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-4, fused=cuda)
    x = torch.randn(batch, 1, T, 128, device=dev)                                          # [B,1,T,128]
    y = (torch.rand(batch, 527, device=dev) < 0.02).float()                                # [B,C]
    lossf = torch.nn.BCEWithLogitsLoss()

    def one():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = vit(x, 0.2, 0.2)                                                      # [B,C]
        loss = lossf(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if cuda else None
    rate = common.rate(one, batch, float("inf"), max_calls=steps, warmup=warmup, sync=sync)   # `steps` timed calls
    return {"encoder": "tiny" if dry else "base", "target_length": T, "batch": batch, "clips_per_s": round(rate, 1)}


def gpu_section(tmp: Path, dev, dry: bool, cpu_count: int) -> dict:
    """The as2m loader on the GPU machine's cores vs the ViT-B fine-tuning step on its GPU."""
    workers = 2 if dry else max(1, min(16, cpu_count) - 1)
    ld = loader(tmp, n=16 if dry else 512, T=128 if dry else 1024, seconds=1.0 if dry else 10.0,
                batch=4 if dry else 64, workers=workers, min_time=0.05 if dry else 5.0)
    st = step(dev, dry, batch=2 if dry else 64, steps=2 if dry else 20, warmup=1 if dry else 5)
    per_worker = ld["clips_per_s"]["as2m"] / workers
    return {"loader": ld, "step": st, "ratio_loader_as2m_vs_step": common.ratio(ld["clips_per_s"]["as2m"],
                                                                              st["clips_per_s"]),
            "workers_to_feed_step": round(st["clips_per_s"] / max(per_worker, 1e-9), 1)}

