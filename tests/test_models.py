"""Encoder, masking, losses and the masked audio model (tiny sizes)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from timm.optim import param_groups_layer_decay

from train.config import load_config
from train.model.losses import clap_loss, cls_loss, rec_loss
from train.model.masking import random_masking, random_masking_2d
from train.model.models_mam import MAMConfig, MaskedAudioModel
from train.model.models_vit import sincos_pos_embed, vit_base, vit_small, vit_tiny
from cache_tools.errors import ConfigError

torch.set_num_threads(1)


def tiny_cfg(**kw) -> MAMConfig:
    base = dict(encoder="tiny", encoder_depth=1, decoder_depth=2, decoder_dim=64,
                decoder_heads=2, cls_hidden=16, lambda_cls=0.5)
    return MAMConfig(**{**base, **kw})


@pytest.mark.parametrize("T", [1024, 512, 128, 320])
def test_encoder_shapes(T):
    enc = vit_tiny(depth=1, target_length=T).eval()
    Tp, Fp = T // 16, 128 // 16
    assert enc.patch_grid == (Tp, Fp) and enc.num_patches == Tp * Fp and enc.embed_dim == 192
    x = torch.randn(2, 1, T, 128)
    with torch.no_grad():
        assert enc.forward_tokens(x).shape == (2, Tp * Fp, 192)
        ids = torch.arange(5).expand(2, 5)
        assert enc.forward_visible(x, ids).shape == (2, 5, 192)
        enc.reset_head(5)
        assert enc(x).shape == (2, 5)


def test_sizes_and_depth_override():
    assert (vit_small(depth=2).embed_dim, len(vit_small(depth=2).blocks)) == (384, 2)
    b = vit_base(depth=1, target_length=256)
    assert b.embed_dim == 768 and b.blocks[0].attn.num_heads == 12 and b.patch_grid == (16, 8)
    with pytest.raises(ValueError, match="multiple of the patch|multiple of 16"):
        vit_tiny(depth=1).forward_tokens(torch.randn(1, 1, 100, 128))


def test_visible_path_equals_full_path_and_positions_are_time_major():
    torch.manual_seed(0)
    enc = vit_tiny(depth=2, target_length=128).eval()
    x = torch.randn(2, 1, 128, 128)
    perm = torch.stack([torch.randperm(64) for _ in range(2)])               # [B,N]
    with torch.no_grad():
        full = enc.forward_tokens(x)
        vis = enc.forward_visible(x, perm)
    torch.testing.assert_close(vis, torch.gather(full, 1, perm[..., None].expand(-1, -1, 192)), atol=1e-5, rtol=1e-5)
    table = sincos_pos_embed(192, (8, 8))                                   # row t*8+f: [time | freq]
    torch.testing.assert_close(table[3 * 8 + 5, :96], table[3 * 8 + 0, :96])  # same t, other f
    torch.testing.assert_close(table[3 * 8 + 5, 96:], table[6 * 8 + 5, 96:])  # same f, other t
    assert not torch.allclose(table[3 * 8 + 5, :96], table[4 * 8 + 5, :96])


def test_other_lengths_reuse_a_prefix_or_extend_the_table():
    short, long = vit_tiny(depth=1, target_length=128), vit_tiny(depth=1, target_length=1024)
    torch.testing.assert_close(long.pos_table(8), short.pos_embed)
    torch.testing.assert_close(short.pos_table(64), long.pos_embed)
    with torch.no_grad():                                                    # a 128-wide model reads 1024 frames
        assert short.forward_tokens(torch.randn(1, 1, 1024, 128)).shape == (1, 512, 192)


def test_random_masking_counts_uniqueness_and_restore():
    B, N, ratio = 4, 50, 0.3
    ids_keep, ids_restore, mask = random_masking(B, N, ratio)
    K = int(N * (1 - ratio))
    assert ids_keep.shape == (B, K) and ids_restore.shape == (B, N) and mask.shape == (B, N)
    kept = [torch.nonzero(row == 0).flatten() for row in mask]                   # token order, from the mask alone
    assert all(len(k) == K for k in kept)
    assert all(torch.equal(ids_keep[b].sort().values, kept[b]) for b in range(B))   # K distinct, unmasked
    tokens = torch.arange(N).expand(B, N)                                    # token n holds the value n
    x_keep = torch.gather(tokens, 1, ids_keep)                               # [B,K]
    filled = torch.cat([x_keep, torch.full((B, N - K), -1)], 1)              # [B,N] -1 = mask token
    expected = torch.where(mask == 0, tokens, torch.full_like(tokens, -1))  # kept tokens in place
    assert torch.equal(torch.gather(filled, 1, ids_restore), expected)
    assert not torch.equal(kept[0], kept[1])                                 # per-sample
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(random_masking(B, N, ratio, generator=g1)[0], random_masking(B, N, ratio, generator=g2)[0])
    assert random_masking(2, 10, 0.0)[0].shape == (2, 10) and random_masking(2, 10, 1.0)[0].shape == (2, 0)
    with pytest.raises(ValueError, match="mask ratio"):
        random_masking(2, 10, 1.5)


def test_random_masking_2d_drops_whole_rows_and_columns():
    B, Tp, Fp = 3, 16, 8
    ids_keep, mask = random_masking_2d(B, (Tp, Fp), 0.25, 0.5, generator=torch.Generator().manual_seed(0))
    assert ids_keep.shape == (B, 12 * 4) and torch.all(mask.sum(1) == Tp * Fp - 48)
    keep = (1 - mask).reshape(B, Tp, Fp)                                    # [B,Tp,Fp]
    kt, kf = keep.amax(2), keep.amax(1)                                     # kept columns / rows
    assert torch.all(kt.sum(1) == 12) and torch.all(kf.sum(1) == 4)
    assert torch.equal(keep, kt[:, :, None] * kf[:, None, :])               # outer product: whole lines
    assert torch.all(ids_keep.diff(dim=1) > 0)                              # time-major order


def test_clap_loss_matches_hand_computation():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]])            # [1,3,2]
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    total, vis, msk = clap_loss(pred, target, mask)
    want_vis = ((1 - 0) ** 2 + 0) / 2                                        # token 0
    want_msk = (((0 - 1) ** 2 + (0 - 1) ** 2) / 2 + ((3 - 1) ** 2 + (-1 - 1) ** 2) / 2) / 2  # tokens 1, 2
    assert vis.item() == pytest.approx(want_vis) and msk.item() == pytest.approx(want_msk)
    assert total.item() == pytest.approx(want_vis + want_msk)
    none_masked = clap_loss(pred, target, torch.zeros(1, 3))                # ratio 0: masked term is 0
    assert none_masked[2].item() == 0.0 and none_masked[0].item() == pytest.approx(none_masked[1].item())


def test_rec_and_cls_losses_match_hand_computation():
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])
    pred = torch.zeros(1, 2, 2)
    mask = torch.tensor([[1.0, 0.0]])
    norm = (torch.tensor([1.0, 3.0]) - 2.0) / (2.0 + 1e-6) ** 0.5            # unbiased var of (1, 3) is 2
    assert rec_loss(pred, target, mask).item() == pytest.approx((norm ** 2).mean().item())
    assert rec_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(5.0)
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    assert cls_loss(logits, y, tau=2.0).item() == pytest.approx(-torch.log_softmax(logits / 2, 1)[0, 0].item())
    multi = torch.tensor([[1.0, 0.0]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits / 0.5, multi).item()
    assert cls_loss(logits, multi, tau=0.5, multilabel=True).item() == pytest.approx(want)
    with pytest.raises(ValueError, match="multi-label labels"):
        cls_loss(logits, y, multilabel=True)


OBJECTIVE_SETS = [list(c) for r in (1, 2, 3) for c in itertools.combinations(("rec", "clap", "cls"), r)]


@pytest.mark.parametrize("objectives", OBJECTIVE_SETS, ids="+".join)
def test_each_objective_subset_trains(objectives):
    torch.manual_seed(0)
    multilabel = "rec" in objectives
    model = MaskedAudioModel(tiny_cfg(objectives=objectives), target_length=128, target_dim=32, num_classes=5,
                             multilabel=multilabel)
    x, t = torch.randn(3, 1, 128, 128), torch.randn(3, 64, 32)
    y = (torch.rand(3, 5) > 0.5).float() if multilabel else torch.randint(0, 5, (3,))
    loss, parts, mask = model(x, t, y)
    loss.backward()
    want = {"rec": {"rec"}, "clap": {"clap", "clap_vis", "clap_mask"}, "cls": {"cls"}}
    assert set(parts) == set().union(*(want[o] for o in objectives))
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    target = sum(parts[k] for k in ("rec", "clap") if k in parts)
    expect = parts["cls"] if objectives == ["cls"] else target + (0.5 * parts["cls"] if "cls" in parts else 0)
    assert loss.item() == pytest.approx(float(expect.detach() if torch.is_tensor(expect) else expect))
    assert mask.shape == (3, 64) and torch.all(mask.sum(1) == 64 - int(64 * 0.8))
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_deterministic_for_a_seed():
    def run():
        torch.manual_seed(3)
        model = MaskedAudioModel(tiny_cfg(objectives=["rec", "clap", "cls"]), target_length=128, target_dim=32,
                                 num_classes=5)
        x, t, y = torch.randn(2, 1, 128, 128), torch.randn(2, 64, 32), torch.randint(0, 5, (2,))
        return model(x, t, y, generator=torch.Generator().manual_seed(11))
    (l1, p1, m1), (l2, p2, m2) = run(), run()
    assert l1.item() == l2.item() and torch.equal(m1, m2) and p1.keys() == p2.keys()


def test_decoder_geometry_shift_and_patchify():
    model = MaskedAudioModel(tiny_cfg(objectives=["rec"], decoder_depth=2), target_length=256, target_dim=None)
    even, odd = model.decoder_blocks
    assert tuple(even.shift_size) == (0, 0) and tuple(odd.shift_size) == (2, 0)   # AudioMAE's (2, 0)
    assert tuple(odd.window_size) == (4, 4) and odd.feat_size == (16, 8) and odd.attn_mask is not None
    x = torch.randn(2, 1, 256, 128)
    patches = model.patchify(x)
    assert patches.shape == (2, 128, 256) and torch.equal(model.unpatchify(patches), x)
    torch.testing.assert_close(patches[0, 1 * 8 + 2], x[0, 0, 16:32, 32:48].reshape(-1))  # token (t=1, f=2)
    latent, ids_keep, ids_restore, mask = model.forward_encoder(x, 0.5)
    assert latent.shape == (2, 64, 192) and model.forward_decoder(latent, ids_restore).shape == (2, 128, 64)


def test_decoder_pads_a_grid_that_is_not_a_window_multiple():
    model = MaskedAudioModel(tiny_cfg(objectives=["rec", "clap"]), target_length=336, target_dim=16)
    assert model.encoder.patch_grid == (21, 8) and tuple(model.decoder_blocks[1].shift_size) == (2, 0)
    loss, parts, mask = model(torch.randn(2, 1, 336, 128), torch.randn(2, 168, 16))
    loss.backward()
    assert mask.shape == (2, 168) and torch.isfinite(loss)


def test_bad_model_inputs_are_rejected():
    with pytest.raises(ConfigError, match="non-empty subset"):
        MAMConfig(objectives=[])
    with pytest.raises(ValueError, match="target_dim"):
        MaskedAudioModel(tiny_cfg(objectives=["clap"]), target_length=128)
    model = MaskedAudioModel(tiny_cfg(objectives=["clap"]), target_length=128, target_dim=32)
    with pytest.raises(ValueError, match="per-patch"):
        model(torch.randn(1, 1, 128, 128), torch.randn(1, 8, 2, 32))
    with pytest.raises(ValueError, match=r"\[B,1,128,F\]"):
        model(torch.randn(1, 1, 256, 128), torch.randn(1, 64, 32))


def test_config_loader_builds_mam_config():
    cfg = load_config(MAMConfig, None, ["objectives=rec,clap", "encoder_depth=2", "decoder_window=[4,2]"])
    assert cfg.objectives == ["rec", "clap"] and cfg.encoder_depth == 2 and cfg.decoder_window == [4, 2]
    with pytest.raises(ConfigError, match="defaults: objectives must be a non-empty subset"):
        load_config(MAMConfig, None, ["objectives=rec,foo"])
    with pytest.raises(ConfigError, match="'huge' is not one of"):
        load_config(MAMConfig, None, ["encoder=huge"])


def test_finetuning_hooks():
    torch.manual_seed(0)
    enc = vit_tiny(depth=3, target_length=128, num_classes=4, drop_path_rate=0.1)
    groups = param_groups_layer_decay(enc, 0.05, enc.no_weight_decay(), layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == 3 + 2                                              # stem, 3 blocks, head/norm
    names = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert "pos_embed" not in names and "cls_token" in enc.no_weight_decay()  # frozen table
    assert [round(b.drop_path2.drop_prob, 3) for b in enc.blocks[1:]] == [0.05, 0.1]
    enc.reset_head(7)
    assert enc.head.out_features == 7 and isinstance(enc.norm, torch.nn.Identity)


def test_token_specaugment_only_in_training():
    torch.manual_seed(0)
    enc = vit_tiny(depth=1, target_length=128, num_classes=4)
    x = torch.randn(2, 1, 128, 128)
    g = lambda: torch.Generator().manual_seed(5)                            # noqa: E731
    enc.train()
    with torch.no_grad():
        a, b = enc(x, 0.25, 0.25, generator=g()), enc(x, 0.25, 0.25, generator=g())
        plain = enc(x)
    assert torch.equal(a, b) and not torch.allclose(a, plain)               # seeded, and it masks
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x, 0.5, 0.5), enc(x))                         # no masking in eval


def test_forward_with_mask_probs_pools_only_the_kept_tokens():
    """What PooledClassifier gave DDP, the encoder's own forward now does: drop whole time columns /
    frequency rows (random_masking_2d with the same generator), run the blocks on the kept tokens,
    mean-pool them. Checked against the kept tokens encoded on their own: a ViT without the masked
    tokens in its input sees exactly that."""
    torch.manual_seed(0)
    enc = vit_tiny(depth=2, target_length=128, num_classes=3).train()
    x = torch.randn(2, 1, 128, 128)
    ids_keep, mask = random_masking_2d(2, enc.patch_grid, 0.25, 0.5, generator=torch.Generator().manual_seed(9))
    assert ids_keep.shape == (2, 6 * 4)                                     # Kt = 8 * 0.75, Kf = 8 * 0.5
    with torch.no_grad():
        got = enc(x, 0.25, 0.5, generator=torch.Generator().manual_seed(9))              # [2, 3]
        embedded = enc.patch_embed(x) + enc.pos_embed[:, 1:]                               # [2, 64, 192]
        kept = torch.stack([embedded[b, ids_keep[b]] for b in range(2)])                 # [2, 24, 192]
        h = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(2, -1, -1), kept], dim=1)
        for blk in enc.blocks:
            h = blk(h)
        want = enc.head(enc.fc_norm(h[:, 1:].mean(dim=1)))                               # [2, 3]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert mask.sum(1).tolist() == [64 - 24] * 2                         # 40 of 64 tokens masked
        assert not torch.allclose(got, enc(x, 0.25, 0.5, generator=torch.Generator().manual_seed(10)))


# ---- AudioMAE's decoder: attention init, shifted blocks, position layout; objective options

def test_decoder_attention_starts_as_audiomae_scale_1_and_meta_mlp_dropout():
    """AudioMAE's Swin V2-CR (timm_patch) divides cosine logits by tau = 1 and drops 0.1 / 0.1 in the
    position-bias MLP; timm's block would start at scale exp(log 10) = 10 and 0.125 / 0."""
    torch.manual_seed(0)
    model = MaskedAudioModel(tiny_cfg(objectives=["rec"], decoder_depth=2), target_length=128)
    for blk in model.decoder_blocks:
        assert torch.equal(blk.attn.logit_scale, torch.zeros(2))                 # exp(0) = 1
        assert (blk.attn.meta_mlp.drop1.p, blk.attn.meta_mlp.drop2.p) == (0.1, 0.1)
    attn = model.decoder_blocks[0].attn.eval()
    x = torch.randn(3, 16, 64)                                                  # [windows, 4x4 tokens, Dd]
    with torch.no_grad():
        W, b = attn.qkv.weight, attn.qkv.bias
        q, k, v = (x @ W.T + b).reshape(3, 16, 3, 2, 32).permute(2, 0, 3, 1, 4)  # each [3, heads, 16, 32]
        cos = (q / q.norm(dim=-1, keepdim=True)) @ (k / k.norm(dim=-1, keepdim=True)).transpose(-2, -1)
        m = attn.meta_mlp                                                       # bias MLP on log coordinates
        rel = attn.relative_coordinates_log                                     # [16*16, 2]
        bias = (torch.relu(rel @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias)  # [256, heads]
        logits = cos * 1.0 + bias.T.reshape(1, 2, 16, 16)                       # scale 1 (AudioMAE tau = 1)
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 16, 64) @ attn.proj.weight.T + attn.proj.bias
        torch.testing.assert_close(attn(x), out, atol=1e-5, rtol=1e-5)
        attn.logit_scale.fill_(torch.log(torch.tensor(10.0)))                   # timm's init: another output
        assert not torch.allclose(attn(x), out, atol=1e-3)


