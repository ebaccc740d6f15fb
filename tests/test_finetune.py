"""Fine-tuning drivers on tiny clip stores written with the real ClipStore writer (CPU, seconds each)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache_tools.clips.store import ClipStore
from tests.stores import FINETUNE_T as T, class_store, spc_stores
from train.finetune import data as fd
from train.model.checkpoint import load_checkpoint
from train.finetune.evaluate import evaluate_checkpoint
from train.finetune.config import FinetuneConfig, load_finetune_config
from train.finetune.run import run_finetune
from train.finetune.augment import Augment, TrainClips
from train.model.models_vit import AudioViT
from train.finetune.tasks import TASKS
from cache_tools.errors import ConfigError, StoreError

TINY = ["model.encoder=tiny", "model.encoder_depth=1", "batch_size=8", "eval_batch_size=16", "num_workers=0",
        "log_every=2"]


def finetune(task: str, root, *overrides: str, name: str | None = None, init: str = "none") -> dict:
    """Fine-tune `task` with its mini preset on the stores under `root`; the run goes to root/runs/<name>."""
    ov = [f"stores={root}", f"run_dir={root / 'runs'}", f"init={init}", *([f"name={name}"] if name else []), *overrides]
    return run_finetune(load_finetune_config(f"{task}-mini", ov, task=task))


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


def test_esc50_five_fold_cross_validation(tmp_path, capsys):
    labels = np.tile(np.arange(3), 10)                                 # 30 clips, 3 classes
    folds = np.repeat(np.arange(1, 6), 6).astype(np.int8)              # 6 clips per fold
    class_store(tmp_path / "esc50.h5", labels, ["dog", "rain", "bell"], folds=folds, dataset="esc50")
    m = finetune("esc50", tmp_path, *TINY, "epochs=1", "freqm=16", "timem=8", name="esc")
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
    ev = evaluate_checkpoint(run / "fold3" / "checkpoint.pt", "esc50")             # the data it recorded
    assert ev["clips"] == 6 and ev["accuracy"] == pytest.approx(m["folds"][2]["accuracy"])
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "esc50.h5").rename(moved / "esc50.h5")
    ev = evaluate_checkpoint(run / "fold3" / "checkpoint.pt", "esc50", stores=moved)   # same name elsewhere
    assert ev["test_set"] == f"{moved / 'esc50.h5'} fold 3"
    assert ev["accuracy"] == pytest.approx(m["folds"][2]["accuracy"])
    assert ev["recorded_test_set"] is True
    # a store of that name with the classes in another order: refused, not scored against the wrong labels
    swapped = tmp_path / "swapped"
    class_store(swapped / "esc50.h5", labels, ["rain", "dog", "bell"], folds=folds, dataset="esc50")
    with pytest.raises(StoreError, match=r"esc50.h5: class_names differs from what .*checkpoint.pt was trained on "
                                         r"\(class_names: \['rain', 'dog', 'bell'\] here, \['dog', 'rain', 'bell'\] there\)"):
        evaluate_checkpoint(run / "fold3" / "checkpoint.pt", "esc50", stores=swapped)
    # the same classes but other clips: scored, and said to be another test set
    other = tmp_path / "other"
    class_store(other / "esc50.h5", labels, ["dog", "rain", "bell"], folds=folds, dataset="esc50", seed=5)
    ev = evaluate_checkpoint(run / "fold3" / "checkpoint.pt", "esc50", stores=other)
    assert ev["recorded_test_set"] is False
    assert "is not the store" in capsys.readouterr().err


def test_spc1_uses_twelve_classes(tmp_path):
    names = spc_stores(tmp_path, "spc1", 12, per_class=(2, 1, 1))
    m = finetune("spc1", tmp_path, *TINY, "epochs=1", "freqm=16", "timem=8", name="k1")
    assert m["num_classes"] == 12 and m["class_names"] == names and m["num_test_clips"] == 12
    state = load_checkpoint(tmp_path / "runs" / "k1" / "checkpoint.pt")
    assert state["model"]["head.weight"].shape == (12, 192) and "valid" in m
    assert (state["config"]["freqm"], state["config"]["timem"]) == (16, 8)
    assert state["norm"] == {"mean": -6.8, "std": 5.5}               # the store's stats, kept for embedding
    spc_stores(tmp_path / "ten", "spc1", 10, per_class=(2, 1, 1))
    with pytest.raises(ConfigError, match="12 classes"):
        finetune("spc1", tmp_path / "ten", *TINY, "epochs=1")


def test_finetune_checkpoint_records_its_data_and_run(tmp_path):
    """The checkpoint's config names the stores it read (full paths), its init, device and run; the
    log folder's config.json holds the same config and the derived lr."""
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    finetune("spc2", tmp_path, *TINY, "epochs=1", "blr=0.064", name="rec")
    cfg = load_checkpoint(tmp_path / "runs" / "rec" / "checkpoint-final.pt")["config"]
    assert cfg["train_clips"] == [str(tmp_path / "spc2_train.h5")]
    assert (cfg["valid_clips"], cfg["test_clips"]) == (str(tmp_path / "spc2_valid.h5"), str(tmp_path / "spc2_test.h5"))
    assert (cfg["stores"], cfg["run_dir"], cfg["name"]) == (str(tmp_path), str(tmp_path / "runs"), "rec")
    assert (cfg["init"], cfg["device"], cfg["preset"], cfg["task"]) == ("none", "auto", "spc2-mini", "spc2")
    assert cfg["model"] == {"encoder": "tiny", "encoder_depth": 1, "drop_path": 0.0}
    saved = json.loads((tmp_path / "runs" / "rec" / "config.json").read_text())
    assert saved["config"] == json.loads(json.dumps(cfg)) and saved["derived"]["lr"] == pytest.approx(0.064 * 8 / 256)


