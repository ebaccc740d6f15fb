"""GPU benchmark of the stage-two pretraining step (run through bench/gpu.sh).

For each preset (audiomae, supmam, mam-clap, supmam-clap) at ViT-B, T=1024: clips/s, peak memory
and MFU of one optimizer step (forward + backward + AdamW) under bf16 autocast with timm's fused
SDPA attention, `torch.compile` off and on, batch 32/64/128; and cached targets vs the online
CLAP teacher (HTSAT-tiny, random weights) on the same GPU. Data are synthetic tensors already on
the device, so the figures are the model's ceiling (the loader is measured by bench_cpu.py).

Every configuration runs in try/except its error is recorded, a global time budget stops the
run cleanly, and configurations run in priority order so a short budget still answers the main
questions. MFU = FLOPs counted from the shapes (bench/flops.py) / step time / bf16 dense peak.
`--dry-run`: the same code on CPU at toy sizes (tiny 1-layer encoder, T=128), in seconds.

First, the fine-tuning question (bench_finetune.gpu_section): can the training loader of the as2m
preset (waveform mixup + gain, so every clip's Kaldi fbank is computed in the loader workers) feed a
ViT-B fine-tuning step on this GPU? Loader clips/s with the machine's cores as workers, the step's
clips/s, and the workers one step needs (JSON key `finetune`).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import bench_finetune, common  # noqa: E402
from bench.flops import mam_step_flops, peak_flops  # noqa: E402

PRESETS = ["supmam-clap", "mam-clap", "supmam", "audiomae"]
# Used only if configs/pretrain/<preset>.toml cannot be loaded (DESIGN.md's paper settings).
FALLBACK = {
    "audiomae": dict(objectives=["rec"], mask_ratio=0.8, decoder_depth=16, decoder_dim=512, decoder_heads=16),
    "supmam": dict(objectives=["rec", "cls"], mask_ratio=0.4, decoder_depth=16, decoder_dim=512,
                   decoder_heads=16, lambda_cls=0.01),
    "mam-clap": dict(objectives=["clap"], mask_ratio=0.2, decoder_depth=1),
    "supmam-clap": dict(objectives=["clap", "cls"], mask_ratio=0.2, decoder_depth=1, lambda_cls=1e-4),
}
NUM_CLASSES, TEACHER_GRID, TEACHER_DIM = 527, (32, 2), 768


def load_grid_map():
    """cache_tools.grid_map, loaded by file path if the package __init__ needs zarr (absent on GPU boxes)."""
    try:
        from cache_tools import grid_map
        return grid_map
    except ImportError:
        path = common.REPO / "cache_tools" / "grid_map.py"
        spec = importlib.util.spec_from_file_location("bench_grid_map", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def mam_config(preset: str, dry: bool):
    """(MAMConfig, source) for a preset: the preset TOML's model table, else FALLBACK."""
    from train.model.models_mam import MAMConfig
    try:
        from train.config import load_config
        from train.pretrain.config import PretrainConfig
        cfg, source = load_config(PretrainConfig, preset).model, f"configs/pretrain/{preset}.toml"
    except Exception as e:  # noqa: BLE001
        cfg, source = MAMConfig(**FALLBACK[preset]), f"fallback ({type(e).__name__}: {e})"
    over = dict(encoder="base")
    if dry:
        over = dict(encoder="tiny", encoder_depth=1,
                    decoder_depth=min(cfg.decoder_depth, 1), decoder_dim=64, decoder_heads=2)
    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in over.items() if k in fields}), source


def build(preset: str, dev, dry: bool):
    import torch
    from train.model.models_mam import MaskedAudioModel
    cfg, source = mam_config(preset, dry)
    torch.manual_seed(0)
    model = MaskedAudioModel(cfg, target_length=128 if dry else 1024,
                             target_dim=TEACHER_DIM if "clap" in cfg.objectives else None,
                             num_classes=NUM_CLASSES if "cls" in cfg.objectives else None,
                             multilabel=True).to(dev)
    return model, cfg, source


def step_flops(model, cfg, batch: int) -> dict:
    enc = model.encoder
    tp, fp = enc.patch_grid
    dec_blocks = getattr(model, "decoder_blocks", [])
    window = list(getattr(cfg, "decoder_window", [4, 4]))
    return mam_step_flops(batch, tp * fp, cfg.mask_ratio, enc.embed_dim, len(enc.blocks),
                          cfg.decoder_dim, len(dec_blocks), window[0] * window[1], list(cfg.objectives),
                          TEACHER_DIM, 16, getattr(cfg, "cls_hidden", 0) or 0, NUM_CLASSES,
                          visible_head=hasattr(model, "target_head_visible"))


