"""AudioMAE checkpoints load into AudioViT and reproduce an independently built timm ViT."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from train.model.checkpoint import export_encoder, load_checkpoint, load_encoder, save_checkpoint
from train.model.models_mam import MAMConfig, MaskedAudioModel
from cache_tools.errors import CheckpointError

torch.set_num_threads(1)
D, DEPTH, HEADS = 768, 2, 12          # AudioMAE's ViT-B shapes, 2 blocks to stay fast


def audiomae_table(dim: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """AudioMAE's get_2d_sincos_pos_embed_flexible(dim, patch_hw=(F/p, T/p), cls_token=True), re-derived."""
    h, w = grid_hw
    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))  # "w goes first"
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)          # [h*w, dim]
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)                            # [1+h*w, dim]


def reference_vit(T: int = 1024, **kw) -> VisionTransformer:
    return VisionTransformer(img_size=(T, 128), patch_size=16, in_chans=1, embed_dim=D, depth=DEPTH,
                             num_heads=HEADS, qkv_bias=True, **kw).eval()


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name != "pos_embed":
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.05 + (1.0 if name.endswith("norm1.weight") else 0.0))
        model.pos_embed.copy_(torch.from_numpy(audiomae_table(D, (8, 64))).float()[None])


def audiomae_file(tmp_path, ref: VisionTransformer, name: str) -> str:
    sd = dict(ref.state_dict())
    sd["decoder_embed.weight"] = torch.zeros(512, D)       # AudioMAE's pretrained.pth carries a decoder
    sd["mask_token"] = torch.zeros(1, 1, 512)
    path = tmp_path / name
    torch.save({"model": sd, "args": argparse.Namespace(model="mae_vit_base_patch16"), "epoch": 32}, path)
    return str(path)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 1, 1024, 128, generator=torch.Generator().manual_seed(0))


def test_pretrained_layout_matches_reference_tokens(tmp_path, x):
    ref = reference_vit(num_classes=0, global_pool="")
    randomize(ref, 1)
    enc = load_encoder(audiomae_file(tmp_path, ref, "pretrained.pth"))
    assert enc.pos_layout == "audiomae" and enc.patch_grid == (64, 8) and len(enc.blocks) == DEPTH
    with torch.no_grad():
        want = ref.forward_features(x)[:, 1:]               # [B,512,D] after norm, cls dropped
        got = enc.forward_tokens(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_shorter_and_longer_inputs_keep_audiomae_positions(tmp_path, x):
    ref = reference_vit(num_classes=0, global_pool="")
    randomize(ref, 2)
    path = audiomae_file(tmp_path, ref, "pretrained.pth")
    short = load_encoder(path, target_length=512)
    ref512 = reference_vit(512, num_classes=0, global_pool="")
    ref512.load_state_dict({**ref.state_dict(), "pos_embed": ref.pos_embed[:, :1 + 256]})
    with torch.no_grad():
        torch.testing.assert_close(short.forward_tokens(x[:, :, :512]), ref512.forward_features(x[:, :, :512])[:, 1:],
                                   atol=1e-5, rtol=1e-5)
    # a 512-frame encoder saved by us keeps AudioMAE's layout (rows of 64) and can grow again
    resaved = load_encoder(save_checkpoint(tmp_path / "esc.pt", {"model": export_encoder(short)}), 1024)
    assert (resaved.pos_layout, resaved.pos_width) == ("audiomae", 64)
    torch.testing.assert_close(resaved.pos_embed, ref.pos_embed, atol=1e-6, rtol=0)
    long = load_encoder(path, target_length=2048)
    assert long.pos_embed.shape == (1, 1 + 1024, D)
    torch.testing.assert_close(long.pos_embed[:, :513], ref.pos_embed, atol=1e-6, rtol=0)
    # the extension continues AudioMAE's rows of 64: its formula on a (16, 64) grid, not a native 2048 table
    torch.testing.assert_close(long.pos_embed[0].double(), torch.from_numpy(audiomae_table(D, (16, 64))),
                               atol=1e-5, rtol=0)


def test_finetuned_layout_gives_reference_logits(tmp_path, x):
    ref = reference_vit(num_classes=7, global_pool="avg", fc_norm=True)   # AudioMAE global_pool layout
    randomize(ref, 3)
    assert "norm.weight" not in ref.state_dict() and "fc_norm.weight" in ref.state_dict()
    enc = load_encoder(audiomae_file(tmp_path, ref, "finetuned.pth"))
    assert isinstance(enc.norm, torch.nn.Identity) and enc.head.out_features == 7
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x), atol=1e-5, rtol=1e-5)


