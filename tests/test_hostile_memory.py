"""Memory bounded by the work, not by what a file claims (issue 20, item 1).

Each command runs in a subprocess whose address space is capped at what its imports took plus a
budget (resource.RLIMIT_AS); it must succeed, or end with one `error:` line, inside that budget.
The tests make the hostile files themselves: WAVs at rates sharing no factor with 16 kHz, a long
file embedded with heavily overlapping windows, checkpoints claiming 20001 blocks or a 32768-d width,
tensors that claim more elements than their storage holds, and a .pt zip with deflated entries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from cache_tools.clips.store import ClipStore
from cache_tools.errors import CheckpointError, StoreError
from cache_tools.safe_load import safe_torch_load
from train.model.checkpoint import load_encoder, save_checkpoint
from train.model.models_vit import AudioViT

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
CHILD = """
import json, os, resource, sys, torch
torch.set_num_threads(1)
from pipeline.app.cli import app
import h5py, soxr, av, train.use.embed, train.use.embed_files, pipeline.prepare  # what commands import lazily

def vm(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))

start, budget = vm("VmSize"), int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (start + budget, start + budget))
codes = []
for k, cmd in enumerate(json.loads(sys.argv[2])):
    print(f"=== command {k}", file=sys.stderr, flush=True)
    try:
        app(args=cmd, prog_name="supmam")
    except SystemExit as e:
        codes.append(e.code if isinstance(e.code, int) else int(e.code is not None))
open(os.environ["PEAK_FILE"], "w").write(json.dumps({"grown": vm("VmPeak") - start, "codes": codes}))
"""


def run_capped(tmp_path: Path, budget_mb: int, *commands: list[str]) -> tuple[list[SimpleNamespace], int]:
    """Each `supmam *command`, one after the other in one process whose address space is capped at
    (imports + budget_mb) -> ([(returncode, stderr)] per command, peak growth over the imports in MB)."""
    peak = tmp_path / f"peak.{len(list(tmp_path.glob('peak.*')))}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", "PEAK_FILE": str(peak),
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(budget_mb * MB), json.dumps([list(map(str, c)) for c in commands])],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and peak.is_file(), r.stderr[-3000:]               # no traceback, no kill
    done = json.loads(peak.read_text())
    parts = r.stderr.split("=== command ")[1:]                                  # stderr of each command
    return [SimpleNamespace(returncode=c, stderr=e) for c, e in zip(done["codes"], parts)], done["grown"] // MB


def one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The run ended with exit 1 and exactly one `error:` line (no traceback) holding every needle."""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    vit = AudioViT(target_length=1024, embed_dim=64, depth=1, num_heads=1).eval()
    path = tmp_path_factory.mktemp("ck") / "checkpoint.pt"
    save_checkpoint(path, {"kind": "finetune", "model": vit.state_dict(), "norm": {"mean": -5.0, "std": 4.0}})
    return path


def noise(seconds: float, sr: int) -> np.ndarray:
    return np.random.default_rng(sr).uniform(-0.5, 0.5, int(round(seconds * sr))).astype(np.float32)


def test_coprime_rates_resample_within_budget(tiny_ckpt, tmp_path):
    """16001 Hz took torchaudio's sinc resampler to 5.2 GB (a [16000, 16015] kernel; `embed` of a 1 s
    file grew the address space by 4227 MB here, now 136 MB); every rate of the allowed range now
    embeds, and prepares, inside 600 MB above the imports (no file skipped)."""
    d = tmp_path / "audio"
    for cls, rates in (("dog", (16001, 44099, 1009)), ("cat", (32003, 383999))):
        (d / cls).mkdir(parents=True)
        for sr in rates:
            sf.write(d / cls / f"r{sr}.wav", noise(1.0, sr), sr)
    out, store = tmp_path / "e.h5", tmp_path / "s.h5"
    (r, p), grown = run_capped(tmp_path, 600, ["embed", d, "--ckpt", tiny_ckpt, "--out", out],
                               ["prepare", "folder", "--root", d, "--out", store, "--workers", "1"])
    assert r.returncode == 0 and p.returncode == 0, r.stderr[-2000:] + p.stderr[-2000:]
    with h5py.File(out) as f:
        assert len(f["clip_id"]) == 5 and np.isfinite(f["clip"][:]).all()
    assert len(ClipStore(store)) == 5 and 0 <= grown < 600


