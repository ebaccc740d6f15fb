"""The benchmark scripts run end to end at toy sizes and write every figure they promise.

`bench/gpu.sh --dry-run` runs the GPU benchmark's code on CPU (tiny model, T=128); `bench_cpu.py
--quick` runs every CPU section on toy stores. Speeds are not checked (timings belong in
BENCHMARKS.md), only that each section ran, its ratios are positive numbers, and the FLOP formula
agrees with torch's FlopCounterMode.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRESETS = {"audiomae", "supmam", "mam-clap", "supmam-clap"}


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHON": sys.executable}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_gpu_script_dry_run(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu-results-dry.json").read_text())
    assert res["dry_run"] is True and res["machine"]["torch"]
    configs = res["configs"]
    assert {c["preset"] for c in configs} == PRESETS
    assert any(c["compile"] for c in configs) and any(c["teacher"] == "online" for c in configs)
    for c in configs:
        assert c["status"] == "ok", c
        for key in ("clips_per_s", "step_ms", "tflops_per_step", "achieved_tflops"):
            assert _positive(c[key]), (key, c)
        assert {"mfu", "peak_mem_gib", "final_loss", "warmup_s"} <= set(c)
        assert math.isfinite(c["final_loss"])
        if not c["compile"] and c["teacher"] == "cached":  # shapes formula vs torch's own count
            assert 0.9 < c["flop_counter_ratio"] < 1.1, c
    assert "clips/s" in res["table"] and "MFU" in res["table"]
    ft = res["finetune"]                                                # the fine-tuning loader vs its step
    assert ft["status"] == "ok", ft
    assert _positive(ft["ratio_loader_as2m_vs_step"]) and _positive(ft["workers_to_feed_step"])
    assert all(_positive(v) for v in ft["loader"]["clips_per_s"].values()) and ft["loader"]["workers"] == 2
    assert "preset" in proc.stdout and "wrote" in proc.stdout


def test_cpu_bench_quick(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, "bench/bench_cpu.py", "--quick", "--out", str(out)], cwd=REPO,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    sec = res["sections"]
    expected = {
        "target_reads": ["ratio_single_targetstore_vs_npy", "ratio_single_zarr_vs_npy",
                         "ratio_batch_targetstore_vs_npy", "ratio_batch_zarr_vs_npy"],
        "clip_reads": ["ratio_fbank_clipstore_vs_npy", "ratio_wave_clipstore_vs_npy"],
        "shard_check": ["first_read_ms_verified", "ratio_first_read_verified_vs_unverified"],
        "prepare": ["ratio_featurise_vs_bare_fbank", "ratio_prepare_vs_bare_fbank"],
        "finetune_loader": ["ratio_mixup_vs_stored", "ratio_as2m_vs_stored", "ratio_as2m_vs_bare_fbank"],
        "teacher": ["ratio_build_targets_vs_token_grid"],
        "storage": ["ratio_target_store_vs_per_patch_fp32", "ratio_target_store_vs_per_patch_fp16",
                    "ratio_clip_store_vs_per_patch_fp32"],
    }
    assert set(sec) == set(expected) | {"pretrain_step"}
    for name, keys in expected.items():
        assert sec[name]["status"] == "ok", sec[name]
        for k in keys:
            assert _positive(sec[name][k]), (name, k, sec[name][k])
    assert sec["target_reads"]["identical_to_npy"] and sec["clip_reads"]["identical_to_npy"]
    assert sec["target_reads"]["memmap_path"] is True
    tr, clip_bytes = sec["target_reads"], 32 * 2 * 768 * 2             # one fp16 [Tt=32, Ft=2, D=768] grid
    assert tr["npy_bytes"] == 128 + tr["clips"] * clip_bytes          # .npy: a 128-byte header, then raw
    assert tr["store_bytes"] == pytest.approx(tr["clips"] * clip_bytes, rel=0.01)   # uncompressed shards
    step = sec["pretrain_step"]
    assert step["status"] == "ok", step
    for enc in ("tiny", "base"):
        for k in ("ratio_online_vs_cached", "ratio_loader_vs_step_cached", "ratio_loader_vs_step_online"):
            assert _positive(step[enc][k]), (enc, k)
        assert step[enc]["waits"] in ("step", "loader")
    assert step["base"]["embed_dim"] == 768 and step["tiny"]["embed_dim"] == 192
    # storage ratios follow from the shapes: a 32x2 teacher grid is 1/8 of a 64x8 patch grid
    st = sec["storage"]
    assert st["student_grid"] == [64, 8] and st["per_patch_fp32_bytes_per_clip"] == 64 * 8 * 768 * 4
    assert st["ratio_target_store_vs_per_patch_fp16"] == pytest.approx(1 / 8, rel=0.05)
    assert "ratio" in res["table"]
