"""Formats users have (m4a / aac, opus, webm through PyAV) and headers no recording has
(sample rates outside 1 kHz..384 kHz, windows too large to decode): decoded, or refused with a
reason before anything is decoded or resampled."""
from __future__ import annotations

import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from cache_tools.clips.store import ClipStore
from pipeline import audio_io
from pipeline.audio_io import load_clip, to_mono_16k
from pipeline.prepare import prepare
from pipeline.readers import ClipRecord, DatasetSpec
from tests.fixtures_audio import tone, write_wav

SECONDS = 5.0
FORMATS = [("m4a", "ipod", "aac", 44100), ("opus", "ogg", "libopus", 48000), ("webm", "webm", "libopus", 48000)]


def chirp(sr: int) -> np.ndarray:
    """[n, 2] float32: a rising chirp (its correlation with a copy is sensitive to rate and offset)."""
    t = np.arange(int(SECONDS * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 300 * t * (1 + 0.3 * t))).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1)


def encode(path, container: str, codec: str, sr: int, x: np.ndarray) -> None:
    """x [n, 2] float32 -> a compressed file written by PyAV (FFmpeg's own encoders)."""
    assert codec in av.codecs_available
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation at lag 0, away from the edges (codec warm-up)."""
    a, b = a[1600:-1600], b[1600:-1600]
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_prepare_decodes_m4a_opus_webm_written_here(tmp_path):
    records, refs = [], []
    for i, (ext, container, codec, sr) in enumerate(FORMATS):
        src = chirp(sr)
        path = tmp_path / "audio" / f"clip{i}.{ext}"
        path.parent.mkdir(exist_ok=True)
        encode(path, container, codec, sr, src)
        wave, reason = load_clip(path, SECONDS)
        assert reason is None and len(wave) == int(SECONDS * 16000), (ext, reason)   # right length at 16 kHz
        records.append(ClipRecord(f"clip{i}", path, i % 2))
        refs.append(to_mono_16k(src, sr))                          # the source, down-mixed and resampled
        part, _ = load_clip(path, 2.0, start=1.5)                  # a window from inside the file
        assert len(part) == 32000 and similarity(part, refs[-1][24000:56000]) > 0.99, ext
    (tmp_path / "audio" / "clip3.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A junk" * 20)
    records.append(ClipRecord("clip3", tmp_path / "audio" / "clip3.m4a", 0))
    spec = DatasetSpec("esc50", "all", ["a", "b"], ["a", "b"], False, 512, SECONDS, records)
    report = prepare(spec, tmp_path / "s.h5", workers=1, progress=False)
    store = ClipStore(tmp_path / "s.h5")
    assert store.clip_ids == ["clip0", "clip1", "clip2"]
    for i, ref in enumerate(refs):
        got = store.wave(i).astype(np.float32) / 32768.0           # [80000] int16 -> float
        assert similarity(got, ref) > 0.99, FORMATS[i][0]          # same content, same rate, no offset
    (bad,) = report["skipped"]
    assert bad["clip_id"] == "clip3" and bad["reason"].startswith("corrupt: ")
    assert "pyav" in bad["reason"] and "torchcodec" not in bad["reason"].lower()


def _wav_with_rate(path, rate: int):
    """A valid 1 s 16-bit WAV whose header then claims `rate` Hz (rate and byte rate fields)."""
    raw = bytearray(write_wav(path, tone(1.0, seed=3)).read_bytes())
    raw[24:28] = struct.pack("<I", rate)
    raw[28:32] = struct.pack("<I", rate * 2 & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("rate", [2_147_483_647, 1, 999, 384_001])
def test_insane_sample_rates_are_refused_before_decoding(tmp_path, monkeypatch, rate):
    path = _wav_with_rate(tmp_path / f"sr{rate}.wav", rate)
    monkeypatch.setattr(audio_io.sf, "read", lambda *a, **k: pytest.fail("decoded a file with an insane header"))
    monkeypatch.setattr(audio_io, "_decode_av", lambda *a, **k: pytest.fail("decoded a file with an insane header"))
    wave, reason = load_clip(path, 10.0)
    assert wave is None and reason == f"bad sample rate: the header says {rate} Hz (allowed 1000..384000 Hz)"


def test_prepare_reports_insane_rates_and_oversized_windows(tmp_path, monkeypatch):
    files = {"huge": _wav_with_rate(tmp_path / "huge.wav", 2_147_483_647),
             "one": _wav_with_rate(tmp_path / "one.wav", 1),
             "wide": write_wav(tmp_path / "wide.wav", np.tile(tone(1.0, seed=4)[:, None], (1, 6))),   # 6 channels
             "good": write_wav(tmp_path / "good.wav", tone(1.0, seed=5))}
    monkeypatch.setattr(audio_io, "MAX_DECODE_SAMPLES", 16000 * 4)  # the limit is a setting: 4 s of mono here
    spec = DatasetSpec("spc2", "train", ["a"], ["a"], False, 128, 1.0,
                       [ClipRecord(k, p, 0) for k, p in files.items()])
    report = prepare(spec, tmp_path / "s.h5", workers=1, progress=False)
    reasons = {s["clip_id"]: s["reason"] for s in report["skipped"]}
    assert report["written"] == 1 and set(reasons) == {"huge", "one", "wide"}
    assert reasons["huge"].startswith("bad sample rate: the header says 2147483647 Hz")
    assert reasons["one"].startswith("bad sample rate: the header says 1 Hz")
    assert reasons["wide"].startswith("too large: the window holds 16000 frames x 6 channels")
