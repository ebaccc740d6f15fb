"""Readers over tiny trees in each dataset's real layout."""
from __future__ import annotations

import json

import pytest

from pipeline.readers import read_audioset, read_esc50, read_spc1, read_spc2
from pipeline.readers.speech_commands import SPC1_CLASSES
from tests.fixtures_audio import AS_CLASSES, ESC_CLASSES, make_audioset, make_esc50, make_spc, make_spc1_test
from cache_tools.errors import InputFileError

SPC2_WORDS = ["backward", "yes", "zero", "no"]
SPC1_WORDS = ["yes", "no", "go", "bed", "cat"]   # bed, cat -> _unknown_


def test_esc50_folds_and_class_positions(tmp_path):
    make_esc50(tmp_path / "esc", per_fold=2)
    spec = read_esc50(tmp_path / "esc")
    assert spec.dataset == "esc50" and spec.target_length == 512 and spec.clip_seconds == 5.0
    assert spec.class_names == ["dog", "rooster", "pouring_water"] and not spec.multilabel
    assert spec.class_names == [ESC_CLASSES[t] for t in sorted(ESC_CLASSES)]
    assert len(spec.records) == 5 * 3 * 2 and spec.missing == []
    by_target = {0: 0, 1: 1, 3: 2}                 # distinct targets sorted; index = position
    for r in spec.records:
        fold, _, _, target = r.clip_id.split("-")
        assert r.fold == int(fold) and r.label == by_target[int(target)]
        assert r.path.name == r.clip_id + ".wav" and r.path.is_file()
    assert sorted({r.fold for r in spec.records}) == [1, 2, 3, 4, 5]
    (tmp_path / "esc" / "audio" / (spec.records[0].clip_id + ".wav")).unlink()
    assert read_esc50(tmp_path / "esc").missing == [spec.records[0].clip_id]


def test_spc2_split_membership_from_the_lists(tmp_path):
    root = make_spc(tmp_path / "v2", SPC2_WORDS, per_word=4)
    valid = set((root / "validation_list.txt").read_text().split())
    test = set((root / "testing_list.txt").read_text().split())
    specs = {s: read_spc2(root, s) for s in ("train", "valid", "test")}
    ids = {s: {r.clip_id + ".wav" for r in sp.records} for s, sp in specs.items()}
    assert ids["valid"] == valid and ids["test"] == test
    assert len(ids["train"]) == 4 * 2 and not ids["train"] & (valid | test)
    assert specs["train"].class_names == sorted(SPC2_WORDS)      # _background_noise_ is not a class
    for sp in specs.values():
        assert sp.dataset == "spc2" and sp.target_length == 128 and sp.clip_seconds == 1.0
        for r in sp.records:
            assert sp.class_names[r.label] == r.clip_id.split("/")[0]


def test_spc1_superb_twelve_classes(tmp_path):
    root = make_spc(tmp_path / "v1", SPC1_WORDS, per_word=4, noise_seconds=(12.5, 3.2))
    test_root = make_spc1_test(tmp_path / "t1", ["yes", "go", "_unknown_", "_silence_"])
    train, valid = read_spc1(root, None, "train"), read_spc1(root, None, "valid")
    assert train.class_names == list(SPC1_CLASSES) and len(SPC1_CLASSES) == 12
    assert SPC1_CLASSES[:10] == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
    unk, sil = SPC1_CLASSES.index("_unknown_"), SPC1_CLASSES.index("_silence_")
    words = [r for r in train.records if r.kind == "file"]
    assert len(words) == 5 * 2
    for r in words:
        w = r.clip_id.split("/")[0]
        assert r.label == (SPC1_CLASSES.index(w) if w in ("yes", "no", "go") else unk)
    # silence: 1 s windows of the background files (12 + 3 windows); k % 10 == 0 -> valid
    sil_train = [r for r in train.records if r.kind == "silence"]
    sil_valid = [r for r in valid.records if r.kind == "silence"]
    assert len(sil_train) + len(sil_valid) == 15 and len(sil_valid) == 3
    assert all(r.label == sil and r.duration == 1.0 and r.path.parent.name == "_background_noise_"
               for r in sil_train + sil_valid)
    assert sorted(r.start for r in sil_valid) == [0.0, 0.0, 10.0]
    assert len({r.clip_id for r in sil_train + sil_valid}) == 15
    assert read_spc1(root, None, "train") == train                   # deterministic
    test = read_spc1(root, test_root, "test")
    assert len(test.records) == 8
    assert {(r.clip_id.split("/")[0], r.label) for r in test.records} == {
        ("yes", 0), ("go", 9), ("_unknown_", unk), ("_silence_", sil)}
    with pytest.raises(InputFileError, match="test_root"):
        read_spc1(root, None, "test")