@pytest.mark.parametrize("rule,depth,shifted", [("odd", 16, [i % 2 == 1 for i in range(16)]),
                                                ("odd", 1, [False]), ("all", 1, [True]),
                                                ("all", 3, [True] * 3), ("none", 2, [False, False])])
def test_decoder_shift_blocks(rule, depth, shifted):
    """odd: AudioMAE's alternation (16 blocks: even none, odd (2, 0)); all: the paper's single block
    "with shifted local attention" shifts."""
    model = MaskedAudioModel(tiny_cfg(objectives=["clap"], decoder_depth=depth, decoder_dim=32,
                                      decoder_shift_blocks=rule), target_length=128, target_dim=8)
    got = [tuple(b.shift_size) for b in model.decoder_blocks]
    assert got == [(2, 0) if s else (0, 0) for s in shifted]
    assert [b.attn_mask is not None for b in model.decoder_blocks] == shifted
    with pytest.raises(ConfigError, match="decoder_shift_blocks must be one of"):
        MAMConfig(decoder_shift_blocks="even")


def audiomae_flexible_table(dim: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """AudioMAE's util/pos_embed.py get_2d_sincos_pos_embed_flexible, re-derived in numpy: grid
    (h, w), meshgrid(w, h) ("w goes first"), first half from the w coordinate, second from h."""
    h, w = grid_hw
    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))   # each [h, w]

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))         # [d/2]
        out = np.einsum("m,d->md", pos.reshape(-1), omega)                                # [h*w, d/2]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)                         # [h*w, d]
    return np.concatenate([one(dim // 2, gw), one(dim // 2, gh)], axis=1)                 # [h*w, dim]


def test_pos_layout_audiomae_is_audiomaes_fresh_table():
    """A fresh model with pos_layout="audiomae" carries the table AudioMAE's models_mae.py builds:
    get_2d_sincos_pos_embed_flexible(D, patch_hw) with PatchEmbed_org's patch_hw = (F/p, T/p)."""
    model = MaskedAudioModel(tiny_cfg(objectives=["rec"], pos_layout="audiomae"), target_length=1024)
    enc = model.encoder
    assert enc.pos_width == 64 and enc.pos_layout == "audiomae"
    np.testing.assert_allclose(enc.pos_embed[0, 1:].numpy(), audiomae_flexible_table(192, (8, 64)), atol=1e-6)
    assert torch.equal(enc.pos_embed[0, 0], torch.zeros(192))                  # cls row 0 (AudioMAE's cls_token=True)
    np.testing.assert_allclose(model.decoder_pos_embed[0].numpy(), audiomae_flexible_table(64, (8, 64)), atol=1e-6)
    fresh = MaskedAudioModel(tiny_cfg(objectives=["rec"]), target_length=1024).encoder   # default: timefreq
    assert not np.allclose(fresh.pos_embed[0, 1:].numpy(), audiomae_flexible_table(192, (8, 64)), atol=1e-3)
    with pytest.raises(ConfigError, match="pos_layout must be one of"):
        MAMConfig(pos_layout="table")


def test_objective_reductions():
    pred, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0]])
    mean, sum_ = clap_loss(pred, target, mask), clap_loss(pred, target, mask, "sum")
    for a, b in zip(mean, sum_):                                                # summed over D = 5x the mean
        torch.testing.assert_close(b, 5 * a)
    logits, y = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits / 2, y, reduction="none")   # [3,4]
    torch.testing.assert_close(cls_loss(logits, y, tau=2.0, multilabel=True), per.mean())
    torch.testing.assert_close(cls_loss(logits, y, tau=2.0, multilabel=True, reduction="sum"), per.sum(1).mean())
    ids = torch.tensor([0, 3, 1])                                               # single-label: one term per clip
    assert cls_loss(logits, ids, reduction="sum") == cls_loss(logits, ids)