def test_resample_coprime_matches_length_and_band():
    """The soxr path keeps torchaudio's length contract and passes a tone below 8 kHz unchanged."""
    from pipeline.audio_io import resample
    t = np.arange(16001) / 16001
    tone = torch.from_numpy(np.sin(2 * np.pi * 440 * t).astype(np.float32))[None]     # [1, 16001]
    y = resample(tone, 16001, 16000)                                                  # [1, 16000]
    assert y.shape == (1, 16000) and y.dtype == torch.float32
    want = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(y[0, 100:-100].numpy() - want[100:-100]).max() < 1e-2
    with pytest.raises(ValueError, match="positive"):
        resample(tone, 0, 16000)


def test_embed_streams_windows(tiny_ckpt, tmp_path):
    """A 5-minute file at --hop 0.16 is 1875 overlapping windows: all at once they grew the address
    space by 674 MB with this 64-d encoder (2.9 GB at ViT-B's width); streamed, 174 MB (measured on the
    2-core CPU VM), and the run must stay under 350 MB."""
    wav = tmp_path / "long.wav"
    sf.write(wav, noise(300.0, 16000), 16000)
    out = tmp_path / "long.h5"
    (r,), grown = run_capped(tmp_path, 350, ["embed", wav, "--ckpt", tiny_ckpt, "--out", out, "--hop", "0.16"])
    assert r.returncode == 0, r.stderr[-3000:]
    with h5py.File(out) as f:
        assert f["frames"].shape == (1875, 64) and np.isfinite(f["frames"][:]).all()
    assert 0 <= grown < 350


def _small_state() -> dict:
    torch.manual_seed(0)
    return dict(AudioViT(target_length=128, embed_dim=64, depth=2, num_heads=1).state_dict())


def _deflated(plain: Path, packed: Path) -> Path:
    """`plain` (a torch zip) rewritten with deflated entries plus 256 MiB of zeros (~0.3 MB deflated)."""
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open(f"{src.namelist()[0].split('/')[0]}/data/zeros", "w") as big:
            for _ in range(256):
                big.write(bytes(MB))
    return packed


def test_claimed_sizes_are_refused_within_budget(tmp_path):
    """What a small file claims is checked before anything is built or expanded: one extra key
    `blocks.20000.*` once built 20001 blocks (8 GB), a 32768-d patch embedding a 12.9 GB model, a
    deflated .pt expanded before any key was checked. Each is one error line inside 300 MB."""
    sd = _small_state()
    sd["blocks.20000.norm1.weight"] = torch.ones(64)
    save_checkpoint(tmp_path / "deep.pt", {"model": sd})
    wide = {"patch_embed.proj.weight": torch.zeros(32768, 1, 16, 16), "cls_token": torch.zeros(1, 1, 32768),
            "pos_embed": torch.zeros(1, 9, 32768), "blocks.0.mlp.fc1.weight": torch.zeros(4, 4)}
    save_checkpoint(tmp_path / "wide.pt", {"model": wide})
    save_checkpoint(tmp_path / "plain.pt", {"model": _small_state()})
    packed = _deflated(tmp_path / "plain.pt", tmp_path / "packed.pt")
    assert (tmp_path / "deep.pt").stat().st_size < MB and packed.stat().st_size < 2 * MB
    names = ("deep.pt", "wide.pt", "packed.pt")
    runs, grown = run_capped(tmp_path, 300, *(["embed", tmp_path, "--ckpt", tmp_path / n, "--out", tmp_path / "o.h5"]
                                              for n in names))
    for r, name, needle in zip(runs, names, ("blocks 0..20000 (3 present)", "embed_dim 32768 is outside",
                                             "compressed entries")):
        one_error_line(r, name, needle)
    assert len(runs) == 3 and 0 <= grown < 300


def test_claimed_depth_is_checked_before_building(tmp_path):
    sd = _small_state()
    sd["blocks.20000.norm1.weight"] = torch.ones(64)
    save_checkpoint(tmp_path / "deep.pt", {"model": sd})
    with pytest.raises(CheckpointError, match=r"deep\.pt: blocks 0\.\.20000 \(3 present\)"):
        load_encoder(tmp_path / "deep.pt")
    sd = _small_state()
    del sd["blocks.1.mlp.fc2.bias"]                                           # a block not whole
    save_checkpoint(tmp_path / "part.pt", {"model": sd})
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.bias is missing"):
        load_encoder(tmp_path / "part.pt")