def test_export_encoder_round_trips(tmp_path, x):
    ref = reference_vit(num_classes=0, global_pool="")
    randomize(ref, 4)
    enc = load_encoder(audiomae_file(tmp_path, ref, "pretrained.pth"))
    exported = export_encoder(enc)
    ref_sd = ref.state_dict()
    assert set(exported) == set(ref_sd)                      # AudioMAE's key names, nothing else
    for k, v in ref_sd.items():
        torch.testing.assert_close(exported[k], v, atol=0, rtol=0)
    again = load_encoder(save_checkpoint(tmp_path / "ours.pt", {"model": exported, "kind": "finetune"}))
    with torch.no_grad():
        torch.testing.assert_close(again.forward_tokens(x), enc.forward_tokens(x), atol=0, rtol=0)


def test_our_pretraining_checkpoint_yields_its_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = MAMConfig(encoder="tiny", encoder_depth=1, objectives=["rec", "clap"],
                    decoder_dim=64, decoder_heads=2)
    mam = MaskedAudioModel(cfg, target_length=128, target_dim=32).eval()
    np_rng = np.random.RandomState(5).get_state()                      # what a resumable checkpoint holds
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"model": mam.state_dict(), "kind": "pretrain",
                                                        "config": {"model": vars(cfg)}, "step": 3,
                                                        "rng": {"numpy": np_rng}})
    enc = load_encoder(path)
    assert enc.pos_layout == "timefreq" and enc.patch_grid == (8, 8) and enc.embed_dim == 192
    xs = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_tokens(xs), mam.encoder.forward_tokens(xs), atol=0, rtol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no tmp file left
    back = load_checkpoint(path)
    assert back["step"] == 3 and np.array_equal(back["rng"]["numpy"][1], np_rng[1])


def test_a_checkpoint_pretrained_with_audiomaes_layout_is_read_as_audiomaes(tmp_path):
    """pos_layout="audiomae" (the paper presets): the pretrained encoder's table is AudioMAE's own
    layout, which load_encoder recognises (width 64 for 1024 frames) and extends the same way."""
    torch.manual_seed(0)
    cfg = MAMConfig(encoder="tiny", encoder_depth=1, objectives=["rec"], decoder_dim=64, decoder_heads=2,
                    pos_layout="audiomae")
    mam = MaskedAudioModel(cfg, target_length=1024).eval()
    enc = load_encoder(save_checkpoint(tmp_path / "c.pt", {"model": mam.state_dict(), "kind": "pretrain"}))
    assert (enc.pos_layout, enc.pos_width) == ("audiomae", 64)
    torch.testing.assert_close(enc.pos_embed, mam.encoder.pos_embed, atol=0, rtol=0)
    longer = load_encoder(tmp_path / "c.pt", target_length=1280)
    torch.testing.assert_close(longer.pos_embed[:, :1 + 512], mam.encoder.pos_embed, atol=1e-6, rtol=0)


def test_bad_files_raise_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_encoder(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a torch checkpoint"):
        load_checkpoint(garbage)
    code = tmp_path / "code.pth"                                        # pickles a callable: never run
    torch.save({"model": {}, "hook": print}, code)
    with pytest.raises(CheckpointError, match="code.pth: holds print, which is not on the allow-list"):
        load_checkpoint(code)
    nomodel = tmp_path / "nomodel.pth"
    torch.save({"state_dict": {}}, nomodel)
    with pytest.raises(CheckpointError, match="nomodel.pth.*model"):
        load_encoder(nomodel)
    odd = tmp_path / "odd.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(64, 1, 16, 16), "cls_token": torch.zeros(1, 1, 64),
                          "pos_embed": torch.zeros(1, 1 + 80, 64), "blocks.0.mlp.fc1.weight": torch.zeros(256, 64),
                          "blocks.0.extra.weight": torch.zeros(3)}}, odd)
    with pytest.raises(CheckpointError, match="odd.pth"):
        load_encoder(odd)
