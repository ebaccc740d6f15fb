"""train.use.export / `supmam export`: timm's VisionTransformer built from the exported folder reproduces our
tokens (and logits), the weights load with safetensors alone, and load_pretrained reads the folder."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from pipeline.app.cli import app
from train.use.embed import load_pretrained
from train.model.checkpoint import save_checkpoint
from train.use.export import read_export, timm_create_kwargs, write_export
from train.model.models_vit import AudioViT
from cache_tools.errors import CheckpointError, ConfigError

T = 256                 # not 128: a square input would hide a swapped time / frequency axis
NORM = {"mean": -6.0, "std": 5.0, "source": "test"}


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def randomized(vit: AudioViT, seed: int) -> AudioViT:
    """Non-trivial norms and biases, so a dropped or misplaced LayerNorm shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in vit.named_parameters():
            if name != "pos_embed":
                prm.add_(torch.randn(prm.shape, generator=g) * 0.05)
    return vit.eval()


def x_batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 1, T, 128, generator=torch.Generator().manual_seed(seed))


def assert_no_adaptation(caplog) -> None:
    """timm loaded every key strictly: nothing missing, unexpected, converted or discarded."""
    text = caplog.text
    for sign in ("Missing keys", "Unexpected keys", "Converted input conv", "random init"):
        assert sign not in text, text


@pytest.mark.parametrize("layout", ["timefreq", "audiomae"])
def test_timm_tokens_equal_ours(tmp_path, caplog, layout):
    torch.manual_seed(0)
    kw = dict(pos_layout="audiomae", pos_width=T // 16) if layout == "audiomae" else {}
    vit = randomized(AudioViT(target_length=T, embed_dim=192, depth=2, num_heads=3, **kw), 1)
    out = write_export(vit, tmp_path / "exp", "timm", NORM, source="tiny.pt")
    x = x_batch()
    with torch.no_grad():
        ours = vit.forward_tokens(x)                                                   # [B, N, D] time-major
    caplog.set_level(logging.INFO)
    hub = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    # the call a user writes by hand: any ViT name, the file as an overlay, our geometry
    by_hand = timm.create_model("vit_tiny_patch16_224", pretrained=True, img_size=(T, 128), in_chans=1,
                                depth=2, num_classes=0, global_pool="avg", fc_norm=False,
                                pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=0,
                                                            input_size=(1, T, 128))).eval()
    helper = timm.create_model(**timm_create_kwargs(out)).eval()
    assert_no_adaptation(caplog)
    for m in (hub, by_hand, helper):
        with torch.no_grad():
            theirs = m.forward_features(x)                                             # [B, 1+N, D], cls first
        assert theirs.shape == (2, 1 + ours.shape[1], 192)
        torch.testing.assert_close(theirs[:, 1:], ours, atol=1e-5, rtol=1e-5)
        assert m.global_pool == "avg" and isinstance(m.fc_norm, torch.nn.Identity)
    assert tuple(hub.pretrained_cfg["mean"]) == (NORM["mean"],)                       # timm's data config
    assert tuple(hub.pretrained_cfg["std"]) == (2 * NORM["std"],)                      # says (x - m) / (2 s)


def test_finetuned_encoder_logits_equal_ours(tmp_path, caplog):
    torch.manual_seed(0)
    vit = AudioViT(target_length=T, embed_dim=192, depth=2, num_heads=3)
    vit.reset_head(5)                                              # drops the final norm, adds fc_norm + head
    vit = randomized(vit, 2)
    out = write_export(vit, tmp_path / "ft", "timm", NORM, source="ft.pt")
    caplog.set_level(logging.INFO)
    m = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert_no_adaptation(caplog)
    x = x_batch(1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), vit(x), atol=1e-5, rtol=1e-5)                # [B, 5]
        torch.testing.assert_close(m.forward_features(x)[:, 1:], vit.forward_tokens(x), atol=1e-5, rtol=1e-5)
    both = AudioViT(target_length=T, embed_dim=192, depth=1, num_heads=3)
    both.reset_head(3, drop_norm=False)                            # final norm AND fc_norm: timm has no such model
    with pytest.raises(ConfigError, match="both.pt: .*no timm equivalent"):
        write_export(both, tmp_path / "both", "timm", NORM, source="both.pt")
    write_export(both, tmp_path / "both", "safetensors", NORM, source="both.pt")   # fine without timm fields


