"""Fine-tuning drivers on tiny clip stores written with the real ClipStore writer (CPU, seconds each)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache_tools.clip_store import ClipStore, assemble, open_parts, write_part
from train import finetune_data as fd
from train.checkpoint import load_checkpoint
from train.evaluate import evaluate_checkpoint
from train.finetune import FinetuneError, run_finetune
from train.models_vit import AudioViT

T = 64          # frames per clip in the tiny stores (4 x 8 patches): fast, and a multiple of 16
FEATS = {"num_mel_bins": 128, "frame_shift": 10}
TINY = ["model=vit_tiny", "depth=1", "batch_size=8", "eval_batch_size=16", "num_workers=0", "log_every=2"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def easy_fbank(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """[N, T, 128] log-mel-like noise; class c adds a loud band at frequency slot c and a loud
    on/off pattern with period 2(c+1) frames (visible inside every patch)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(-7.0, 1.0, size=(len(labels), T, 128))
    band, t = 128 // num_classes, np.arange(T)
    for i, c in enumerate(labels):
        x[i, :, c * band:(c + 1) * band] += 6.0
        x[i, (t // (c + 1)) % 2 == 0, :] += 4.0
    return x.astype(np.float16)


def make_store(path, labels, class_names, multilabel=False, folds=None, dataset="spc2", split="train",
               fbank=None, seed=0):
    """A complete clip store via cache_tools.clip_store's writer (parts -> assemble)."""
    n = len(labels)
    ids = [f"{split}-{i:04d}" for i in range(n)]
    if fbank is None:
        cls = labels.argmax(1) if multilabel else labels
        fbank = easy_fbank(cls, len(class_names), seed)
    d = open_parts(path, {"test": str(path)})
    write_part(d, 0, ids, fbank, np.zeros((n, 160), np.int16),
               labels.astype(np.uint8 if multilabel else np.int64), folds, [])
    attrs = dict(dataset=dataset, split=split, multilabel=multilabel, class_names=class_names,
                 class_ids=class_names, target_length=T, feature_params=FEATS, norm_mean=-6.8, norm_std=5.5)
    assemble(path, 1, attrs, report={})
    return ClipStore(path)


def spc_stores(root, task, num_classes, per_class=(8, 3, 3)):
    names = [f"w{c}" for c in range(num_classes)]
    for split, k, seed in zip(("train", "valid", "test"), per_class, (0, 1, 2)):
        labels = np.repeat(np.arange(num_classes), k)
        make_store(root / f"{task}_{split}.h5", labels, names, dataset=task, split=split, seed=seed)
    return names


def test_esc50_five_fold_cross_validation(tmp_path):
    labels = np.tile(np.arange(3), 10)                                 # 30 clips, 3 classes
    folds = np.repeat(np.arange(1, 6), 6).astype(np.int8)              # 6 clips per fold
    make_store(tmp_path / "esc50.h5", labels, ["dog", "rain", "bell"], folds=folds, dataset="esc50")
    m = run_finetune("esc50", "esc50-mini", init="none", stores=tmp_path, runs=tmp_path / "runs",
                     name="esc", overrides=TINY + ["epochs=1", "freqm=16", "timem=8"])
    assert [f["fold"] for f in m["folds"]] == [1, 2, 3, 4, 5]
    accs = np.array([f["accuracy"] for f in m["folds"]])
    assert m["score"] == pytest.approx(accs.mean()) and m["std"] == pytest.approx(accs.std())
    assert all(f["clips"] == 6 for f in m["folds"]) and m["num_test_clips"] == 30
    run = tmp_path / "runs" / "esc"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["score"] == pytest.approx(m["score"]) and len(on_disk["folds"]) == 5
    assert "± " in (run / "results.md").read_text() and (run / "confusion.png").stat().st_size > 0
    assert all((run / f"fold{k}" / "checkpoint-final.pt").exists() for k in range(1, 6))
    # the saved fold-3 model, evaluated on its held-out fold, reproduces that fold's accuracy
    ev = evaluate_checkpoint(run / "fold3" / "checkpoint.pt", "esc50", stores=tmp_path)
    assert ev["clips"] == 6 and ev["accuracy"] == pytest.approx(m["folds"][2]["accuracy"])


def test_spc1_uses_twelve_classes(tmp_path):
    names = spc_stores(tmp_path, "spc1", 12, per_class=(2, 1, 1))
    m = run_finetune("spc1", "spc1-mini", init="none", stores=tmp_path, runs=tmp_path / "runs",
                     name="k1", overrides=TINY + ["epochs=1", "freqm=16", "timem=8"])
    assert m["num_classes"] == 12 and m["class_names"] == names and m["num_test_clips"] == 12
    state = load_checkpoint(tmp_path / "runs" / "k1" / "checkpoint.pt")
    assert state["model"]["head.weight"].shape == (12, 192)
    assert state["config"]["valid_store"] == "spc1_valid.h5" and "valid" in m
    assert (state["config"]["freqm"], state["config"]["timem"]) == (16, 8)
    assert state["norm"] == {"mean": -6.8, "std": 5.5}               # the store's stats, kept for embedding
    spc_stores(tmp_path / "ten", "spc1", 10, per_class=(2, 1, 1))
    with pytest.raises(FinetuneError, match="12 classes"):
        run_finetune("spc1", "spc1-mini", init="none", stores=tmp_path / "ten", runs=tmp_path / "runs",
                     overrides=TINY + ["epochs=1"])


def test_spc2_like_finetune_beats_chance_and_is_deterministic(tmp_path):
    spc_stores(tmp_path, "spc2", 4, per_class=(12, 4, 6))
    ov = TINY + ["depth=2", "warmup_epochs=1", "lr=2e-3"]
    m = run_finetune("spc2", "spc2-mini", init="none", stores=tmp_path, runs=tmp_path / "runs", name="a",
                     overrides=ov + ["epochs=8"])
    assert m["score"] >= 0.75, m                                      # chance is 0.25
    assert m["valid"]["accuracy"] >= 0.75
    log = [json.loads(x) for x in (tmp_path / "runs" / "a" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    for name in ("b", "c"):
        run_finetune("spc2", "spc2-mini", init="none", stores=tmp_path, runs=tmp_path / "runs", name=name,
                     overrides=ov + ["epochs=2"])
    sb = load_checkpoint(tmp_path / "runs" / "b" / "checkpoint-final.pt")["model"]
    sc = load_checkpoint(tmp_path / "runs" / "c" / "checkpoint-final.pt")["model"]
    assert all(torch.equal(sb[k], sc[k]) for k in sb)                 # same seed, same weights


def test_init_from_audiomae_layout_file(tmp_path):
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    # an AudioMAE-style pretrained.pth: encoder keys in its layout, 1024 frames, plus decoder keys
    enc = AudioViT(target_length=1024, embed_dim=192, depth=2, num_heads=3, pos_layout="audiomae", pos_width=64)
    sd = {k: v for k, v in enc.state_dict().items() if not k.startswith("head")}
    sd.update({"mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.zeros(512, 192)})
    torch.save({"model": sd}, tmp_path / "pretrained.pth")
    m = run_finetune("spc2", "spc2-mini", init=str(tmp_path / "pretrained.pth"), stores=tmp_path,
                     runs=tmp_path / "runs", name="amae", overrides=TINY + ["epochs=1", "lr=0"])
    assert m["init"].endswith("pretrained.pth")
    state = load_checkpoint(tmp_path / "runs" / "amae" / "checkpoint.pt")
    args, got = state["model_args"], state["model"]
    assert (args["depth"], args["embed_dim"], args["target_length"]) == (2, 192, T)  # sizes from the file
    assert torch.equal(got["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"])  # lr=0: unchanged
    assert torch.equal(got["pos_embed"], sd["pos_embed"][:, :1 + (T // 16) * 8])        # time-major prefix
    assert got["head.weight"].shape == (3, 192)


def test_missing_latest_pretrain_says_what_to_do(tmp_path):
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    with pytest.raises(FinetuneError, match="make pretrain"):
        run_finetune("spc2", "spc2-mini", init="latest", stores=tmp_path, runs=tmp_path / "runs")
    from pipeline.cli import app
    r = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "latest",
                                 "--stores", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "make pretrain" in r.output
    r = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "none",
                                 "--stores", str(tmp_path / "nowhere"), "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "spc2_train.h5" in r.output and "make prepare" in r.output


def test_audioset_weighted_two_stores_reports_map(tmp_path):
    rng = np.random.default_rng(0)
    names = ["Speech", "Music", "Dog", "Bell"]
    for name, n, seed in (("audioset_balanced_train.h5", 12, 0), ("audioset_unbalanced_train.h5", 20, 1),
                          ("audioset_eval.h5", 12, 2)):
        lab = (rng.random((n, 4)) < 0.3).astype(np.uint8)
        lab[np.arange(n), np.arange(n) % 4] = 1                       # every clip has a label
        make_store(tmp_path / name, lab, names, multilabel=True, dataset="audioset", seed=seed)
    m = run_finetune("as2m", "as2m-mini", init="none", stores=tmp_path, runs=tmp_path / "runs", name="as",
                     overrides=TINY + ["epochs=1", "epoch_len=24"])
    assert m["metric"] == "mAP" and 0 < m["score"] <= 1 and 0 <= m["test"]["AUC"] <= 1
    assert set(m["fingerprints"]["clips"]) == {"audioset_balanced_train.h5", "audioset_unbalanced_train.h5",
                                              "audioset_eval.h5"}
    assert not (tmp_path / "runs" / "as" / "confusion.png").exists()   # multi-label: no confusion matrix
    assert (tmp_path / "runs" / "as" / "curves.png").exists()


def test_class_balance_weights_sampler_and_mixup():
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 1]])
    w = fd.class_balance_weights(labels)                              # counts: [3, 2]
    assert np.allclose(w, [1000 / 3.01, 1000 / 3.01, 1000 / 3.01 + 1000 / 2.01, 1000 / 2.01])
    s0 = fd.WeightedEpochSampler(np.arange(1.0, 11.0), 8, seed=3, rank=0, world_size=2)
    s1 = fd.WeightedEpochSampler(np.arange(1.0, 11.0), 8, seed=3, rank=1, world_size=2)
    a, b = list(s0), list(s1)
    assert len(a) == len(b) == 4 and len(set(a + b)) == 8            # ranks split one draw, no repeats
    assert list(s0) == a
    s0.set_epoch(1)
    assert list(s0) != a
    with pytest.raises(fd.DataError, match="epoch_len"):
        fd.WeightedEpochSampler(np.ones(5), 6)
    x = torch.randn(6, 1, 16, 8)
    y = fd.soft_targets(torch.arange(6), 6)                           # distinct classes
    xm, ym = fd.mixup(x, y, prob=1.0, beta=10.0, rng=np.random.default_rng(0))
    assert torch.allclose(ym.sum(1), torch.ones(6)) and (ym.max(1).values < 1).all()   # every clip mixed
    x0, y0 = fd.mixup(x, y, prob=0.0, beta=10.0, rng=np.random.default_rng(0))
    assert torch.equal(x0, x) and torch.equal(y0, y)


def test_fbank_masking_masks_raw_bins_of_training_items_only(tmp_path):
    """spec_mask=(freqm, timem): torchaudio masking on the raw fbank (0 before normalisation), a
    fresh draw per item from torch's seeded RNG; the presets put it on training data only."""
    store = make_store(tmp_path / "s.h5", np.arange(4) % 2, ["a", "b"])
    plain = fd.ClipDataset(store)
    masked = fd.ClipDataset(store, spec_mask=(48, 60))
    zero = (0.0 - store.norm_mean) / (2 * store.norm_std)              # a masked raw bin, normalised
    torch.manual_seed(0)
    a = [masked[k][0] for k in range(4)]
    torch.manual_seed(0)
    b = [masked[k][0] for k in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))               # deterministic for a seed
    hit = [(x != plain[k][0]) for k, x in enumerate(a)]
    assert any(h.any() for h in hit)
    for k, x in enumerate(a):                                           # changed values are masked bins
        assert torch.allclose(x[hit[k]], torch.full_like(x[hit[k]], zero))
        rows = hit[k][0].all(dim=1)                                    # whole frames masked (time)
        cols = hit[k][0].all(dim=0)                                    # whole mel bins masked (frequency)
        assert (hit[k][0] == (rows[:, None] | cols[None, :])).all()
        assert rows.sum() < 60 and cols.sum() < 48
    with pytest.raises(ValueError, match="freqm=-1"):
        fd.ClipDataset(store, spec_mask=(-1, 0))