def test_audioset_mids_filenames_and_missing(tmp_path):
    segs = make_audioset(tmp_path / "as")
    spec = read_audioset(tmp_path / "as", split="balanced_train")
    assert spec.multilabel and spec.target_length == 1024 and spec.clip_seconds == 10.0
    assert spec.class_ids == [m for m, _ in AS_CLASSES]
    assert spec.class_names[3] == "Cough, sneeze"                   # quoted name with a comma
    got = {r.clip_id: r for r in spec.records}
    assert set(got) == {"abc_DEF-123_30.000", "-x-y_z_0.000", "Qq1_12.500"}
    assert spec.missing == ["nofile_0.000"]
    assert got["abc_DEF-123_30.000"].label == [0, 1]
    assert got["abc_DEF-123_30.000"].path.name == "abc_DEF-123_30.000_40.000.wav"
    assert got["-x-y_z_0.000"].label == [2] and got["-x-y_z_0.000"].path.name == "Y-x-y_z.wav"
    assert got["Qq1_12.500"].label == [3, 4] and got["Qq1_12.500"].path.name == "Qq1_12500_22500.flac"
    assert [r.label for r in read_audioset(tmp_path / "as", split="eval").records] == [[0, 4]]
    assert [r.path.name for r in read_audioset(tmp_path / "as", split="unbalanced_train").records] == ["Plain01.wav"]
    assert len(segs["balanced_train"]) == 4
    for split in ("eval", "balanced_train"):          # one YTID in two split folders: each split its own
        wav = tmp_path / "as" / "audio" / split / "Dup.wav"
        wav.parent.mkdir(exist_ok=True)
        wav.write_bytes((tmp_path / "as" / "audio" / "Plain01.wav").read_bytes())
        with open(tmp_path / "as" / f"{split}_segments.csv", "a") as f:
            f.write('Dup, 0.000, 10.000, "/m/0jbk"\n')
    for split in ("eval", "balanced_train"):
        rec = read_audioset(tmp_path / "as", split=split).records[-1]
        assert rec.clip_id == "Dup_0.000" and rec.path.parent.name == split


def test_audioset_json_manifest(tmp_path):
    make_audioset(tmp_path / "as")
    man = tmp_path / "as" / "manifests" / "train.json"
    man.parent.mkdir()
    man.write_text(json.dumps({"data": [
        {"wav": "audio/Plain01.wav", "labels": "/m/04rlf,/m/09x0r"},          # relative to the parent
        {"wav": str(tmp_path / "as" / "audio" / "Ev1_1.000_11.000.wav"), "labels": "/t/dd00088"},
        {"wav": "audio/gone.wav", "labels": "/m/0jbk"}]}))
    (man.parent / "audio").mkdir()
    (man.parent / "audio" / "Ev1b.wav").write_bytes((tmp_path / "as" / "audio" / "Plain01.wav").read_bytes())
    man2 = man.parent / "more.json"                                           # relative to its own folder
    man2.write_text(json.dumps({"data": [{"wav": "audio/Ev1b.wav", "labels": "/m/0jbk"}]}))
    spec = read_audioset(tmp_path / "as", manifest=man)
    assert spec.split == "train" and [r.clip_id for r in spec.records] == ["Plain01", "Ev1_1.000_11.000"]
    assert [r.label for r in spec.records] == [[0, 1], [4]] and spec.missing == ["gone"]
    spec2 = read_audioset(tmp_path / "as", manifest=man2)
    assert spec2.records[0].path == man.parent / "audio" / "Ev1b.wav" and spec2.records[0].label == [2]
    man.write_text(json.dumps({"data": [{"wav": "audio/Plain01.wav", "labels": "/m/nope"}]}))
    with pytest.raises(InputFileError, match="/m/nope"):
        read_audioset(tmp_path / "as", manifest=man)


def test_wrong_layout_errors_name_root_and_show_layout(tmp_path):
    with pytest.raises(InputFileError) as e:
        read_esc50(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "meta/esc50.csv" in str(e.value)
    (tmp_path / "esc" / "audio").mkdir(parents=True)
    with pytest.raises(InputFileError, match=r"no meta/esc50.csv[\s\S]*Expected layout"):
        read_esc50(tmp_path / "esc")
    (tmp_path / "spc" / "yes").mkdir(parents=True)
    with pytest.raises(InputFileError, match=r"validation_list.txt[\s\S]*word/file.wav"):
        read_spc2(tmp_path / "spc", "train")
    (tmp_path / "as").mkdir()
    with pytest.raises(InputFileError, match=r"class_labels_indices.csv[\s\S]*segments.csv"):
        read_audioset(tmp_path / "as", split="eval")
    make_audioset(tmp_path / "as2")
    (tmp_path / "as2" / "eval_segments.csv").unlink()
    with pytest.raises(InputFileError, match="eval_segments.csv"):
        read_audioset(tmp_path / "as2", split="eval")
    (tmp_path / "t1" / "maybe").mkdir(parents=True)
    with pytest.raises(InputFileError, match=r"unexpected class folders \['maybe'\][\s\S]*_silence_"):
        read_spc1(tmp_path / "spc", tmp_path / "t1", "test")