def test_clap_visible_predictions_from_the_encoder():
    """clap_visible_from="encoder": the visible tokens' clap term depends only on the encoder-side head,
    the masked tokens' only on the decoder's; "decoder" (default) has no encoder-side head."""
    torch.manual_seed(0)
    model = MaskedAudioModel(tiny_cfg(objectives=["clap"], clap_visible_from="encoder", mask_ratio=0.5),
                             target_length=128, target_dim=16).eval()
    x, t = torch.randn(2, 1, 128, 128), torch.randn(2, 64, 16)

    def parts():
        with torch.no_grad():
            _, p, _ = model(x, t, generator=torch.Generator().manual_seed(3))
        return p["clap_vis"].item(), p["clap_mask"].item()
    vis, masked = parts()
    with torch.no_grad():
        model.target_head_visible[1].bias += 1.0
    vis2, masked2 = parts()
    assert vis2 != vis and masked2 == masked
    with torch.no_grad():
        model.target_head[1].bias += 1.0
    vis3, masked3 = parts()
    assert vis3 == vis2 and masked3 != masked2
    model.init_target_head(torch.ones(16), torch.full((16,), 2.0))            # both heads start at the stats
    assert torch.equal(model.target_head_visible[1].bias, torch.ones(16))
    assert not hasattr(MaskedAudioModel(tiny_cfg(objectives=["clap"]), 128, 16), "target_head_visible")


