"""Speech Commands: v0.02 (KS2, 35 words) and v0.01 as SUPERB defines KS1 (12 classes)."""
from __future__ import annotations

from pathlib import Path

import soundfile as sf

from pipeline.readers.spec import ClipRecord, DatasetSpec, require
from cache_tools.errors import InputFileError

SPLITS = ("train", "valid", "test")
TARGET_LENGTH, CLIP_SECONDS = 128, 1.0
NOISE = "_background_noise_"
SPC1_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPC1_CLASSES = SPC1_WORDS + ("_unknown_", "_silence_")
SILENCE_VALID_EVERY = 10   # background-noise window k goes to valid when k % 10 == 0, else train
EXPECTED = """\
  ROOT/{word}/{speaker}_nohash_{n}.wav   one folder per word
  ROOT/_background_noise_/*.wav          (not a class)
  ROOT/validation_list.txt               lines `word/file.wav`
  ROOT/testing_list.txt                  lines `word/file.wav`"""
EXPECTED_TEST = """\
  TEST_ROOT/{yes,no,up,down,left,right,on,off,stop,go,_unknown_,_silence_}/*.wav
  (SUPERB's speech_commands_test_set_v0.01)"""


def _word_files(root: Path) -> dict[str, list[str]]:
    """word -> sorted relative paths `word/file.wav` (the lists' spelling)."""
    require(root.is_dir(), root, "Speech Commands root does not exist", EXPECTED)
    for name in ("validation_list.txt", "testing_list.txt"):
        require((root / name).is_file(), root, f"no {name}", EXPECTED)
    words = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != NOISE and not d.name.startswith("."))
    require(bool(words), root, "no word folders", EXPECTED)
    return {w: sorted(f"{w}/{p.name}" for p in (root / w).glob("*.wav")) for w in words}


def _read_list(path: Path) -> set[str]:
    return {ln.strip().replace("\\", "/") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}


def _split_files(root: Path, split: str) -> tuple[dict[str, list[str]], list[str]]:
    """The split's files per word, and list entries with no file (missing)."""
    if split not in SPLITS:
        raise InputFileError(root, f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    words = _word_files(root)
    valid, test = _read_list(root / "validation_list.txt"), _read_list(root / "testing_list.txt")
    present = {f for fs in words.values() for f in fs}
    if split == "train":
        chosen, missing = (valid | test), []
        return {w: [f for f in fs if f not in chosen] for w, fs in words.items()}, missing
    listed = valid if split == "valid" else test
    return {w: [f for f in fs if f in listed] for w, fs in words.items()}, sorted(listed - present)


def _record(root: Path, rel: str, label: int) -> ClipRecord:
    return ClipRecord(rel[: -len(".wav")], root / rel, label)


def read_spc2(root: Path | str, split: str) -> DatasetSpec:
    """Speech Commands v0.02: 35 classes = the word folders, sorted; splits from the two lists."""
    root = Path(root)
    files, missing = _split_files(root, split)
    words = sorted(files)
    records = [_record(root, rel, k) for k, w in enumerate(words) for rel in files[w]]
    return DatasetSpec("spc2", split, words, list(words), False, TARGET_LENGTH, CLIP_SECONDS, records, missing)


def silence_windows(root: Path, split: str) -> tuple[list[ClipRecord], list[str]]:
    """Deterministic 1 s windows cut from ROOT/_background_noise_/*.wav for train / valid."""
    records, missing = [], []
    label = SPC1_CLASSES.index("_silence_")
    if not (root / NOISE).is_dir():
        return [], [f"_silence_ (no {NOISE}/ folder in {root})"]
    for path in sorted((root / NOISE).glob("*.wav")):
        try:
            seconds = sf.info(str(path)).duration
        except (RuntimeError, sf.LibsndfileError) as e:  # listed in the report, not fatal
            missing.append(f"_silence_/{path.stem} (unreadable: {e})")
            continue
        for k in range(int(seconds // CLIP_SECONDS)):
            if (k % SILENCE_VALID_EVERY == 0) == (split == "valid"):
                records.append(ClipRecord(f"_silence_/{path.stem}_{k:04d}", path, label,
                                          start=k * CLIP_SECONDS, duration=CLIP_SECONDS, kind="silence"))
    return records, missing


def read_spc1(root: Path | str, test_root: Path | str | None, split: str) -> DatasetSpec:
    """SUPERB KS1 on Speech Commands v0.01: 10 words + _unknown_ + _silence_."""
    root = Path(root)
    if split == "test":
        if test_root is None:
            raise InputFileError(root, f"the SPC-1 test split reads SUPERB's test set; give test_root")
        records, missing = _read_spc1_test(Path(test_root)), []
    else:
        files, missing = _split_files(root, split)
        unknown = SPC1_CLASSES.index("_unknown_")
        records = [_record(root, rel, SPC1_CLASSES.index(w) if w in SPC1_WORDS else unknown)
                   for w in sorted(files) for rel in files[w]]
        noise, bad = silence_windows(root, split)
        records, missing = records + noise, missing + bad
    names = list(SPC1_CLASSES)
    return DatasetSpec("spc1", split, names, list(names), False, TARGET_LENGTH, CLIP_SECONDS, records, missing)


def _read_spc1_test(test_root: Path) -> list[ClipRecord]:
    require(test_root.is_dir(), test_root, "SPC-1 test set root does not exist", EXPECTED_TEST)
    folders = sorted(d.name for d in test_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    extra = [f for f in folders if f not in SPC1_CLASSES]
    if extra or not folders:
        raise InputFileError(test_root, f"unexpected class folders {extra or folders}", EXPECTED_TEST)
    return [_record(test_root, f"{w}/{p.name}", SPC1_CLASSES.index(w))
            for w in folders for p in sorted((test_root / w).glob("*.wav"))]
