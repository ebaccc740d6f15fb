"""Your own data: `supmam prepare folder` (CSV with splits, multi-label CSV with folds, class-per-folder
tree; any format / rate / channels), its errors, and `supmam finetune --task custom` on the result."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cache_tools.clips.store import SPLIT_NAMES, ClipStore
from cache_tools.errors import SupmamError
from pipeline.app.cli import app
from pipeline.prepare import BLOCK_SIZE, prepare, source_fingerprint
from pipeline.readers.folder import choose_length, clip_length, read_folder
from tests.folder_data import CLASSES, chance, csv_dataset, folder_dataset, multilabel_dataset, write_clip
from train.finetune.split import assign
from train.finetune.evaluate import evaluate_checkpoint

TINY = ["--init", "none", "--device", "cpu", "model.encoder_depth=1", "batch_size=8", "eval_batch_size=16",
        "log_every=2", "blr=0.064"]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The three layouts, prepared once: {"csv": ..., "multi": ..., "folder": ...} -> (store path, root)."""
    base = tmp_path_factory.mktemp("custom")
    out = {}
    for kind, make in (("csv", lambda r: csv_dataset(r)), ("multi", lambda r: multilabel_dataset(r)),
                       ("folder", lambda r: folder_dataset(r) and None)):
        root = base / kind
        labels = make(root)
        prepare(read_folder(root, labels), base / f"{kind}.h5", workers=1, progress=False)
        out[kind] = (base / f"{kind}.h5", root, labels)
    return out


def _finetune(*args: str) -> dict:
    r = CliRunner().invoke(app, ["finetune", "--task", "custom", "--preset", "custom-mini", *args])
    assert r.exit_code == 0, r.output
    return r


def test_csv_store_labels_splits_and_clip_length(stores):
    path, root, labels = stores["csv"]
    s = ClipStore(path)
    assert s.dataset == "custom" and not s.multilabel and s.class_names == sorted(CLASSES) == ["ant", "mole", "zebra"]
    assert s.attrs["skipped"] == 0 and len(s) == 30                       # wav / flac / ogg, 8-44.1 kHz, stereo
    names = [cid.split("/")[1] for cid in s.clip_ids]                      # audio/<class>/<file>
    assert [s.class_names[k] for k in s.labels] == names and s.clip_ids == sorted(s.clip_ids)
    assert [SPLIT_NAMES[c] for c in np.bincount(s.splits, minlength=3).nonzero()[0]] == ["train", "valid", "test"]
    assert np.bincount(s.splits).tolist() == [18, 6, 6]
    durations = [sf.info(str(root / cid)).duration for cid in s.clip_ids]
    frames = math.ceil(round(100 * np.percentile(durations, 95, method="higher"), 6))
    assert s.target_length == 16 * math.ceil(frames / 16) and len(s.wave(0)) == frames * 160
    # label order and clip order do not depend on the CSV's row order: the same input, the same store
    shuffled = root / "shuffled.csv"
    lines = labels.read_text().splitlines()
    shuffled.write_text("\n".join([lines[0]] + [lines[i] for i in np.random.default_rng(1).permutation(
        np.arange(1, len(lines)))]) + "\n")
    spec = read_folder(root, shuffled)
    assert spec.class_names == s.class_names and [r.clip_id for r in spec.records] == s.clip_ids
    assert source_fingerprint(spec, BLOCK_SIZE) == s.attrs["source_fingerprint"]
    assert prepare(spec, path, workers=1, progress=False)["status"] == "already complete"


def test_multilabel_csv_and_class_folders(stores):
    m = ClipStore(stores["multi"][0])
    assert m.multilabel and m.class_names == ["ant", "mole", "zebra"] and m.splits is None
    rows = [ln.split(",") for ln in stores["multi"][2].read_text().splitlines()[1:]]
    by_file = {f: (set(tags.split(";")), int(fold)) for f, tags, fold in rows}
    for i, cid in enumerate(m.clip_ids):
        assert {m.class_names[c] for c in np.flatnonzero(m.labels[i])} == by_file[cid][0]
        assert m.folds[i] == by_file[cid][1]
    f = ClipStore(stores["folder"][0])
    assert not f.multilabel and f.class_names == ["ant", "mole", "zebra"] and f.splits is None and f.folds is None
    assert [f.class_names[k] for k in f.labels] == [cid.split("/")[0] for cid in f.clip_ids]


def _case(tmp_path, kind: str):
    """(root, csv or None, expected line, message fragment) of one broken dataset."""
    for k, name in enumerate(("a1", "a2", "b1", "b2")):
        write_clip(tmp_path / "w" / name, [300.0 * (k + 1)], 0.3, 0)
    rows = {"no_label": "file,category\nw/a1.wav,ant\n",
            "split_and_fold": "file,label,split,fold\nw/a1.wav,ant,train,1\n",
            "bad_split": "file,label,split\nw/a1.wav,ant,train\nw/a2.wav,ant,dev\n",
            "twice": "file,label\nw/a1.wav,ant\nw/b1.wav,bee\n./w/a1.wav,ant\n",
            "climbing": "file,label\nw/a1.wav,ant\n../outside.wav,bee\n",
            "empty_label": "file,label\nw/a1.wav,ant\nw/b1.wav,ant;;bee\n",
            "only_in_test": "file,label,split\nw/a1.wav,ant,train\nw/a2.wav,ant,test\nw/b1.wav,bee,test\n"
                            "w/b2.wav,bee,valid\n",
            "missing_class": "file,label\nw/a1.wav,ant\nw/gone1.wav,owl\nw/gone2.wav,owl\n"}
    expect = {"no_label": (1, "no column 'label'"), "split_and_fold": (1, "both `split` and `fold`"),
              "bad_split": (3, "split 'dev' is not one of"), "twice": (4, "listed twice (first on line 2)"),
              "climbing": (3, "climbs out of the root folder"), "empty_label": (3, "empty label"),
              "only_in_test": (4, "label 'bee' appears only in test/valid rows"),
              "missing_class": (3, "class 'owl' is empty: none of its 2 listed files exists")}
    if kind == "empty_folder":
        (tmp_path / "tree" / "ant").mkdir(parents=True)
        write_clip(tmp_path / "tree" / "ant" / "x", [300.0], 0.3, 0)
        (tmp_path / "tree" / "owl").mkdir()
        return tmp_path / "tree", None, None, "class 'owl' is empty: no audio file"
    csv = tmp_path / "labels.csv"
    csv.write_text(rows[kind])
    return tmp_path, csv, *expect[kind]