def test_files_need_no_pickle_and_load_back(tmp_path):
    torch.manual_seed(0)
    vit = randomized(AudioViT(target_length=T, embed_dim=128, depth=2, num_heads=2), 3)
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"kind": "finetune", "model": vit.state_dict(), "norm": {"mean": -6.0, "std": 5.0}})
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--ckpt", str(ckpt), "--format", "timm", "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "exp"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    raw = (out / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8:8 + header_len])         # safetensors: length + JSON header
    with safe_open(str(out / "model.safetensors"), framework="np") as f:  # numpy: no torch, no pickle
        arrays = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["supmam_config"])
    for k, v in vit.state_dict().items():
        np.testing.assert_array_equal(arrays[k], v.numpy())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["normalization"]["mean"] == -6.0 and cfg["normalization"]["std"] == 5.0
    assert meta["normalization"] == cfg["normalization"] and cfg["supmam"]["tokens"].startswith("time-major")
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 40000).astype(np.float32)
    a, b = load_pretrained(ckpt).embed(wave, 16000), load_pretrained(out).embed(wave, 16000)
    assert torch.equal(a.patches, b.patches) and torch.equal(a.clip, b.clip)
    assert "stored" in load_pretrained(out).norm_source

    res = runner.invoke(app, ["export", "--ckpt", str(ckpt), "--format", "safetensors", "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    _, plain = read_export(tmp_path / "plain")
    assert "architecture" not in plain and "model_args" not in plain
    with pytest.raises(ConfigError, match="re-export with --format timm"):
        timm_create_kwargs(tmp_path / "plain")
    (tmp_path / "plain" / "config.json").unlink()                  # the header alone describes the file
    assert torch.equal(load_pretrained(tmp_path / "plain").embed(wave, 16000).clip, a.clip)

    torch.manual_seed(1)
    other = AudioViT(target_length=T, embed_dim=128, depth=2, num_heads=2)
    write_export(other, tmp_path / "other", "safetensors", NORM)
    (out / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="exp/model.safetensors: does not match .*config.json"):
        load_pretrained(out)
    bad = runner.invoke(app, ["export", "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "none.pt" in bad.output


def test_a_head_count_other_than_dim_over_64_survives_checkpoints_and_export(tmp_path):
    """The weights cannot tell 4 heads of 48 dims from 3 of 64: fine-tuning checkpoints (model_args),
    pretraining configs (encoder size) and export folders (config.json) say it."""
    from train.model.checkpoint import load_encoder
    from train.model.models_vit import describe
    torch.manual_seed(0)
    vit = AudioViT(target_length=64, embed_dim=192, depth=1, num_heads=4).eval()     # 192 / 64 = 3, not 4
    x = torch.randn(2, 1, 64, 128)                                                  # [B,1,T,F]
    ft = save_checkpoint(tmp_path / "ft.pt", {"kind": "finetune", "model": vit.state_dict(), "model_args": describe(vit)})
    bare = save_checkpoint(tmp_path / "bare.pt", {"model": vit.state_dict()})
    got, guess = load_encoder(ft).eval(), load_encoder(bare).eval()
    assert got.blocks[0].attn.num_heads == 4 and guess.blocks[0].attn.num_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(got.forward_tokens(x), vit.forward_tokens(x))
        assert not torch.allclose(guess.forward_tokens(x), vit.forward_tokens(x), atol=1e-4)   # why it matters
    out = write_export(vit, tmp_path / "exp", fmt="safetensors", norm={"mean": -4.0, "std": 2.0})
    enc = load_pretrained(out)
    assert enc.vit.blocks[0].attn.num_heads == 4
    with torch.no_grad():
        torch.testing.assert_close(enc.vit.forward_tokens(x), vit.forward_tokens(x))
