"""`supmam embed` throughput: 10 s clips through a ViT-B (AudioSet geometry, 1024 frames), on CPU.

    .venv/bin/python bench/bench_embed.py --out /tmp/embed.json          # ViT-B, 16 clips (~1 min on 2 cores)
    .venv/bin/python bench/bench_embed.py --size tiny --num-clips 4      # quick

Measures, side by side in one process (random weights: speed does not depend on them):
  files      train.use.embed_files.embed_files over N 10 s WAV files (44.1 kHz stereo: decode, downmix,
             resample, fbank, normalise, encoder, HDF5 write)  -> clips/s
  api        PretrainedEncoder.embed on 16 kHz waves already in memory, batches of --batch -> clips/s
  encoder    the bare AudioViT.forward_tokens on a [batch, 1, 1024, 128] input -> clips/s (the floor)
Threads: torch's default (all cores) unless --threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np        # noqa: E402
import soundfile as sf    # noqa: E402
import torch              # noqa: E402

from bench.common import machine_info, rate  # noqa: E402
from train.use.embed import load_pretrained  # noqa: E402
from train.use.embed_files import embed_files  # noqa: E402
from train.model.checkpoint import save_checkpoint  # noqa: E402
from train.model.models_vit import build_encoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    ap.add_argument("--num-clips", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vit = build_encoder(args.size, target_length=1024).eval()
    rng = np.random.default_rng(0)
    res: dict = {"machine": machine_info(), "size": args.size, "clips": args.num_clips, "clip_seconds": 10.0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_checkpoint(tmp / "checkpoint.pt", {"kind": "pretrain", "norm": {"mean": -4.27, "std": 4.57},
                                                "model": {f"encoder.{k}": v for k, v in vit.state_dict().items()}})
        enc = load_pretrained(tmp / "checkpoint.pt")
        (tmp / "audio").mkdir()
        for i in range(args.num_clips):
            sf.write(tmp / "audio" / f"{i:03d}.wav", rng.uniform(-0.3, 0.3, (441000, 2)).astype(np.float32), 44100)
        t0 = time.perf_counter()
        r = embed_files(enc, [tmp / "audio"], tmp / "emb.h5", progress=False)
        res["files_clips_per_s"] = round(r["written"] / (time.perf_counter() - t0), 3)
        waves = torch.from_numpy(rng.uniform(-0.3, 0.3, (args.batch, 160000)).astype(np.float32))
        res["api_clips_per_s"] = round(rate(lambda: enc.embed(waves, 16000, max_batch=args.batch),
                                            args.batch, min_time=3.0), 3)
        x = torch.randn(args.batch, 1, 1024, 128)
        with torch.no_grad():
            res["encoder_clips_per_s"] = round(rate(lambda: vit.forward_tokens(x), args.batch, min_time=3.0), 3)
    res["ratio_files_vs_encoder"] = round(res["files_clips_per_s"] / res["encoder_clips_per_s"], 3)
    res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