@pytest.mark.parametrize("kind", ["no_label", "split_and_fold", "bad_split", "twice", "climbing", "empty_label",
                                  "only_in_test", "missing_class", "empty_folder"])
def test_bad_datasets_are_refused_naming_the_csv_line(tmp_path, kind):
    root, csv, line, why = _case(tmp_path, kind)
    with pytest.raises(SupmamError) as e:
        read_folder(root, csv)
    where = f"{csv}:{line}: " if csv is not None else f"{root / 'owl'}: "
    assert str(e.value).startswith(where) and why in str(e.value)
    if kind == "twice":                                              # the CLI: `error: <csv>:<line>: ...`, exit 1
        r = CliRunner().invoke(app, ["prepare", "folder", "--root", str(root), "--labels", str(csv),
                                     "--out", str(tmp_path / "x.h5")])
        assert r.exit_code == 1 and f"error: {csv}:4: w/a1.wav is listed twice" in r.output


def test_clip_length_rule():
    assert choose_length([1.0] * 99 + [9.0]) == (1.0, 112)           # p95 of 100: an ordinary clip, 112 = 7 x 16
    assert choose_length([0.5] * 18 + [3.0, 3.0]) == (3.0, 304)     # the 95th percentile is a real clip's length
    assert choose_length([0.004]) == (0.01, 16) and choose_length([30.0]) == (10.24, 1024)   # one frame; the cap
    assert clip_length([], None, 1.0)[:2] == (1.0, 112) and clip_length([], 512, None)[:2] == (5.12, 512)
    with pytest.raises(SupmamError, match="multiple of 16"):
        clip_length([], 100, None)


def test_finetune_split_column_reports_and_evaluates(stores, tmp_path):
    path = stores["csv"][0]
    _finetune("--clips", str(path), "--runs", str(tmp_path), "--name", "csv", *TINY, "epochs=8")
    run = tmp_path / "csv"
    m = json.loads((run / "metrics.json").read_text())
    s = ClipStore(path)
    test = np.flatnonzero(s.splits == SPLIT_NAMES.index("test"))
    assert m["metric"] == "accuracy" and m["num_test_clips"] == len(test) == 6 and not m["multilabel"]
    assert m["split"] == {"source": "split column", "clips": {"train": 18, "valid": 6, "test": 6}}
    assert m["score"] > chance(s.labels[test], False)                  # above the majority-class share
    assert m["selection"] == "best valid accuracy" and (run / "confusion.png").stat().st_size > 0
    assert "custom" in (run / "results.md").read_text()
    ev = evaluate_checkpoint(run / "checkpoint.pt", "custom")         # finds the held-out test part again
    assert ev["clips"] == 6 and ev["accuracy"] == pytest.approx(m["score"])


def test_finetune_multilabel_folds_bce_map(stores, tmp_path):
    path = stores["multi"][0]
    _finetune("--clips", str(path), "--runs", str(tmp_path), "--name", "ml", *TINY, "epochs=6", "folds=[1]")
    m = json.loads((tmp_path / "ml" / "metrics.json").read_text())
    s = ClipStore(path)
    held = s.labels[s.folds == 1]
    assert m["metric"] == "mAP" and m["multilabel"] and [f["fold"] for f in m["folds"]] == [1]
    assert m["split"]["source"] == "folds" and m["split"]["folds"] == {"1": 10, "2": 10, "3": 10}
    assert m["score"] > chance(held, True)                             # above the positive rate
    assert (tmp_path / "ml" / "class_ap.png").stat().st_size > 0


def test_finetune_without_split_records_a_seeded_stratified_split(stores, tmp_path):
    path = stores["folder"][0]
    _finetune("--clips", str(path), "--runs", str(tmp_path), "--name", "st", *TINY, "epochs=1", "seed=3")
    m = json.loads((tmp_path / "st" / "metrics.json").read_text())
    assert m["split"] == {"source": "stratified split", "clips": {"train": 21, "valid": 3, "test": 6}, "seed": 3,
                          "fractions": {"valid": 0.1, "test": 0.2}}
    ids = json.loads((tmp_path / "st" / "split.json").read_text())["clip_ids"]
    assert sorted(c.split("/")[0] for c in ids["test"]) == ["ant", "ant", "mole", "mole", "zebra", "zebra"]
    s = ClipStore(path)
    again, other = assign(s, 3, 0.1, 0.2), assign(s, 4, 0.1, 0.2)
    assert [s.clip_ids[i] for i in again.test] == ids["test"] and not np.array_equal(again.test, other.test)
    assert json.loads((tmp_path / "st" / "config.json").read_text())["config"]["seed"] == 3
