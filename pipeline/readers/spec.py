"""What every reader returns (ClipRecord, DatasetSpec) and how it says a layout is wrong (InputFileError)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cache_tools.errors import InputFileError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".aiff", ".aif")


@dataclass(frozen=True)
class ClipRecord:
    clip_id: str                 # unique in the split (AudioSet: YTID_start, ESC-50: stem, SPC: word/stem)
    path: Path
    label: int | list[int]       # class index (single-label) or list of class indices (multi-label)
    fold: int | None = None      # ESC-50 only (1..5)
    start: float = 0.0           # seconds into the file
    duration: float | None = None
    kind: str = "file"           # "file", or "silence" (SPC-1 silence cut from background noise)
    split: str | None = None     # your own data (readers/folder.py): "train" | "valid" | "test" from its CSV


@dataclass
class DatasetSpec:
    dataset: str                 # "audioset" | "esc50" | "spc1" | "spc2"
    split: str
    class_names: list[str]
    class_ids: list[str]         # AudioSet MIDs where they exist, else names
    multilabel: bool
    target_length: int           # fbank frames: AudioSet 1024, ESC-50 512, SPC 128
    clip_seconds: float          # 10, 5, 1
    records: list[ClipRecord]
    missing: list[str] = field(default_factory=list)   # listed clips without an audio file
    note: str = ""               # what the reader decided that is worth printing (readers/folder.py: clip length)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def require(cond: bool, root: Path | str, problem: str, expected: str) -> None:
    if not cond:
        raise InputFileError(root, problem, expected)


def shown(path: Path | str) -> str:
    """A path as printable text: bytes that are not UTF-8 (Linux keeps them as surrogates) as \\xNN."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def require_utf8_names(paths, what: str = "file") -> None:
    """InputFileError naming the first path that is not valid UTF-8: clip ids and stores hold UTF-8
    text, so such a name is refused before any work (rename it, or move it out of the folder)."""
    for p in paths:
        try:
            str(p).encode("utf-8")
        except UnicodeEncodeError:
            raise InputFileError(f"{shown(p)}: this {what} path is not valid UTF-8 (stores and embeddings keep "
                                 "names as UTF-8 text); rename it, or move it out of the inputs") from None


def audio_files(folder: Path) -> list[Path]:
    """Audio files under `folder` (recursive), sorted for a deterministic order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
