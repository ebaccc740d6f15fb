"""Decode any audio file -> mono float32 at 16 kHz, cut to the clip length; bad files give a reason.

`load_clip` never raises for a bad file: it returns (None, reason) with reason one of
"corrupt: ...", "empty", "truncated: ...", "non-finite samples", "silent", "too short: ...".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
SILENT_PEAK = 1e-5       # |x| below this everywhere (about -100 dBFS) counts as silent
MIN_SAMPLES = 400        # one 25 ms Kaldi window at 16 kHz


def _wav_truncation(path: Path) -> str | None:
    """For RIFF/WAVE files: a reason if the `data` chunk holds fewer bytes than its header declares."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                have = size - pos - 8
                if 0 < declared < 0xFFFFFFFF and have < declared:   # 0 / 0xFFFFFFFF: streamed, size unknown
                    return f"truncated: data chunk declares {declared} bytes, file holds {have}"
                return None
            pos += 8 + declared + (declared & 1)
    return None


def _decode(path: Path, start: float, seconds: float | None) -> tuple[np.ndarray, int]:
    """(samples [n, channels] float32, sample rate) read from `start`; soundfile, then PyAV, then torchaudio."""
    try:
        info = sf.info(str(path))
        first = int(round(start * info.samplerate))
        frames = -1 if seconds is None else int(round(seconds * info.samplerate))
        x, sr = sf.read(str(path), start=first, frames=frames, dtype="float32", always_2d=True)
        expected = max(0, info.frames - first) if frames < 0 else max(0, min(frames, info.frames - first))
        if len(x) < expected:
            raise EOFError(f"truncated: header says {expected} frames from {start:g} s, read {len(x)}")
        return x, sr
    except EOFError:
        raise
    except Exception as sf_error:  # noqa: BLE001 - any decoder failure is reported, not raised
        try:
            return _decode_av(path, start, seconds)          # FFmpeg: m4a / aac / opus / webm / video files
        except Exception as av_error:  # noqa: BLE001
            try:
                w, sr = torchaudio.load(str(path))   # [channels, n]
            except Exception as ta_error:  # noqa: BLE001
                raise OSError(f"corrupt: soundfile: {sf_error}; av: {av_error}; torchaudio: {ta_error}") from None
        first = int(round(start * sr))
        last = None if seconds is None else first + int(round(seconds * sr))
        return w.T[first:last].numpy().astype(np.float32), sr


def _decode_av(path: Path, start: float, seconds: float | None) -> tuple[np.ndarray, int]:
    """(samples [n, channels] float32, rate) of the first audio stream, decoded with PyAV (FFmpeg)."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]                      # IndexError: no audio stream
        to_float = av.AudioResampler(format="fltp")              # planar float, same layout and rate
        sr, chunks, have = stream.rate, [], 0
        stop = None if seconds is None else int(round((start + seconds) * stream.rate))
        for frame in container.decode(stream):
            for f in to_float.resample(frame):
                chunks.append(f.to_ndarray())                    # [channels, k]
                have += chunks[-1].shape[1]
            if stop is not None and have >= stop:
                break
    if not chunks:
        return np.zeros((0, 1), np.float32), sr
    x = np.concatenate(chunks, axis=1).T                         # [n, channels]
    first = int(round(start * sr))
    return np.ascontiguousarray(x[first:stop], dtype=np.float32), sr


def to_mono_16k(x: np.ndarray, sr: int) -> np.ndarray:
    """[n, channels] at `sr` -> [m] float32 mono at 16 kHz (channel mean, torchaudio resample)."""
    mono = torch.from_numpy(np.ascontiguousarray(x.mean(axis=1), dtype=np.float32))  # [n]
    if sr != SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, sr, SAMPLE_RATE)  # [m]
    return mono.numpy()


def load_clip(path: Path | str, seconds: float, start: float = 0.0) -> tuple[np.ndarray | None, str | None]:
    """(wave [n] float32 16 kHz, n <= seconds*16000, None) or (None, reason). Not padded: see pad_to."""
    path = Path(path)
    if not path.is_file():
        return None, "corrupt: file does not exist"
    if path.stat().st_size == 0:
        return None, "empty"
    truncated = _wav_truncation(path)
    if truncated:
        return None, truncated
    try:
        x, sr = _decode(path, start, seconds)
    except (EOFError, OSError) as e:
        return None, str(e)
    if x.size == 0:
        return None, "empty"
    if not np.isfinite(x).all():
        return None, "non-finite samples"
    wave = to_mono_16k(x, sr)[: int(round(seconds * SAMPLE_RATE))]  # [n]
    if len(wave) < MIN_SAMPLES:
        return None, f"too short: {len(wave)} samples at 16 kHz (< {MIN_SAMPLES})"
    if np.abs(wave).max() < SILENT_PEAK:
        return None, "silent"
    return wave, None


def pad_to(wave: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad [n] -> [length]."""
    out = np.zeros(length, dtype=wave.dtype)
    n = min(length, len(wave))
    out[:n] = wave[:n]
    return out


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 (clipped)."""
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def load_audio(path: Path | str, seconds: float, start: float = 0.0) -> tuple[np.ndarray | None, str | None]:
    """Like load_clip, but cut / zero-padded to exactly seconds*16000 samples."""
    wave, reason = load_clip(path, seconds, start)
    return (None, reason) if wave is None else (pad_to(wave, int(round(seconds * SAMPLE_RATE))), None)