def test_softmax_cls_loss_is_ce_against_normalised_multi_hot():
    """Eq. 2 read literally: CE(logits / tau, y / sum(y)); a clip without labels adds 0."""
    logits = torch.randn(3, 5)
    y = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    logp = torch.log_softmax(logits / 10.0, dim=1)
    want = -(0.5 * (logp[0, 0] + logp[0, 2]) + logp[1, 3] + 0.0) / 3
    torch.testing.assert_close(cls_loss(logits, y, tau=10.0, multilabel=True, reduction="softmax"), want)
    with pytest.raises(ConfigError, match="cls_reduction must be one of"):
        MAMConfig(cls_reduction="max")


def test_clap_loss_leaves_invalid_patches_out():
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0]])
    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    _, vis, msk = clap_loss(pred, target, mask, valid=valid)
    keep = valid.bool()
    per = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(vis, per[keep & (mask == 0)].mean())
    torch.testing.assert_close(msk, per[keep & (mask == 1)].mean())


def test_forward_is_encoder_decoder_loss_with_one_head_per_objective():
    """forward == forward_encoder -> forward_decoder -> forward_loss; heads are small modules under the
    checkpoint keys of before (AudioMAE's decoder_pred, target_head.0/1, cls_head.0-3)."""
    from train.model.heads import ClsHead, TargetHead
    torch.manual_seed(0)
    m = MaskedAudioModel(tiny_cfg(objectives=["rec", "clap", "cls"], clap_visible_from="encoder"),
                         target_length=128, target_dim=16, num_classes=4, multilabel=True).eval()   # no dropout draws
    assert isinstance(m.target_head, TargetHead) and isinstance(m.target_head_visible, TargetHead)
    assert isinstance(m.cls_head, ClsHead) and isinstance(m.decoder_pred, torch.nn.Linear)
    keys = set(m.state_dict())
    assert {"decoder_pred.weight", "target_head.0.weight", "target_head.1.bias", "target_head_visible.0.weight",
            "cls_head.0.weight", "cls_head.1.running_mean", "cls_head.3.bias", "mask_token"} <= keys
    x, t, y = torch.randn(2, 1, 128, 128), torch.randn(2, 64, 16), (torch.rand(2, 4) > .5).float()
    loss, parts, mask = m(x, t, y, generator=torch.Generator().manual_seed(1))
    latent, ids_keep, ids_restore, mask2 = m.forward_encoder(x, m.cfg.mask_ratio, torch.Generator().manual_seed(1))
    loss2, parts2 = m.forward_loss(x, latent, ids_keep, mask2, m.forward_decoder(latent, ids_restore), t, y)
    torch.testing.assert_close(loss, loss2)
    assert torch.equal(mask, mask2) and set(parts) == {"rec", "clap", "clap_vis", "clap_mask", "cls"}
    torch.testing.assert_close(loss, parts["rec"] + parts["clap"] + m.cfg.lambda_cls * parts["cls"])
    with pytest.raises(ValueError, match="needs labels"):
        m.check_inputs(x, t, None)
