"""train.use.embed: load_pretrained on every encoder file kind, and embed() against a hand-built reference
(Kaldi fbank -> normalise -> pad / window by hand -> AudioViT.forward_tokens -> pick columns)."""
from __future__ import annotations

import argparse
import fractions
import math

import numpy as np
import pytest
import torch
import torchaudio

from train.use.embed import load_pretrained
from pipeline.features import FBANK_PARAMS, NORM_STATS
from train.model.checkpoint import save_checkpoint
from train.model.models_mam import MAMConfig, MaskedAudioModel
from train.model.models_vit import AudioViT
from cache_tools.errors import CheckpointError, ConfigError

L = 128                 # the tiny encoder's trained length: 128 frames = 8 time patches = 1.28 s
MEAN, STD = -5.5, 3.25  # stats stored in the test checkpoints (not any dataset's constants)


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def tiny_vit(seed: int = 0, **kw) -> AudioViT:
    torch.manual_seed(seed)
    vit = AudioViT(target_length=L, embed_dim=128, depth=2, num_heads=2, **kw)   # heads = D / 64, as files infer
    return vit.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    vit = tiny_vit()
    path = tmp_path_factory.mktemp("ck") / "checkpoint.pt"
    save_checkpoint(path, {"kind": "finetune", "model": vit.state_dict(), "norm": {"mean": MEAN, "std": STD},
                           "rng": {"numpy": np.random.get_state()}})          # numpy state, as pretraining saves
    return path, vit


