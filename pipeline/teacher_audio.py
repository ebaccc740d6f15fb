"""Stage one's teacher input: every clip at the teacher's own rate, read again from its source file.

laion-clap reads audio with `librosa.load(f, sr=48000)` (soundfile, channel mean, soxr_hq); so
does `load_source`, on the clip's window of its file (source_path / source_start / source_seconds),
with `prepare`'s decoder so the window is the clip's. A store without source records, or a clip
whose file is missing or changed (size / sha256 / length), falls back to the clip store's 16 kHz
wave upsampled (`clipstore-16k-upsampled`: nothing above 8 kHz reaches the teacher); each
fallback's reason is kept (the target store's `progress/fallback-<k>.jsonl`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from cache_tools.clips.sources import compare
from pipeline.audio_io import SAMPLE_RATE, decode_native, resample

FALLBACK = "clipstore-16k-upsampled"   # the 16 kHz clip-store wave, upsampled to the teacher's rate
PLAIN = "clipstore-16k"                # teachers that take the 16 kHz wave themselves (no token_grid_waves)
NO_SOURCES = "the clip store records no sources (written before it did): rebuild it with `supmam prepare`"


def source_kind(rate: int) -> str:
    """The teacher-input name of clips read from their source at `rate`, e.g. "source-48k"."""
    return f"source-{rate / 1000:g}k"


def load_source(path, start: float, seconds: float, rate: int) -> np.ndarray:
    """[n] float32 mono at `rate`: the file's window (start, seconds) decoded at its own rate, channel
    mean, librosa's soxr_hq resampler (librosa.load's steps). Raises audio_io.Unusable(reason) for a bad file."""
    import librosa

    x, sr = decode_native(path, seconds, start)                   # [n, channels] at the file's rate
    mono = np.ascontiguousarray(x.mean(axis=1), dtype=np.float32)  # [n], librosa.to_mono
    return librosa.resample(mono, orig_sr=sr, target_sr=rate, res_type="soxr_hq")   # [ceil(n * rate / sr)]


class TeacherInputDataset(Dataset):
    """Clip i of a clip store -> (i, wave [S_i] float32 in [-1, 1] at `rate`, kind, reason): kind is
    source_kind(rate) or FALLBACK, reason says why a clip fell back. sources=False: every clip falls back;
    source_root replaces the store's recorded `source_root` (data moved, another machine)."""

    def __init__(self, clips, rate: int, sources: bool = True, source_root=None):
        self.clips, self.rate, self.root = clips, int(rate), source_root
        self.sources = sources and bool(getattr(clips, "has_sources", False))
        self.kind = source_kind(self.rate)
        self._memo: dict = {}                  # files hashed by this process (clips cut from one file: once)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        if not self.sources:
            return i, self._fallback(i), FALLBACK, ""
        try:
            return i, torch.from_numpy(self._source(i)), self.kind, ""
        except Exception as e:  # noqa: BLE001 - one bad file falls back (and says why), it does not end the stage
            return i, self._fallback(i), FALLBACK, str(e) or type(e).__name__

    def _source(self, i: int) -> np.ndarray:
        """Clip i from its file, checked against what `prepare` recorded of the file (size, mtime,
        sha256: cache_tools.clips.sources) and against the stored clip's length; a changed file is refused."""
        path, start, seconds = self.clips.source(i, self.root)
        recorded = self.clips.source_identity(i) if getattr(self.clips, "has_source_identity", False) else None
        if recorded is not None:
            why = compare(path, recorded, self._memo, deep=True)        # it is read anyway: hash it
            if why is not None and not why.startswith("missing"):       # a missing file: the decoder says so
                raise OSError(f"{path}: {why}")
        try:
            wave = load_source(path, start, seconds, self.rate)     # [n]
        except Exception as e:  # noqa: BLE001 - Unusable, or a decoder's own error: the reason, with the file
            raise OSError(f"{path}: {e}") from None
        want = self.clips.wave_length(i) * self.rate / SAMPLE_RATE
        if abs(len(wave) - want) > math.ceil(self.rate / SAMPLE_RATE) + 1:
            raise OSError(f"{path}: {len(wave)} samples at {self.rate} Hz from {start:g} s, the stored clip "
                          f"holds {want:.0f}: the file is not the one `prepare` read")
        return wave

    def _fallback(self, i: int) -> torch.Tensor:
        """The stored 16 kHz wave's real samples, upsampled: [S_i] at `rate`."""
        w = np.asarray(self.clips.wave(i)[: self.clips.wave_length(i)], dtype=np.float32) / 32768.0   # [n]
        return resample(torch.from_numpy(w), SAMPLE_RATE, self.rate)                                 # [S_i]


def collate(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], list[str], list[str]]:
    """Clips of different lengths stay a list: (indices [B], waves, kinds, reasons)."""
    idx, waves, kinds, reasons = zip(*batch)
    return torch.tensor(idx), list(waves), list(kinds), list(reasons)