def test_claimed_width_is_checked_before_building(tmp_path):
    """Block shapes that do not follow the width, broadcast views claiming more than their storage
    and position tables over MAX_FRAMES are refused before the model is built."""
    sd = _small_state()
    sd["blocks.1.attn.qkv.weight"] = torch.zeros(192, 32)                      # not [3D, D]
    save_checkpoint(tmp_path / "shape.pt", {"model": sd})
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.qkv\.weight is \(192, 32\), expected \(192, 64\)"):
        load_encoder(tmp_path / "shape.pt")
    sd = _small_state()
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(1).expand(256, 64)           # 4 bytes standing for 64 KB
    save_checkpoint(tmp_path / "view.pt", {"model": sd})
    with pytest.raises(CheckpointError, match=r"fc1\.weight` claims shape \(256, 64\) over a storage of 4 bytes"):
        load_encoder(tmp_path / "view.pt")
    sd = _small_state()
    del sd["pos_embed"]
    sd["pos_embed"] = torch.zeros(1, 1 + 8 * 4096, 64)                       # 524288 frames
    save_checkpoint(tmp_path / "long.pt", {"model": sd})
    with pytest.raises(CheckpointError, match="position table covers 65536 frames"):
        load_encoder(tmp_path / "long.pt")


def test_deflated_torch_zip_is_refused_before_loading(tmp_path):
    """torch never compresses its zip entries; a deflated one is refused from the zip directory."""
    save_checkpoint(tmp_path / "plain.pt", {"model": _small_state()})
    packed = _deflated(tmp_path / "plain.pt", tmp_path / "packed.pt")
    with pytest.raises(StoreError, match=r"packed\.pt: holds \d+ compressed entries"):
        safe_torch_load(packed)
    with pytest.raises(CheckpointError, match="compressed entries"):
        load_encoder(packed)
    assert safe_torch_load(tmp_path / "plain.pt")["model"]["cls_token"].shape == (1, 1, 64)   # torch's own file loads


def test_streamed_fbank_and_windows_equal_the_whole_clip(tiny_ckpt):
    """Streaming changes memory, not values: fbank in chunks equals the clip's fbank (to float rounding:
    torch's thread count changes the summation order), and embed's output does not depend on how many
    windows go through the encoder at once."""
    from pipeline.features import fbank
    from train.use.embed import fbank_chunked, fbank_frames, load_pretrained
    x = torch.from_numpy(noise(3.3, 16000))                                       # [52800] -> 328 frames
    n_f = fbank_frames(len(x))
    assert n_f == 328
    torch.testing.assert_close(fbank_chunked(x, chunk=7), fbank(x, n_f), atol=1e-5, rtol=0)
    enc = load_pretrained(tiny_ckpt)
    long = noise(12.0, 16000)                                                    # 3 windows of 10.24 s at hop 1.28
    one, many = enc.embed(long, 16000, hop=1.28, max_batch=1), enc.embed(long, 16000, hop=1.28, max_batch=64)
    assert torch.equal(one.patches, many.patches) and one.frames.shape == (1, 75, 64)
    lean = enc.embed(long, 16000, hop=1.28, patches=False)
    assert lean.patches is None and torch.equal(lean.frames, many.frames)


def test_stitch_plan_is_linear_in_the_columns():
    """The window each column comes from, in O(columns): the same answer as the [W, G] distance table
    (which for an hour at a one-column hop was a 4 GB float64 table, plus its masks)."""
    from train.use.embed import _stitch_plan_table, stitch_plan
    for G in (1, 7, 63, 64, 65, 150):
        for L in (1, 4, 8, 64):
            for h in sorted({h for h in (1, 3, L // 2, L) if 1 <= h <= L}):           # hop_columns: 1..L
                got, want = stitch_plan(G, L, h), _stitch_plan_table(G, L, h)
                assert got[0] == want[0] and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2]), (G, L, h)
    W, w, c = stitch_plan(22500, 64, 1)                                          # an hour, 1024-frame windows
    assert W == 22437 and bool((w[1:] >= w[:-1]).all()) and int(c.min()) >= 0 and int(c.max()) < 64