def noise(seconds: float, sr: int = 16000, channels: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    return rng.uniform(-0.5, 0.5, (channels, n) if channels else n).astype(np.float32)


def reference_columns(vit: AudioViT, wave16: np.ndarray, hop_cols: int) -> tuple[torch.Tensor, int]:
    """Expected patches [G, F', D] for one 16 kHz mono wave, built window by window in plain loops."""
    w = torch.from_numpy(wave16).float()[None]
    fb = torchaudio.compliance.kaldi.fbank(w - w.mean(), **FBANK_PARAMS)            # [n_f, 128]
    n_f, p = fb.shape[0], 16
    G = max(1, int(math.floor(n_f / p + 0.5)))                                      # columns >= half real
    Tp = L // p
    starts = [0]                                                                    # window starts, in columns
    while starts[-1] + Tp < G:                                                      # until every kept column is in one
        starts.append(starts[-1] + hop_cols)
    total = starts[-1] * p + L
    fb = torch.cat([fb, torch.zeros(total - n_f, fb.shape[1])])                     # zero frames, as training
    x = (fb - MEAN) / (2 * STD)
    with torch.no_grad():
        outs = [vit.forward_tokens(x[s * p:s * p + L][None, None]).reshape(Tp, 8, -1) for s in starts]
    cols = []
    for g in range(G):
        best = min((abs(g - s + 0.5 - Tp / 2), k) for k, s in enumerate(starts) if s <= g < s + Tp)[1]
        cols.append(outs[best][g - starts[best]])
    return torch.stack(cols), n_f


def test_short_clip_matches_reference_and_timestamps(ckpt):
    path, vit = ckpt
    enc = load_pretrained(path)
    assert enc.norm_source == "stored in the checkpoint" and (enc.norm_mean, enc.norm_std) == (MEAN, STD)
    wave = noise(0.9, sr=44100, channels=2, seed=1)                               # stereo 44.1 kHz, < 1 window
    e = enc.embed(wave[None], 44100)                                               # [B=1, C=2, n]
    mono16 = torchaudio.functional.resample(torch.from_numpy(wave.mean(0)), 44100, 16000).numpy()
    want, n_f = reference_columns(vit, mono16, hop_cols=8)
    assert n_f == 88 and e.patches.shape == (1, 6, 8, 128)                          # 88 frames -> 5.5 -> 6 columns
    torch.testing.assert_close(e.patches[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e.frames[0], want.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e.clip[0], want.mean((0, 1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e.timestamps, 0.0875 + 0.16 * torch.arange(6.0, dtype=torch.float64))  # centres, s
    assert e.timestamps[-1] < 0.9 and e.window == pytest.approx(1.28)


@pytest.mark.parametrize("hop", [None, 0.64, 0.5])
def test_long_clip_windows_and_stitching(ckpt, hop):
    path, vit = ckpt
    enc = load_pretrained(path)
    wave = noise(4.1, seed=2)                                                      # ~3.2 windows
    e = enc.embed(wave, 16000, hop=hop)
    hop_cols = {None: 8, 0.64: 4, 0.5: 3}[hop]                                     # 0.5 s -> 3.125 -> 3 columns
    assert e.hop == pytest.approx(hop_cols * 0.16)
    want, n_f = reference_columns(vit, wave, hop_cols)
    assert e.patches.shape[1] == want.shape[0] == 26                               # 408 frames -> 25.5 -> 26
    torch.testing.assert_close(e.patches[0], want, atol=1e-5, rtol=1e-5)
    steps = torch.diff(e.timestamps)
    assert torch.allclose(steps, torch.full_like(steps, 0.16)) and e.timestamps[-1] < 4.1


def test_batch_equals_single_calls_and_is_deterministic(ckpt):
    enc = load_pretrained(ckpt[0])
    batch = np.stack([noise(3.0, seed=s) for s in range(3)])                       # [3, n]
    e = enc.embed(torch.from_numpy(batch), 16000, max_batch=2)
    for i in range(3):
        one = enc.embed(batch[i], 16000)
        torch.testing.assert_close(one.patches[0], e.patches[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(one.clip[0], e.clip[i], atol=1e-5, rtol=1e-5)
    again = enc.embed(torch.from_numpy(batch), 16000, max_batch=2)
    assert torch.equal(again.patches, e.patches) and torch.equal(again.clip, e.clip)
    assert not enc.training and not any(p.requires_grad for p in [e.clip, e.frames, e.patches])
    enc.train()                                                                    # stays in eval mode
    assert not enc.vit.training


def test_layers(ckpt):
    path, vit = ckpt
    enc = load_pretrained(path)
    wave = noise(1.0, seed=3)
    last, named, first = (enc.embed(wave, 16000, layer=k) for k in (-1, 1, 0))
    assert torch.equal(last.patches, named.patches) and last.layer == named.layer == 1
    w = torch.from_numpy(wave)[None]                                               # layer 0 by hand, no final norm
    fb = torchaudio.compliance.kaldi.fbank(w - w.mean(), **FBANK_PARAMS)
    x = ((torch.cat([fb, torch.zeros(L - len(fb), 128)]) - MEAN) / (2 * STD))[None, None]
    with torch.no_grad():
        tok, cls = vit.embed(x)
        h = vit.blocks[0](torch.cat([cls, tok], 1))[:, 1:].reshape(8, 8, -1)
    torch.testing.assert_close(first.patches[0], h[:first.patches.shape[1]], atol=1e-5, rtol=1e-5)
    for bad in (2, -3):
        with pytest.raises(ConfigError, match=f"layer {bad}"):
            enc.embed(wave, 16000, layer=bad)


def test_pretrain_checkpoint_and_audiomae_files(tmp_path):
    cfg = MAMConfig(encoder="tiny", encoder_depth=1, objectives=["rec"], decoder_depth=1, decoder_dim=64,
                    decoder_heads=2)
    mam = MaskedAudioModel(cfg, target_length=L).eval()
    save_checkpoint(tmp_path / "pre.pt", {"kind": "pretrain", "model": mam.state_dict(),
                                          "norm": {"mean": MEAN, "std": STD}})
    enc = load_pretrained(tmp_path / "pre.pt")
    assert enc.depth == 1 and enc.embed_dim == 192
    sd = {k: v for k, v in mam.encoder.state_dict().items()}
    torch.save({"model": sd, "args": argparse.Namespace(dataset="esc50", model="vit_tiny")}, tmp_path / "ft.pth")
    torch.save({"model": sd}, tmp_path / "pretrained.pth")
    amae_esc, amae = load_pretrained(tmp_path / "ft.pth"), load_pretrained(tmp_path / "pretrained.pth")
    assert (amae_esc.norm_mean, amae_esc.norm_std) == NORM_STATS["esc50"] and "esc50" in amae_esc.norm_source
    assert (amae.norm_mean, amae.norm_std) == NORM_STATS["audioset"] and "AudioSet" in amae.norm_source
    wave = noise(1.0, seed=4)
    same = load_pretrained(tmp_path / "pretrained.pth", norm=(MEAN, STD))
    torch.testing.assert_close(same.embed(wave, 16000).clip, enc.embed(wave, 16000).clip, atol=1e-6, rtol=0)
    torch.save({"model": sd, "kind": "finetune", "config": {"task": "spc2"}}, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="predates"):
        old = load_pretrained(tmp_path / "old.pt")
    assert (old.norm_mean, old.norm_std) == NORM_STATS["spc2"]


def test_bad_files_and_inputs_name_the_problem(tmp_path, ckpt):
    torch.save({"model": {}, "extra": fractions.Fraction(1, 3)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"pickled\.pt: holds fractions\.Fraction, which is not on the allow-list"):
        load_pretrained(tmp_path / "pickled.pt")                                  # never unpickled in full
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_pretrained(tmp_path / "nope.pt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors: not found"):
        load_pretrained(tmp_path / "emptydir")
    enc = load_pretrained(ckpt[0])
    with pytest.raises(ConfigError, match="NaN"):
        enc.embed(np.full(16000, np.nan, np.float32), 16000)
    with pytest.raises(ConfigError, match="hop"):
        enc.embed(noise(1.0), 16000, hop=5.0)
    assert enc.embed(noise(0.01), 16000).frames.shape == (1, 1, 128)               # < one fbank window: padded
