"""Stage one's full-band teacher input: the stored token grid equals laion-clap's own path from the
file (librosa.load at 48 kHz, int16 round trip, get_audio_features repeatpad, HTSAT); the 16 kHz
fallback when a source is gone, recorded per clip and in the store's attrs."""
import json

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from cache_tools.clips.store import ClipStore
from cache_tools.errors import SupmamError
from cache_tools.inspect import inspect_store
from cache_tools.targets.store import TargetStore
from pipeline.audio_io import resample
from pipeline.prepare import prepare
from pipeline.readers import ClipRecord, DatasetSpec
from pipeline.targets import build_targets
from pipeline.teacher import ClapTeacher, import_clap_module
from pipeline.teacher_audio import FALLBACK, TeacherInputDataset
from tests.stores import write_clip_store

torch.set_num_threads(1)
# (file name, rate, channels, seconds in the file, window start, window seconds)
SOURCES = [("st44k.wav", 44100, 2, 10.0, 0.0, 10.0), ("st48k.wav", 48000, 2, 10.0, 0.0, 10.0),
           ("short32k.wav", 32000, 1, 1.5, 0.0, 10.0), ("long44k.wav", 44100, 2, 12.0, 1.5, 10.0)]


def full_band(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """A tone at 500 Hz and one at 11 kHz (above the clip store's 8 kHz band) with noise: [n, channels]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.25 * np.sin(2 * np.pi * 500 * t) + 0.2 * np.sin(2 * np.pi * 11000 * t) + 0.02 * rng.standard_normal(len(t))
    return np.stack([x, 0.6 * x + 0.01 * rng.standard_normal(len(t))], 1) if channels == 2 else x[:, None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The source files, a clip store made by the real prepare, a seeded teacher, its target store."""
    tmp = tmp_path_factory.mktemp("full_band")
    records = []
    (tmp / "audio").mkdir()
    for j, (name, sr, ch, seconds, start, window) in enumerate(SOURCES):
        sf.write(str(tmp / "audio" / name), full_band(seconds, sr, ch, j), sr, subtype="PCM_16")
        records.append(ClipRecord(f"clip{j}", tmp / "audio" / name, [j % 2], start=start, duration=window))
    spec = DatasetSpec("audioset", "unbalanced_train", ["a", "b"], ["/m/a", "/m/b"], True, 1024, 10.0, records)
    prepare(spec, tmp / "clips.h5", workers=1, progress=False)
    teacher = ClapTeacher.from_checkpoint(None, seed=0)
    clips = ClipStore(tmp / "clips.h5")
    build_targets(clips, tmp / "t.zarr", teacher, batch_size=3, clips_per_shard=2, progress=False)
    return {"tmp": tmp, "clips": clips, "teacher": teacher, "store": TargetStore(tmp / "t.zarr")}


def laion_grid(teacher, path, offset: float, duration: float) -> torch.Tensor:
    """laion-clap's own path from the file (hook.py get_audio_embedding_from_filelist, with the
    clip's window), through the same HTSAT: its tscam_conv input as [1, Tt, Ft, D]."""
    _, clap_model = import_clap_module()                       # the package folder on sys.path, offline
    import training.data as clap_data
    wave, _ = librosa.load(str(path), sr=48000, offset=offset or 0.0, duration=duration)
    wave = torch.from_numpy(clap_data.int16_to_float32(clap_data.float32_to_int16(wave))).float()
    sample = clap_data.get_audio_features({}, wave, 480000, data_truncating="rand_trunc", data_filling="repeatpad",
                                          audio_cfg=teacher.audio_cfg)
    grids = []
    handle = teacher.net.tscam_conv.register_forward_pre_hook(lambda m, args: grids.append(args[0]))
    try:
        with torch.no_grad():
            teacher.net({"waveform": sample["waveform"][None], "longer": sample["longer"][None]}, device="cpu")
    finally:
        handle.remove()
    return grids[-1].permute(0, 3, 2, 1)                       # [1, D, Ft, Tt] -> [1, Tt, Ft, D]


def high_band_db(teacher, wave48k: torch.Tensor) -> float:
    """Mean log-mel (dB) the teacher sees in its mel bins wholly above 8.5 kHz, for one clip."""
    batch = teacher.layout([wave48k])
    with torch.no_grad():
        mel = teacher.net.logmel_extractor(teacher.net.spectrogram_extractor(batch["waveform"]))  # [1, 1, frames, 64]
    cfg = teacher.audio_cfg
    edges = librosa.mel_frequencies(cfg["mel_bins"] + 2, fmin=cfg["fmin"], fmax=cfg["fmax"])     # Slaney, as HTSAT
    high = torch.from_numpy(edges[:-2] > 8500)                                                   # [64]
    assert 3 <= int(high.sum()) < cfg["mel_bins"]
    return float(mel[0, 0][:, high].mean())


def test_grid_equals_laion_clap_from_the_file(setup, monkeypatch):
    # 10 s at 44.1 kHz resamples to 480001 samples (librosa's ceil): laion-clap crops it at a random
    # start (0 or 1); make its draw the fixed centre window the teacher uses (pipeline/teacher_input.py)
    monkeypatch.setattr(np.random, "randint", lambda lo, hi: (hi - 1) // 2)
    got = torch.from_numpy(setup["store"].read(range(len(SOURCES))).astype(np.float32))  # [4, Tt, Ft, D] fp16
    for j, (name, *_, start, window) in enumerate(SOURCES):
        ref = laion_grid(setup["teacher"], setup["tmp"] / "audio" / name, start, window)[0]   # [Tt, Ft, D]
        assert ref.abs().max() > 0.1
        # stored fp16: the reference rounded to fp16, within one fp16 step either way
        torch.testing.assert_close(got[j], ref.half().float(), rtol=2 ** -10, atol=2 ** -14, msg=name)
    attrs = setup["store"].attrs
    assert attrs["teacher_input"] == "source-48k" and attrs["teacher_input_counts"] == {"source-48k": 4}
    assert attrs["teacher_input_mode"] == "auto"


def test_high_band_reaches_the_teacher_only_from_the_source(setup):
    clips, teacher = setup["clips"], setup["teacher"]
    src = TeacherInputDataset(clips, teacher.sample_rate)
    low = TeacherInputDataset(clips, teacher.sample_rate, sources=False)
    for j in range(len(SOURCES)):
        _, w_src, kind, why = src[j]
        _, w_low, kind_low, _ = low[j]
        assert (kind, why, kind_low) == ("source-48k", "", FALLBACK)
        assert len(w_src) == pytest.approx(len(w_low), abs=4)          # the real clip (1.5 s stays 1.5 s)
        hi_src, hi_low = high_band_db(teacher, w_src), high_band_db(teacher, w_low)
        assert hi_src > -40 and hi_low < -60 and hi_src - hi_low > 40, (j, hi_src, hi_low)
    assert len(src[2][1]) == 72000 and clips.wave_length(2) == 24000    # 1.5 s at 48 kHz / 16 kHz
    assert f"sources under {setup['tmp'] / 'audio'}" in clips.summary()


def test_missing_source_falls_back_and_is_recorded(setup, tmp_path, monkeypatch):
    tmp, teacher = setup["tmp"], setup["teacher"]
    moved = tmp_path / "moved"
    (tmp / "audio").rename(moved)                                   # every source gone from where prepare saw it
    try:
        gone = moved / "st48k.wav"
        keep = gone.read_bytes()
        gone.unlink()                                               # and one deleted outright
        clips = ClipStore(tmp / "clips.h5")
        s = build_targets(clips, tmp_path / "t.zarr", teacher, batch_size=3, clips_per_shard=2, progress=False,
                          source_root=moved)
        store = TargetStore(tmp_path / "t.zarr")
        assert store.attrs["teacher_input"] == "mixed" and s["teacher_input"] == {"clipstore-16k-upsampled": 1,
                                                                                   "source-48k": 3}
        assert store.attrs["teacher_input_counts"] == s["teacher_input"]
        assert "teacher input mixed" in inspect_store(tmp_path / "t.zarr")
        lines = [json.loads(x) for x in (tmp_path / "t.zarr" / "progress" / "fallback-000000.jsonl").read_text().splitlines()]
        assert [(e["clip"], e["clip_id"]) for e in lines] == [(1, "clip1")] and "does not exist" in lines[0]["reason"]
        assert not (tmp_path / "t.zarr" / "progress" / "fallback-000001.jsonl").exists()
        w16 = torch.from_numpy(clips.wave(1)[: clips.wave_length(1)].astype(np.float32) / 32768)
        want = teacher.token_grid_waves([resample(w16, 16000, 48000)])[0].half().numpy()          # [Tt, Ft, D]
        np.testing.assert_allclose(store[1].astype(np.float32), want.astype(np.float32), rtol=2 ** -10, atol=2 ** -14)
        assert np.abs(store[1].astype(np.float32) - setup["store"][1].astype(np.float32)).max() > 1e-2
        np.testing.assert_array_equal(store.read([0, 2, 3]), setup["store"].read([0, 2, 3]))   # moved, same audio
        with pytest.raises(SupmamError, match="not a folder"):
            build_targets(clips, tmp_path / "u.zarr", teacher, progress=False, source_root=tmp_path / "nowhere")
        gone.write_bytes(keep)
    finally:
        moved.rename(tmp / "audio")


def test_store_without_sources_and_clipstore_mode(setup, tmp_path):
    teacher = setup["teacher"]
    clips = setup["clips"]
    old = write_clip_store(tmp_path / "old.h5", np.zeros((2, 16, 128), np.float16),
                           np.stack([clips.wave(0), clips.wave(2)]), np.array([0, 1]), ["a", "b"], clip_seconds=10.0)
    assert not old.has_sources and old.wave_length(1) == old.wave(1).shape[0]
    s = build_targets(old, tmp_path / "old.zarr", teacher, batch_size=2, progress=False)
    assert s["teacher_input"] == {FALLBACK: 2} and TargetStore(tmp_path / "old.zarr").attrs["teacher_input"] == FALLBACK
    padded = torch.from_numpy(old.wave(1).astype(np.float32) / 32768)[None]            # [1, S], zero-padded
    np.testing.assert_allclose(TargetStore(tmp_path / "old.zarr")[1].astype(np.float32),
                               teacher.token_grid(padded)[0].half().float().numpy(), rtol=2 ** -10, atol=2 ** -14)
    s = build_targets(clips, tmp_path / "cs.zarr", teacher, batch_size=4, progress=False, teacher_input="clipstore")
    assert s["teacher_input"] == {FALLBACK: 4} and not list((tmp_path / "cs.zarr" / "progress").glob("fallback*"))
    with pytest.raises(SupmamError, match="teacher-input"):
        build_targets(clips, tmp_path / "x.zarr", teacher, progress=False, teacher_input="48k")
