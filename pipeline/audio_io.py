"""Decode any audio file -> mono float32 at 16 kHz, cut to the clip length; bad files give a reason.

`load_clip` never raises for a bad file: it returns (None, reason) with reason one of
"corrupt: ...", "empty", "truncated: ...", "bad sample rate: ...", "too large: ...",
"non-finite samples", "silent", "too short: ...".

Decoders: soundfile (libsndfile: wav, flac, ogg/vorbis, mp3, aiff, ...), then PyAV (FFmpeg in its
wheel: m4a / aac, webm, opus, ...). The header is read first: a sample rate outside
MIN_RATE..MAX_RATE or a window that would decode more than MAX_DECODE_SAMPLES samples is refused
before anything is decoded or resampled (a header claiming 2,147,483,647 Hz once cost 17 GB).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
SILENT_PEAK = 1e-5       # |x| below this everywhere (about -100 dBFS) counts as silent
MIN_SAMPLES = 400        # one 25 ms Kaldi window at 16 kHz
MIN_RATE, MAX_RATE = 1000, 384000        # sample rates a real recording has
MAX_DECODE_SAMPLES = 30 * 60 * 48000 * 2  # 30 min of 48 kHz stereo: the most one clip may decode


class Unusable(Exception):
    """A file that cannot give a clip; str() is the reason recorded in the store's report."""


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


def check_header(sr: int, channels: int, frames: int, max_samples: int = MAX_DECODE_SAMPLES) -> None:
    """Unusable unless the rate is sane and `frames` x `channels` fits under `max_samples`."""
    if not MIN_RATE <= sr <= MAX_RATE:
        raise Unusable(f"bad sample rate: the header says {sr} Hz (allowed {MIN_RATE}..{MAX_RATE} Hz)")
    if channels < 1:
        raise Unusable(f"bad header: {channels} channels")
    if frames * channels > max_samples:
        raise Unusable(f"too large: the window holds {frames} frames x {channels} channels, more than "
                       f"the {max_samples}-sample limit (30 min of 48 kHz stereo)")


def _decode(path: Path, start: float, seconds: float | None, max_samples: int) -> tuple[np.ndarray, int]:
    """(samples [n, channels] float32, sample rate) read from `start`; soundfile, then PyAV."""
    try:
        info = sf.info(str(path))
    except Exception as sf_error:  # noqa: BLE001 - not a libsndfile format: try FFmpeg
        return _decode_av(path, start, seconds, max_samples, sf_error)
    first = int(round(start * info.samplerate))
    frames = -1 if seconds is None else int(round(seconds * info.samplerate))
    expected = max(0, info.frames - first) if frames < 0 else max(0, min(frames, info.frames - first))
    check_header(info.samplerate, info.channels, expected, max_samples)
    try:
        x, sr = sf.read(str(path), start=first, frames=frames, dtype="float32", always_2d=True)
    except Exception as sf_error:  # noqa: BLE001
        return _decode_av(path, start, seconds, max_samples, sf_error)
    if len(x) < expected:
        raise Unusable(f"truncated: header says {expected} frames from {start:g} s, read {len(x)}")
    return x, sr


