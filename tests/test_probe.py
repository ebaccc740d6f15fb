"""`supmam probe`: frozen encoder (weights' hash checked), cached features, batched head sweep, the
benchmark tasks' protocols and your own data; above chance on separable toy sets."""
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache_tools.clips.store import ClipStore
from pipeline.app.cli import app
from pipeline.prepare import prepare
from pipeline.readers.folder import read_folder
from tests.folder_data import chance, csv_dataset, multilabel_dataset
from tests.stores import class_store, spc_stores
from train.probe import run as probe_mod
from train.model.checkpoint import save_checkpoint
from train.finetune.metrics import per_class_average_precision
from train.model.models_vit import build_encoder
from train.probe.run import load_probe_config, run_probe
from train.use.features import weights_sha256
from train.probe.head import HeadSpec, average_precision, train_heads
from cache_tools.errors import ConfigError

TINY = ["ckpt=none", "encoder=tiny", "encoder_depth=1", "device=cpu", "steps=100", "eval_every=20"]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def probe(tmp_path, *overrides: str) -> dict:
    return run_probe(load_probe_config([f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}", *TINY, *overrides]))


def test_esc50_folds_frozen_encoder_and_feature_cache(tmp_path):
    labels = np.tile(np.arange(3), 10)                                  # 30 clips, 3 classes, 6 per fold
    class_store(tmp_path / "esc50.h5", labels, ["dog", "rain", "bell"], folds=np.repeat(np.arange(1, 6), 6),
                dataset="esc50")
    m = probe(tmp_path, "task=esc50", "name=a")
    assert [f["fold"] for f in m["folds"]] == [1, 2, 3, 4, 5] and m["num_test_clips"] == 30
    assert m["score"] > chance(labels, False) and m["score"] == pytest.approx(np.mean([f["accuracy"] for f in m["folds"]]))
    assert all(r["refit_on_train_and_valid"] and len(r["sweep"]) == 12 for r in m["rounds"])   # 3 lrs x 4 wds
    torch.manual_seed(0)
    fresh = build_encoder("tiny", 1, target_length=64)
    assert m["probe"]["encoder_sha256"] == weights_sha256(fresh) and m["probe"]["encoder_unchanged"]
    (feat,) = m["probe"]["features"]
    assert not feat["hit"] and np.load(feat["path"]).shape == (30, 192)
    again = probe(tmp_path, "task=esc50", "name=b")                      # same encoder and store: cached
    assert again["probe"]["features"][0]["hit"] and again["probe"]["features"][0]["path"] == feat["path"]
    assert again["score"] == m["score"]
    other = probe(tmp_path, "task=esc50", "name=c", "pooling=cls", "steps=20")   # another feature: another file
    assert other["probe"]["features"][0]["path"] != feat["path"]
    run = tmp_path / "runs" / "a"
    assert "# Linear probe (linear): esc50" in (run / "results.md").read_text() and (run / "confusion.png").exists()


def test_spc2_selects_on_the_valid_store_and_mlp_head(tmp_path):
    spc_stores(tmp_path, "spc2", 4, per_class=(6, 2, 2))
    m = probe(tmp_path, "task=spc2", "head=mlp", "hidden=32")
    (r,) = m["rounds"]
    assert not r["refit_on_train_and_valid"] and m["num_test_clips"] == 8 and m["preset"] == "probe-mlp"
    assert m["score"] > chance(ClipStore(tmp_path / "spc2_test.h5").labels, False)


def test_custom_stores_single_and_multilabel(tmp_path):
    single = csv_dataset(tmp_path / "s", per_split=(4, 2, 2))
    multi = multilabel_dataset(tmp_path / "m", n=24)
    for name, root, labels in (("s.h5", tmp_path / "s", single), ("m.h5", tmp_path / "m", multi)):
        prepare(read_folder(root, labels), tmp_path / name, workers=1, progress=False)
    r = CliRunner().invoke(app, ["probe", "--task", "custom", "--clips", str(tmp_path / "s.h5"), "--runs",
                                 str(tmp_path / "runs"), *TINY])
    assert r.exit_code == 0, r.output
    assert "custom: probe (linear) test accuracy" in r.output and "encoder unchanged" in r.output
    m = json.loads((tmp_path / "runs" / "probe-custom-s-scratch-linear" / "metrics.json").read_text())
    s = ClipStore(tmp_path / "s.h5")
    assert m["split"]["source"] == "split column" and m["num_test_clips"] == 6
    assert m["score"] > chance(s.labels[s.splits == 2], False)
    mm = probe(tmp_path, "task=custom", f"train_clips={tmp_path / 'm.h5'}", "name=ml")
    sm = ClipStore(tmp_path / "m.h5")
    assert mm["metric"] == "mAP" and len(mm["folds"]) == 3 and mm["score"] > chance(sm.labels, True)
    assert (tmp_path / "runs" / "ml" / "class_ap.png").stat().st_size > 0


def test_checkpoint_init_and_a_changed_encoder_is_an_error(tmp_path, monkeypatch):
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 2, 2))
    torch.manual_seed(5)
    vit = build_encoder("tiny", 1, target_length=64)
    ckpt = save_checkpoint(tmp_path / "enc.pt", {"model": vit.state_dict()})
    m = probe(tmp_path, "task=spc2", f"ckpt={ckpt}", "name=ck")
    assert m["ckpt"] == str(ckpt) and m["probe"]["encoder_sha256"] == weights_sha256(vit)
    real = probe_mod.cached_features

    def tamper(vit, *args, **kw):                                       # a feature step that trains the encoder
        with torch.no_grad():
            vit.blocks[0].mlp.fc1.weight.add_(0.01)
        return real(vit, *args, **kw)
    monkeypatch.setattr(probe_mod, "cached_features", tamper)
    with pytest.raises(ConfigError, match="weights changed during the probe"):
        probe(tmp_path, "task=spc2", f"ckpt={ckpt}", "name=bad")