def test_spc2_like_finetune_beats_chance_and_is_deterministic(tmp_path):
    spc_stores(tmp_path, "spc2", 4, per_class=(12, 4, 6))
    ov = TINY + ["model.encoder_depth=2", "warmup_epochs=1", "blr=0.064"]             # lr 2e-3 at batch 8
    m = finetune("spc2", tmp_path, *ov, "epochs=8", name="a")
    assert m["score"] >= 0.75, m                                      # chance is 0.25
    assert m["valid"]["accuracy"] >= 0.75
    log = [json.loads(x) for x in (tmp_path / "runs" / "a" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    for name in ("b", "c"):
        finetune("spc2", tmp_path, *ov, "epochs=2", name=name)
    sb = load_checkpoint(tmp_path / "runs" / "b" / "checkpoint-final.pt")["model"]
    sc = load_checkpoint(tmp_path / "runs" / "c" / "checkpoint-final.pt")["model"]
    assert all(torch.equal(sb[k], sc[k]) for k in sb)                 # same seed, same weights


def test_ddp_two_processes_wrap_the_encoder(tmp_path, torchrun):
    """torchrun, 2 CPU processes (gloo): DDP wraps the AudioViT itself (the token-masking probabilities
    are forward arguments); rank 0 evaluates and writes the run."""
    spc_stores(tmp_path, "spc2", 3, per_class=(4, 1, 1))
    ov = [*TINY, "epochs=1", "mask_t_prob=0.25", "mask_f_prob=0.25", f"stores={tmp_path}",
          f"run_dir={tmp_path / 'runs'}", "name=ddp", "init=none", "device=cpu"]
    r = torchrun("from train.finetune.config import load_finetune_config\nfrom train.finetune.run import run_finetune\n"
                 f"run_finetune(load_finetune_config('spc2-mini', {ov!r}, task='spc2'))")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert json.loads((run / "config.json").read_text())["derived"]["world_size"] == 2
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 2                          # 12 clips: 6 per rank, 4 per rank and update: 2 updates
    assert load_checkpoint(run / "checkpoint-final.pt")["epoch"] == 1 and (run / "metrics.json").is_file()


def test_init_from_audiomae_layout_file(tmp_path):
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    # an AudioMAE-style pretrained.pth: encoder keys in its layout, 1024 frames, plus decoder keys
    enc = AudioViT(target_length=1024, embed_dim=192, depth=2, num_heads=3, pos_layout="audiomae", pos_width=64)
    sd = {k: v for k, v in enc.state_dict().items() if not k.startswith("head")}
    sd.update({"mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.zeros(512, 192)})
    torch.save({"model": sd}, tmp_path / "pretrained.pth")
    m = finetune("spc2", tmp_path, *TINY, "epochs=1", "blr=1e-30", name="amae",     # blr must be > 0; 1e-30 moves
                 init=str(tmp_path / "pretrained.pth"))                              # no float32 weight

    assert m["init"].endswith("pretrained.pth")
    state = load_checkpoint(tmp_path / "runs" / "amae" / "checkpoint.pt")
    args, got = state["model_args"], state["model"]
    assert (args["depth"], args["embed_dim"], args["target_length"]) == (2, 192, T)  # sizes from the file
    assert torch.equal(got["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"])  # lr ~0: unchanged
    assert torch.equal(got["pos_embed"], sd["pos_embed"][:, :1 + (T // 16) * 8])        # time-major prefix
    assert got["head.weight"].shape == (3, 192)


def test_missing_latest_pretrain_says_what_to_do(tmp_path):
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    with pytest.raises(ConfigError, match="make pretrain"):
        finetune("spc2", tmp_path, init="latest")
    from pipeline.app.cli import app
    r = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "latest",
                                 "--stores", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 1 and "make pretrain" in r.output
    r = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "none",
                                 "--stores", str(tmp_path / "nowhere"), "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 1 and "spc2_train.h5" in r.output and "make prepare" in r.output


def test_cli_flags_are_config_keys(tmp_path):
    """`supmam finetune --init/--stores/--runs/--name/--device` set the config keys of the same
    meaning (the checkpoint records them); key=value arguments set any other key."""
    from pipeline.app.cli import app
    spc_stores(tmp_path, "spc2", 3, per_class=(2, 1, 1))
    r = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--preset", "spc2-mini", "--init", "none",
                                 "--stores", str(tmp_path), "--runs", str(tmp_path / "r"), "--name", "cli",
                                 "--device", "cpu", *TINY, "epochs=1"])
    assert r.exit_code == 0, r.output
    cfg = load_checkpoint(tmp_path / "r" / "cli" / "checkpoint-final.pt")["config"]
    assert (cfg["init"], cfg["stores"], cfg["run_dir"], cfg["device"], cfg["epochs"]) == (
        "none", str(tmp_path), str(tmp_path / "r"), "cpu", 1)
    r = CliRunner().invoke(app, ["finetune", "--task", "spc2", "--init", "none", "--stores", str(tmp_path), "lr=1"])
    assert r.exit_code == 1 and "lr is derived: set blr" in r.output


def test_task_registry_is_the_single_source(tmp_path):
    """Task names live in train/finetune/tasks.py only: the CLI's choices, the config's type, the presets and
    the demo's chance level all come from it."""
    import typing
    from pipeline.app.cli.stage_two import TaskName
    from pipeline.app.demo import chance_level
    assert [t.value for t in TaskName] == list(TASKS) == ["as2m", "as20k", "esc50", "spc1", "spc2", "custom"]
    assert typing.get_args(typing.get_type_hints(FinetuneConfig)["task"]) == tuple(TASKS)
    with pytest.raises(ConfigError, match="'spc3' is not one of"):
        load_finetune_config("spc2-mini", ["task=spc3", "init=none"])
    for name, task in TASKS.items():
        for preset in (name, f"{name}-mini"):
            cfg = load_finetune_config(preset, ["init=none", f"stores={tmp_path}"])
            assert cfg.task == name and cfg.train_clips == [str(tmp_path / n) for n in task.train]
            assert cfg.test_clips == (str(tmp_path / task.test) if task.test else "")
    assert (TASKS["esc50"].protocol, TASKS["esc50"].scored_store) == ("cv", "esc50.h5")
    assert (TASKS["as20k"].metric, TASKS["as20k"].scored_store) == ("mAP", "audioset_eval.h5")
    class_store(tmp_path / "spc1_test.h5", np.array([0, 1, 1, 1, 2]), ["a", "b", "c"], dataset="spc1")
    assert chance_level("spc1", tmp_path) == pytest.approx(3 / 5)        # the majority class's share


def test_audioset_weighted_two_stores_reports_map(tmp_path):
    rng = np.random.default_rng(0)
    names = ["Speech", "Music", "Dog", "Bell"]
    for name, n, seed in (("audioset_balanced_train.h5", 12, 0), ("audioset_unbalanced_train.h5", 20, 1),
                          ("audioset_eval.h5", 12, 2)):
        lab = (rng.random((n, 4)) < 0.3).astype(np.uint8)
        lab[np.arange(n), np.arange(n) % 4] = 1                       # every clip has a label
        class_store(tmp_path / name, lab, names, dataset="audioset", seed=seed)
    with pytest.raises(fd.StoreError, match="fewer than one fbank window"):   # these stores hold no real waves
        finetune("as2m", tmp_path, *TINY, "epochs=1", "epoch_len=24", name="as0")
    m = finetune("as2m", tmp_path, *TINY, "epochs=1", "epoch_len=24", "mixup=0", name="as")
    # the reported mAP / AUC are sklearn's class means over the final model's sigmoid scores
    from sklearn.metrics import average_precision_score, roc_auc_score
    from train.finetune.evaluate import rebuild
    state = load_checkpoint(tmp_path / "runs" / "as" / "checkpoint-final.pt")
    vit = rebuild(state["model_args"], state["model"]).eval()
    test = fd.ClipDataset(ClipStore(tmp_path / "audioset_eval.h5"))
    with torch.no_grad():
        scores = torch.sigmoid(vit(torch.stack([test[k][0] for k in range(len(test))]))).numpy()   # [12, 4]
    truth = np.stack([test[k][1].numpy() for k in range(len(test))])                           # [12, 4]
    assert m["metric"] == "mAP" and m["score"] == pytest.approx(
        np.mean([average_precision_score(truth[:, c], scores[:, c]) for c in range(4)]), abs=1e-6)
    assert m["test"]["AUC"] == pytest.approx(
        np.mean([roc_auc_score(truth[:, c], scores[:, c]) for c in range(4)]), abs=1e-6)
    assert set(m["fingerprints"]["clips"]) == {"audioset_balanced_train.h5", "audioset_unbalanced_train.h5",
                                              "audioset_eval.h5"}
    assert not (tmp_path / "runs" / "as" / "confusion.png").exists()   # multi-label: no confusion matrix
    assert (tmp_path / "runs" / "as" / "curves.png").exists()


def test_class_balance_weights_and_sampler():
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
    with pytest.raises(fd.StoreError, match="epoch_len"):
        fd.WeightedEpochSampler(np.ones(5), 6)
    assert torch.equal(fd.soft_targets(torch.arange(3), 3), torch.eye(3))


def test_fbank_masking_masks_raw_bins_of_training_items_only(tmp_path):
    """Augment(freqm, timem): torchaudio masking on the raw fbank (0 before normalisation), a fresh
    draw per item from its seed; the drivers put it on training clips only (TrainClips)."""
    store = class_store(tmp_path / "s.h5", np.arange(4) % 2, ["a", "b"])
    plain = fd.ClipDataset(store)
    masked = TrainClips([store], aug=Augment(freqm=48, timem=60))
    zero = (0.0 - store.norm_mean) / (2 * store.norm_std)              # a masked raw bin, normalised
    a = [masked[(k, 10 + k)][0] for k in range(4)]
    b = [masked[(k, 10 + k)][0] for k in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))               # deterministic for a seed
    assert torch.equal(TrainClips([store])[2][0], plain[2][0])        # no augmentation: the stored fbank
    hit = [(x != plain[k][0]) for k, x in enumerate(a)]
    assert any(h.any() for h in hit)
    for k, x in enumerate(a):                                           # changed values are masked bins
        assert torch.allclose(x[hit[k]], torch.full_like(x[hit[k]], zero))
        rows = hit[k][0].all(dim=1)                                    # whole frames masked (time)
        cols = hit[k][0].all(dim=0)                                    # whole mel bins masked (frequency)
        assert (hit[k][0] == (rows[:, None] | cols[None, :])).all()
        assert rows.sum() < 60 and cols.sum() < 48
    with pytest.raises(ConfigError, match="freqm=-1"):
        TrainClips([store], aug=Augment(freqm=-1))