def _decode_av(path: Path, start: float, seconds: float | None, max_samples: int,
               sf_error: Exception) -> tuple[np.ndarray, int]:
    """PyAV (FFmpeg): the first audio stream from `start` for `seconds` -> ([n, channels] float32, rate)."""
    import av

    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001
        raise Unusable(f"corrupt: soundfile: {sf_error}; pyav: {_av_reason(e)}") from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise Unusable(f"corrupt: soundfile: {sf_error}; pyav: no audio stream")
        sr, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        total = container.duration / 1e6 if container.duration else None          # seconds, if known
        window = seconds if seconds is not None else (total - start if total else 0.0)
        if total is not None:
            window = min(window, max(0.0, total - start))
        check_header(sr, channels, int(round(window * sr)), max_samples)
        limit = None if seconds is None else int(round(seconds * sr))
        try:
            return _av_samples(container, stream, start, limit, max_samples // max(channels, 1)), sr
        except av.FFmpegError as e:
            raise Unusable(f"corrupt: pyav: {_av_reason(e)}") from None


def _av_reason(e: Exception) -> str:
    """FFmpeg's reason without the file name or its `last error log` (which FFmpeg's log state in
    this process decides): the same file gives the same reason in every process."""
    return getattr(e, "strerror", None) or str(e).split("; last error log:")[0]


def _av_samples(container, stream, start: float, limit: int | None, max_frames: int) -> np.ndarray:
    """Decode packed float32 [n, channels] from `start` seconds, at most `limit` frames. Samples
    are counted from the stream's first decoded one (codec priming already dropped by FFmpeg),
    not placed by timestamps, which some containers round to milliseconds."""
    import av

    chunks, have, skip, resampler = [], 0, None, None
    for frame in container.decode(stream):
        if resampler is None:
            resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
            skip = int(round(start * frame.sample_rate))
        for out in resampler.resample(frame):
            x = out.to_ndarray().reshape(-1, len(out.layout.channels))   # packed: [1, n*ch] -> [n, ch]
            cut = min(skip, len(x))
            chunks.append(x[cut:])
            skip -= cut
            have += len(x) - cut
        if limit is not None and have >= limit:
            break
        if have > max_frames:
            raise Unusable(f"too large: more than {max_frames} frames decoded (the header gave no length)")
    if not chunks:
        return np.zeros((0, 1), np.float32)
    x = np.concatenate(chunks)
    return x if limit is None else x[:limit]


SINC_MAX_PHASES = 1 << 20   # reduced in x out rates above which torchaudio's kernel is too big


def resample(wave: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """wave [..., S] at sr_in -> [..., ceil(S * sr_out / sr_in)] at sr_out. The one resampler of real
    audio: files to 16 kHz here, 16 kHz to the teacher's 48 kHz.

    torchaudio's sinc resampler builds a [out, in + 2 width] kernel on the gcd-reduced rates, so its
    memory grows with their product: every common rate (8 k, 11.025 k, 22.05 k, 44.1 k, 48 k, 96 k ...:
    at most 441 x 640) keeps it, bit for bit what earlier stores hold; a pair sharing no factor
    (16001 -> 16000 Hz: a 1 GB kernel, 5.2 GB peak) goes to soxr (HQ), whose cost is bounded."""
    if sr_in == sr_out:
        return wave
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {sr_in} -> {sr_out} Hz")
    g = math.gcd(int(sr_in), int(sr_out))
    if (sr_in // g) * (sr_out // g) <= SINC_MAX_PHASES:
        return torchaudio.functional.resample(wave, sr_in, sr_out)
    return _resample_soxr(wave, int(sr_in), int(sr_out))


def _resample_soxr(wave: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """soxr HQ on [..., S]: rows become soxr's channels; cut / zero-padded to torchaudio's length."""
    import soxr

    S, n = wave.shape[-1], -(-wave.shape[-1] * sr_out // sr_in)                  # n = ceil(S out / in)
    rows = wave.detach().cpu().reshape(-1, S).to(torch.float32).numpy()         # [K, S]
    y = soxr.resample(np.ascontiguousarray(rows.T), sr_in, sr_out, quality="HQ")  # [~n, K]
    out = np.zeros((n, rows.shape[0]), np.float32)
    out[: min(n, len(y))] = y[:n]
    return torch.from_numpy(np.ascontiguousarray(out.T)).reshape(*wave.shape[:-1], n).to(wave.dtype)


def to_mono_16k(x: np.ndarray, sr: int) -> np.ndarray:
    """[n, channels] at `sr` -> [m] float32 mono at 16 kHz (channel mean, then `resample`)."""
    mono = torch.from_numpy(np.ascontiguousarray(x.mean(axis=1), dtype=np.float32))  # [n]
    return resample(mono, sr, SAMPLE_RATE).numpy()                                     # [m]


def decode_native(path: Path | str, seconds: float | None, start: float = 0.0,
                  max_samples: int | None = None) -> tuple[np.ndarray, int]:
    """(samples [n, channels] float32, the file's own rate) of the window (start, seconds), or
    Unusable(reason): load_clip's checks and decoders without its downmix and resampling (stage
    one's full-band teacher input reads the clip's source with it)."""
    path = Path(path)
    if not path.is_file():
        raise Unusable("corrupt: file does not exist")
    if path.stat().st_size == 0:
        raise Unusable("empty")
    truncated = _wav_truncation(path)
    if truncated:
        raise Unusable(truncated)
    x, sr = _decode(path, start, seconds, MAX_DECODE_SAMPLES if max_samples is None else max_samples)
    if x.size == 0:
        raise Unusable("empty")
    if not np.isfinite(x).all():
        raise Unusable("non-finite samples")
    return x, sr


def load_clip(path: Path | str, seconds: float, start: float = 0.0,
              max_samples: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """(wave [n] float32 16 kHz, n <= seconds*16000, None) or (None, reason). Not padded: see pad_to.
    `max_samples`: the most samples (frames x channels) one clip may decode (None: MAX_DECODE_SAMPLES)."""
    try:
        x, sr = decode_native(path, seconds, start, max_samples)    # [n, channels] at the file's rate
    except Unusable as e:
        return None, str(e)
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
