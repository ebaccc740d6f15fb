"""The built-in mini datasets: determinism, the real layouts, no clipping, idempotent reruns."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cache_tools.errors import SupmamError
from pipeline.minidata import MARKER, generate
from pipeline.minidata.speech_commands import CORE_WORDS, WORDS_V1, WORDS_V2

SCALE = 0.05  # the smallest sizes: every class / fold / split still present


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini")
    generate(root, seed=0, scale=SCALE, verbose=False)
    return root


def test_same_seed_same_bytes_other_seed_other_bytes(mini, tmp_path):
    again = generate(tmp_path / "a", seed=0, scale=SCALE, which=("esc50", "spc"), workers=1, verbose=False)
    assert all(r["written"] for r in again.values())
    for name in ("esc50", "speech_commands_v0.02", "speech_commands_v0.01", "speech_commands_test_set_v0.01"):
        assert _digest(tmp_path / "a" / name) == _digest(mini / name), name
    generate(tmp_path / "b", seed=1, scale=SCALE, which=("esc50",), verbose=False)
    assert _digest(tmp_path / "b" / "esc50") != _digest(mini / "esc50")


def test_audioset_is_deterministic(mini, tmp_path):
    generate(tmp_path, seed=0, scale=SCALE, which=("audioset",), workers=1, verbose=False)
    assert _digest(tmp_path / "audioset") == _digest(mini / "audioset")


def test_rerun_writes_nothing_and_partial_is_rebuilt(tmp_path):
    generate(tmp_path, seed=0, scale=SCALE, which=("esc50",), verbose=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "esc50").rglob("*")}
    report = generate(tmp_path, seed=0, scale=SCALE, which=("esc50",), verbose=False)
    assert report["esc50"]["written"] is False
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "esc50").rglob("*")} == before
    # an interrupted run leaves a partial folder and no final one: the next run rebuilds
    partial = tmp_path / ".esc50.partial"
    (tmp_path / "esc50").rename(partial)
    (partial / MARKER).unlink()
    report = generate(tmp_path, seed=0, scale=SCALE, which=("esc50",), verbose=False)
    assert report["esc50"]["written"] is True and not partial.exists()
    assert (tmp_path / "esc50" / MARKER).is_file()


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "esc50").mkdir()
    (tmp_path / "esc50" / "precious.txt").write_text("real data")
    with pytest.raises(SupmamError, match="esc50"):
        generate(tmp_path, seed=0, scale=SCALE, which=("esc50",), verbose=False)
    assert (tmp_path / "esc50" / "precious.txt").read_text() == "real data"
    with pytest.raises(SupmamError, match="unknown mini datasets"):
        generate(tmp_path, which=("audiosett",), verbose=False)


def _check_audio(path: Path, sr: int | None, seconds: float, channels: int | None = 1) -> tuple[int, int]:
    x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # [S, ch]
    info = sf.info(str(path))
    assert info.subtype == "PCM_16", path
    if sr is not None:
        assert file_sr == sr, path
    if channels is not None:
        assert x.shape[1] == channels, path
    assert x.shape[0] == round(seconds * file_sr), path
    assert np.all(np.isfinite(x)) and np.abs(x).max() <= 1.0, path
    assert np.abs(x).max() < 0.95, f"{path}: peak {np.abs(x).max():.3f}, should be loudness-limited"
    assert np.sqrt(np.mean(x ** 2)) > 1e-4, f"{path}: silent"
    return file_sr, x.shape[1]


def test_audioset_layout(mini):
    root = mini / "audioset"
    with open(root / "class_labels_indices.csv") as f:
        assert f.readline() == "index,mid,display_name\n"
        classes = list(csv.reader(f))
    assert [int(r[0]) for r in classes] == list(range(len(classes))) and 12 <= len(classes) <= 20
    mids = {r[1] for r in classes}
    assert ["/m/05zppz", "Male speech, man speaking"] in [r[1:] for r in classes]
    assert '"Male speech, man speaking"' in (root / "class_labels_indices.csv").read_text()
    formats, ids = set(), set()
    for split in ("balanced_train", "unbalanced_train", "eval"):
        lines = (root / f"{split}_segments.csv").read_text().splitlines()
        assert all(line.startswith("#") for line in lines[:3])
        assert lines[2] == "# YTID, start_seconds, end_seconds, positive_labels"
        rows = list(csv.reader(lines[3:], skipinitialspace=True))
        manifest = json.loads((root / "manifests" / f"{split}.json").read_text())["data"]
        assert len(manifest) == len(rows) > 0
        seen = set()
        for (ytid, start, end, labels), entry in zip(rows, manifest):
            assert len(ytid) == 11 and ytid not in ids
            ids.add(ytid)
            assert float(end) - float(start) == 10.0
            clip_mids = labels.split(",")
            assert 1 <= len(clip_mids) and set(clip_mids) <= mids
            seen |= set(clip_mids)
            assert entry == {"wav": f"audio/{split}/{ytid}.wav", "labels": labels}
            formats.add(_check_audio(root / entry["wav"], None, 10.0, channels=None))
        if split != "unbalanced_train":
            assert seen == mids, f"{split}: every class appears"
    assert {sr for sr, _ in formats} == {32000, 44100, 48000} and {ch for _, ch in formats} == {1, 2}


def test_esc50_layout(mini):
    root = mini / "esc50"
    with open(root / "meta" / "esc50.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    real = {"dog": 0, "rooster": 1, "pig": 2, "cow": 3, "frog": 4, "cat": 5, "sheep": 8,
            "clock_tick": 38, "siren": 42, "church_bells": 46}
    assert {r["category"]: int(r["target"]) for r in rows} == real
    for fold in range(1, 6):
        assert {r["category"] for r in rows if int(r["fold"]) == fold} == set(real)
    for r in rows:
        assert r["filename"] == f"{r['fold']}-{r['src_file']}-{r['take']}-{r['target']}.wav"
        assert r["esc10"] == str(r["category"] in ("dog", "rooster", "clock_tick"))
        _check_audio(root / "audio" / r["filename"], 44100, 5.0)
    assert len(list((root / "audio").glob("*.wav"))) == len(rows)


@pytest.mark.parametrize("name,words", [("speech_commands_v0.02", WORDS_V2), ("speech_commands_v0.01", WORDS_V1)])
def test_speech_commands_layout(mini, name, words):
    root = mini / name
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(words + ("_background_noise_",)) and len(words) == (35 if "2" in name else 30)
    assert len(list((root / "_background_noise_").glob("*.wav"))) >= 3
    files = {f"{p.parent.name}/{p.name}" for p in root.glob("*/*_nohash_*.wav")}
    speaker = lambda rel: rel.split("/")[1].split("_nohash_")[0]  # noqa: E731
    assert all(len(speaker(r)) == 8 and set(speaker(r)) <= set("0123456789abcdef") for r in files)   # hex ids
    valid = (root / "validation_list.txt").read_text().split()
    test = (root / "testing_list.txt").read_text().split()
    assert valid and test and set(valid) <= files and set(test) <= files
    train = files - set(valid) - set(test)
    groups = [{speaker(r) for r in s} for s in (train, set(valid), set(test))]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]), "speaker-disjoint"
    assert all(p.parent.name in words for p in root.glob("*/*_nohash_*.wav"))
    for rel in sorted(files)[::7]:
        _check_audio(root / rel, 16000, 1.0)


def test_superb_test_set_layout(mini):
    root = mini / "speech_commands_test_set_v0.01"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CORE_WORDS + ("_unknown_", "_silence_"))
    for folder in CORE_WORDS + ("_unknown_", "_silence_"):
        wavs = list((root / folder).glob("*.wav"))
        assert wavs, folder
        for p in wavs:
            _check_audio(p, 16000, 1.0)
    train = {p.name.split("_nohash_")[0] for p in (mini / "speech_commands_v0.01").glob("*/*_nohash_*.wav")}
    test = {p.name.split("_nohash_")[0] for p in root.glob("*/*_nohash_*.wav")}
    assert test and not (test & train), "the test set's speakers differ from train"


def test_sources_do_not_depend_on_what_was_rendered_before():
    from pipeline.minidata.sources import _synth, clock_ticks, instrument
    _synth.cache_clear()
    fresh = clock_ticks(np.random.default_rng(2), 2.0, 32000)
    instrument(np.random.default_rng(1), "violin", 2.0, 32000)  # leaves a ringing tail behind
    again = clock_ticks(np.random.default_rng(2), 2.0, 32000)
    assert np.array_equal(fresh, again) and np.abs(fresh).max() > 0.01


def test_speech_is_deterministic_whatever_the_worker_count():
    from pipeline.minidata.speech import Utterance, random_voice, synthesize
    rng = np.random.default_rng(0)
    us = [Utterance(w, random_voice(rng), seed=i) for i, w in enumerate(("yes", "marvin", "yes", "sheila"))]
    a = synthesize(us, workers=2, batch_size=2)   # two fresh processes side by side
    b = synthesize(us, workers=1, batch_size=2)   # the same two batches one after the other
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(len(x) > 2000 for x in a) and not np.array_equal(a[0], a[1])