def run_config(c: dict, args, dev, teacher_cache: dict) -> dict:
    """One configuration: build, warm up (compiles here), time `steps` optimizer steps."""
    import torch
    model, cfg, source = build(c["preset"], dev, args.dry_run)
    cuda = dev.type == "cuda"
    step, inputs = make_step(c, model, cfg, dev, args.dry_run, teacher_cache)
    warm_s, dt, loss = time_steps(step, args.warmup, args.steps, cuda)
    b = c["batch"]
    fl = step_flops(model, cfg, b)
    peak = peak_flops(torch.cuda.get_device_name(0)) if cuda else None
    out = {"clips_per_s": round(b / dt, 2), "step_ms": round(dt * 1e3, 2), "warmup_s": round(warm_s, 1),
           "final_loss": float(loss.detach()), "tflops_per_step": sig(fl["train_step"] / 1e12),
           "achieved_tflops": sig(fl["train_step"] / dt / 1e12),
           "mfu": round(fl["train_step"] / dt / peak, 4) if peak else None,
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
           "mask_ratio": cfg.mask_ratio, "objectives": list(cfg.objectives), "config_source": source}
    if not c["compile"] and c["teacher"] == "cached":  # a failure here must not lose the timings above
        try:
            out["flop_counter_ratio"] = flop_counter_check(model, inputs["fbank"], inputs["labels"], inputs["tgt"],
                                                           inputs["gm"], inputs["index"], cfg, fl)
        except Exception as e:  # noqa: BLE001
            out["flop_counter_error"] = f"{type(e).__name__}: {e}"
    return out


