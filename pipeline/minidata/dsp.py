"""Small signal helpers shared by the mini-dataset generators: resample, place, mix, limit, write."""
from __future__ import annotations

import zlib
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, resample_poly

PEAK = 0.89  # -1 dBFS: every written clip peaks at or below this, so nothing clips


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on the seed and the given keys (order-independent generation)."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """x: float [S] -> float32 [S * sr_out / sr_in] (polyphase, deterministic)."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def speed(x: np.ndarray, steps: int, base: int = 20) -> np.ndarray:
    """Play x faster (steps > base) or slower: x [S] -> [S * base / steps]; pitch moves with tempo.
    Ratios are kept to steps/base so the polyphase filter stays short."""
    if steps == base:
        return x.astype(np.float32)
    g = gcd(int(steps), int(base))
    return resample_poly(x, base // g, steps // g).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def fade(x: np.ndarray, sr: int, seconds: float = 0.02) -> np.ndarray:
    """Linear fade in and out so cut sources do not click. x: [S] float."""
    n = min(int(sr * seconds), len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def trim_silence(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Drop leading / trailing samples below threshold * peak. x: [S]."""
    idx = np.flatnonzero(np.abs(x) > threshold * (np.abs(x).max() + 1e-12))
    return x[idx[0]: idx[-1] + 1] if len(idx) else x


def place(buf: np.ndarray, x: np.ndarray, offset: int) -> None:
    """Add x into buf starting at offset, cutting what falls outside. buf: [S] or [S, ch]; x: [S'] or [S', ch]."""
    if offset < 0:
        x, offset = x[-offset:], 0
    n = min(len(x), len(buf) - offset)
    if n > 0:
        buf[offset: offset + n] += x[:n] if x.ndim == buf.ndim else x[:n, None]  # mono into stereo: both channels


def pan(x: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan: x [S] -> [S, 2]; position in [-1, 1] (left .. right)."""
    angle = (position + 1.0) * np.pi / 4.0
    return np.stack([x * np.cos(angle), x * np.sin(angle)], axis=1).astype(np.float32)


def limit(x: np.ndarray, target_rms: float = 0.1, peak: float = PEAK) -> np.ndarray:
    """Scale to target_rms, then down (never up) so |x| <= peak. Float32 out."""
    x = x * (target_rms / rms(x))
    top = float(np.abs(x).max())
    if top > peak:
        x = x * (peak / top)
    return x.astype(np.float32)


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise of n samples, unit RMS: white noise through a -3 dB/octave IIR (the usual 4-pole fit)."""
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1.0, -2.494956002, 2.017265875, -0.522189400]
    x = lfilter(b, a, rng.standard_normal(n + 2000))[2000:]  # drop the filter's start-up transient
    return (x / rms(x)).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    """Write 16-bit PCM; x: [S] or [S, ch] in [-1, 1]. Raises if x would clip (a generator bug)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if not np.isfinite(peak) or peak > 1.0:
        raise ValueError(f"{path}: refusing to write a clip with peak {peak:.3f} (must be finite and <= 1)")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, int(sr), subtype="PCM_16", format="WAV")