def test_batched_heads_are_torch_adamw_and_ap_is_sklearns():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 16, generator=g), torch.arange(40) % 5
    spec = HeadSpec("linear", 0, (1e-2,), (0.1,), 30, 30, 4096, False, 0)
    heads = train_heads(x, y, [(1e-3, 0.0), (1e-2, 0.1)], 5, spec, 30)  # head 1 is the (1e-2, 0.1) one
    ref = torch.nn.Linear(16, 5)
    w0 = torch.Generator().manual_seed(0)
    ref.weight.data = ((torch.rand(16, 5, generator=w0) * 2 - 1) / math.sqrt(16)).T.clone()
    ref.bias.data = (torch.rand(5, generator=w0) * 2 - 1) / math.sqrt(16)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    assert torch.allclose(heads.params[0][:, 1].detach(), ref.weight.data.T, atol=1e-5)
    assert torch.allclose(heads.params[1][1].detach(), ref.bias.data, atol=1e-5)
    s = np.round(np.random.default_rng(1).random((60, 6)), 1)          # many ties
    t = (np.random.default_rng(2).random((60, 6)) < 0.3).astype(np.int64)
    t[:, 2] = 0
    np.testing.assert_allclose(average_precision(torch.tensor(s), torch.tensor(t)).numpy(),
                               per_class_average_precision(s, t), rtol=1e-6)


def test_layer_means_a_block_index_as_in_embed(tmp_path):
    """probe layer=-1 is the last block (after the final norm), layer=0 the first, as embed reads them."""
    from train.use.embed import PretrainedEncoder
    from train.use.features import encode
    torch.manual_seed(0)
    vit = build_encoder("tiny", 2, target_length=128).eval()
    x = torch.randn(3, 1, 128, 128)                                       # [B,1,T,F] normalised fbank
    enc = PretrainedEncoder(vit, 0.0, 1.0, "test", "test")
    with torch.no_grad():
        for layer, same in ((-1, 1), (0, -2)):
            pooled = encode(vit, x, layer, "mean")                        # [B,D], the probe's feature
            patches = enc.encode(x, layer)                                # [B,Tp,Fp,D], embed's tokens
            torch.testing.assert_close(pooled, patches.mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(pooled, encode(vit, x, same, "mean"))
        assert not torch.allclose(encode(vit, x, 0, "mean"), encode(vit, x, -1, "mean"))
    class_store(tmp_path / "esc50.h5", np.tile(np.arange(3), 10), ["dog", "rain", "bell"],
                folds=np.repeat(np.arange(1, 6), 6), dataset="esc50")
    with pytest.raises(ConfigError, match="layer 99: the encoder has 1 blocks"):
        probe(tmp_path, "task=esc50", "layer=99")