def make_step(c: dict, model, cfg, dev, dry_run: bool, teacher_cache: dict):
    """(step(), inputs): one optimizer step of `model` on fixed random inputs of the configuration's
    batch (cached targets, or the teacher online), and those inputs."""
    import torch
    cuda = dev.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=cuda)
    fwd = torch.compile(model, backend="eager" if dry_run else "inductor") if c["compile"] else model
    b, t = c["batch"], model.encoder.patch_grid[0] * model.encoder.patch     # fbank frames
    g = torch.Generator(device=dev).manual_seed(0)
    fbank = torch.randn(b, 1, t, 128, device=dev, generator=g)  # [B,1,T,128]
    labels = (torch.rand(b, NUM_CLASSES, device=dev, generator=g) < 0.05).float()  # [B,C]
    tgt = torch.randn(b, *TEACHER_GRID, TEACHER_DIM, device=dev, generator=g).half()  # [B,Tt,Ft,D]
    wave = (torch.rand(b, int(t * 160), device=dev, generator=g) - 0.5) * 0.2  # [B,S] 16 kHz
    gm = load_grid_map()
    from pipeline.teacher import HTSAT_MEL
    index = gm.teacher_to_patch_index(TEACHER_GRID, HTSAT_MEL, model.encoder.patch_grid).to(dev)  # [N]
    teacher = None
    if c["teacher"] == "online":
        teacher = teacher_cache.get("t") or load_teacher(dev)
        teacher_cache["t"] = teacher
    use_t = "clap" in cfg.objectives
    mask_gen = torch.Generator(device=dev).manual_seed(1)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            targets = None
            if use_t:
                grid = teacher(wave) if teacher is not None else tgt  # [B,Tt,Ft,D] f16 (online: as `--teacher online`)
                targets = gm.map_targets(grid, index).float()  # [B,N,D]
            loss, parts, mask = fwd(fbank, targets=targets,
                                    labels=labels if "cls" in cfg.objectives else None, generator=mask_gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, {"fbank": fbank, "labels": labels, "tgt": tgt, "gm": gm, "index": index}


def time_steps(step, warmup: int, steps: int, cuda: bool):
    """(warm-up seconds, seconds per timed step, last loss): `warmup` untimed steps, then `steps` timed."""
    import torch
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    return warm_s, (time.perf_counter() - t0) / steps, loss


def sig(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (toy dry-run sizes give tiny TFLOP counts)."""
    return float(f"{x:.{digits}g}")


def flop_counter_check(model, fbank, labels, tgt, gm, index, cfg, fl) -> float:
    """torch's FlopCounterMode over one fwd+bwd, divided by our formula (should be ~1)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    targets = gm.map_targets(tgt, index).float() if "clap" in cfg.objectives else None
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _, _ = model(fbank, targets=targets, labels=labels if "cls" in cfg.objectives else None,
                           generator=torch.Generator(device=fbank.device).manual_seed(2))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return round(counter.get_total_flops() / fl["train_step"], 4)


def load_teacher(dev):
    """The callable `supmam pretrain --teacher online` runs in the step (HTSAT-tiny, random weights)."""
    from pipeline.app.online_teacher import online_teacher
    return online_teacher(None, "HTSAT-tiny", seed=0, device=str(dev))


def plan(dry: bool) -> list[dict]:
    """Configurations in priority order (the budget may stop the run part-way)."""
    if dry:
        return ([dict(preset=p, batch=2, compile=False, teacher="cached") for p in PRESETS]
                + [dict(preset="supmam-clap", batch=2, compile=False, teacher="online"),
                   dict(preset="mam-clap", batch=2, compile=True, teacher="cached")])
    c = [dict(preset=p, batch=bs, compile=False, teacher="cached") for bs in (64, 128, 32) for p in PRESETS]
    c.insert(4, dict(preset="supmam-clap", batch=64, compile=False, teacher="online"))
    c += [dict(preset=p, batch=64, compile=True, teacher="cached") for p in ["supmam-clap", "audiomae"]]
    c += [dict(preset=p, batch=128, compile=True, teacher="cached") for p in ["supmam-clap", "audiomae"]]
    c += [dict(preset=p, batch=64, compile=True, teacher="cached") for p in ["mam-clap", "supmam"]]
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, seconds")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds for the whole run")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu-results.json or bench/)")
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 10)
    args.warmup = args.warmup or (1 if args.dry_run else 3)
    import torch
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if dev.type == "cpu" and not args.dry_run:
        print("[gpu_bench] no CUDA device: running toy sizes on CPU (like --dry-run)", flush=True)
        args.dry_run = True
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else common.REPO / "bench"
    out_path = Path(args.out) if args.out else out_dir / ("gpu-results-dry.json" if args.dry_run else "gpu-results.json")
    t_start = time.perf_counter()
    results = {"machine": common.machine_info(), "timm_fused_attn": fused_attn(), "dry_run": args.dry_run, "budget_s": args.budget,
               "steps": args.steps, "warmup": args.warmup, "flops_formula": "bench/flops.py docstring",
               "peak_bf16_flops": peak_flops(results_dev_name(dev)), "configs": []}
    import tempfile
    with tempfile.TemporaryDirectory(prefix="supmam-ft-bench-") as tmp:
        results["finetune"] = common.run_section("finetune", bench_finetune.gpu_section, Path(tmp), dev,
                                                 args.dry_run, os.cpu_count() or 1)
    print(f"[gpu_bench] finetune loader vs step: {results['finetune'].get('ratio_loader_as2m_vs_step')} "
          f"({results['finetune'].get('status')})", flush=True)
    common.write_json(out_path, results)
    teacher_cache: dict = {}
    for c in plan(args.dry_run):
        name = f"{c['preset']} b{c['batch']} {'compile' if c['compile'] else 'eager'} {c['teacher']}"
        left = args.budget - (time.perf_counter() - t_start)
        # seconds a config needs: eager vs compiled (H200 figures: BENCHMARKS.md, run times)
        need = (130 if c["preset"] in ("audiomae", "supmam") else 60) if c["compile"] else 10
        need = 1 if args.dry_run else need
        if left < need:
            rec = {**c, "status": "skipped", "error": f"time budget: {left:.0f}s left, needs ~{need}s"}
        else:
            rec = {**c, **common.run_section(name, run_config, c, args, dev, teacher_cache)}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        results["configs"].append(rec)
        print(f"[gpu_bench] {name}: {rec['status']} {rec.get('clips_per_s', rec.get('error', ''))}", flush=True)
        common.write_json(out_path, results)  # partial results survive a kill
    results["table"] = table(results["configs"])
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    common.write_json(out_path, results)
    print(f"[gpu_bench] wrote {out_path} in {results['wall_s']} s", flush=True)
    return 0


def fused_attn() -> bool | str:
    """Whether timm's Attention takes the fused F.scaled_dot_product_attention path."""
    try:
        from timm.layers import use_fused_attn
        return use_fused_attn()
    except ImportError as e:
        return f"unknown ({e})"


def results_dev_name(dev) -> str:
    import torch
    return torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"


def table(configs: list[dict]) -> str:
    base = {(c["preset"], c["batch"]): c.get("clips_per_s") for c in configs
            if c.get("status") == "ok" and not c["compile"] and c["teacher"] == "cached"}
    rows = [[c["preset"], c["batch"], "on" if c["compile"] else "off", c["teacher"], c.get("status"),
             c.get("clips_per_s"), c.get("step_ms"), c.get("mfu"), c.get("peak_mem_gib"),
             common.ratio(c.get("clips_per_s"), base.get((c["preset"], c["batch"]))),
             (c.get("error") or "")[:60]] for c in configs]
    return common.print_table(rows, ["preset", "batch", "compile", "teacher", "status", "clips/s", "ms/step",
                                     "MFU", "peak GiB", "x eager-cached", "error"])


if __name__ == "__main__":
    sys.exit(main())
