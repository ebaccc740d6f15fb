"""Fine-tuning's training-clip augmentation against AudioMAE's dataset.py: waveform mixup, gain (roll),
SpecAugment widths that fit the axis, noise, SPC-1 silence crops and class balance; determinism."""
import numpy as np
import pytest
import torch
import torchaudio
from torch.utils.data import DataLoader, SequentialSampler

from cache_tools.clips.store import ClipStore
from cache_tools.fbank import clip_samples
from tests.stores import SR, class_store, spc_stores, wave_clips, wave_store
from train.finetune import data as fd
from train.finetune.augment import Augment, SeededSampler, TrainClips, spec_augment
from train.finetune.config import load_finetune_config
from train.finetune.run import run_finetune
from cache_tools.errors import ConfigError

T = 128
KALDI = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
             num_mel_bins=128, dither=0.0, frame_shift=10)          # AudioMAE dataset.py's call, spelled out


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per test


@pytest.fixture
def clips(tmp_path):
    """12 clips, one class each (a mixed label names both clips and lambda), some shorter than 1 s."""
    waves = wave_clips(12, seed=0)
    store = wave_store(tmp_path / "w.h5", waves, np.arange(12), [f"c{i}" for i in range(12)], T, SR)
    return store, waves


def reference_fbank(w: np.ndarray) -> torch.Tensor:
    """AudioMAE's _wav2fbank tail, written out here: Kaldi fbank of a float wave, zero-padded to T. [T, 128]"""
    fb = torchaudio.compliance.kaldi.fbank(torch.as_tensor(w, dtype=torch.float32)[None], **KALDI)
    return torch.nn.functional.pad(fb, (0, 0, 0, T - fb.shape[0]))[:T]


def raw(x: torch.Tensor, store: ClipStore) -> torch.Tensor:
    """Undo the normalisation: [1, T, F] -> raw log-mel [T, F]."""
    return x[0] * 2 * store.norm_std + store.norm_mean


def test_clip_length_is_recorded_or_recovered_from_the_padded_store(clips, tmp_path):
    store, waves = clips
    assert any(len(w) < SR for w in waves)
    for i, w in enumerate(waves):
        assert clip_samples(store.fbank(i), store.wave(i)) == len(w)
    silent_tail = np.concatenate([waves[0][:9000], np.zeros(100, np.int16)])        # digital silence at the end
    from cache_tools.fbank import fbank
    fb = fbank(silent_tail / 32768.0, T).numpy().astype(np.float16)
    n = clip_samples(fb, np.pad(silent_tail, (0, 2000)))
    assert len(silent_tail) - 160 < n <= len(silent_tail)                            # drops < one hop of zeros
    assert torch.allclose(fbank(silent_tail[:n] / 32768.0, T), fbank(silent_tail / 32768.0, T), atol=1e-3)
    both = [silent_tail, waves[1]]                                   # a store that records the lengths uses them
    for record, first in ((True, len(silent_tail)), (False, n)):
        s = wave_store(tmp_path / f"r{record}.h5", both, np.arange(2), ["a", "b"], T, SR, record_lengths=record)
        assert s.has_sources == record
        assert [len(TrainClips([s], aug=Augment(roll_mag_aug=True)).wave(k)) for k in (0, 1)] == [first, len(waves[1])]


def test_mixed_clip_fbank_is_the_kaldi_fbank_of_the_mixed_wave(clips):
    store, waves = clips
    ds = TrainClips([store], aug=Augment(mixup=1.0))
    seen_partners, checked = set(), 0
    for k in range(12):
        for seed in range(6):
            x, y = ds[(k, 1000 * k + seed)]
            assert y.shape == (12,) and torch.isclose(y.sum(), torch.tensor(1.0))
            others = [c for c in torch.nonzero(y > 1e-6).flatten().tolist() if c != k]
            if not others:                                               # its own partner: itself, unchanged
                assert torch.allclose(raw(x, store), torch.from_numpy(store.fbank(k).astype(np.float32)), atol=2e-2)
                continue
            (j,) = others
            seen_partners.add(j)
            lam = float(y[k])
            w1 = waves[k] / 32768.0
            w2 = waves[j] / 32768.0
            w1, w2 = w1 - w1.mean(), w2 - w2.mean()
            w2 = np.pad(w2, (0, max(0, len(w1) - len(w2))))[:len(w1)]    # partner padded or cut to the first
            mix = lam * w1 + (1 - lam) * w2
            ref = reference_fbank(mix - mix.mean())
            assert torch.allclose(raw(x, store), ref, atol=2e-3), (k, j, lam)
            checked += 1
    assert checked > 40 and len(seen_partners) == 12                    # partners: every clip of the set
    lams = [float(ds[(0, s)][1][0]) for s in range(300)]
    lams = [v for v in lams if v < 1]
    assert 0.45 < np.mean(lams) < 0.55 and 0.08 < np.std(lams) < 0.14   # Beta(10, 10): mean .5, std .109


def test_partners_come_from_outside_the_batch_and_items_are_deterministic(clips):
    store, _ = clips
    ds = TrainClips([store], aug=Augment(mixup=1.0, freqm=24, timem=24, noise=True))
    assert torch.equal(ds[(3, 7)][0], ds[(3, 7)][0]) and not torch.equal(ds[(3, 7)][0], ds[(3, 8)][0])
    batches = {}
    for workers in (0, 2):
        sampler = SeededSampler(SequentialSampler(range(4)), seed=5)     # one batch: clips 0..3
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
        batches[workers] = next(iter(loader))
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))   # any worker count, same items
    partners = set()
    for epoch in range(20):
        sampler = SeededSampler(SequentialSampler(range(4)), seed=5)
        sampler.set_epoch(epoch)
        for x, y in DataLoader(ds, batch_size=4, sampler=sampler):
            partners |= {c for row in y for c in torch.nonzero(row > 1e-6).flatten().tolist()}
    assert partners - {0, 1, 2, 3}                                       # partners from the whole training set


def test_roll_mag_aug_is_a_gain_and_the_roll_an_option(clips):
    store, waves = clips
    gains = []
    ds = TrainClips([store], aug=Augment(roll_mag_aug=True))
    stored = torch.from_numpy(store.fbank(0).astype(np.float32))        # [T, 128]
    frames = 1 + (len(waves[0]) - 400) // 160
    above_floor = stored[:frames] > np.log(np.finfo(np.float32).eps) + 1   # Kaldi's log floor does not scale
    assert above_floor.float().mean() > 0.95
    w = waves[0] / 32768.0
    for seed in range(200):
        x = raw(ds[(0, seed)][0], store)
        diff = (x[:frames] - stored[:frames])[above_floor]                 # log-mel of a scaled wave: + 2 ln g
        assert diff.max() - diff.min() < 2e-2
        gains.append(float(torch.exp(diff.mean() / 2)))
        if seed < 5:                                                      # = AudioMAE's fbank of g * (w - mean)
            assert torch.allclose(x, reference_fbank(gains[-1] * (w - w.mean())), atol=2e-2)
    assert torch.equal(raw(ds[(0, 9)][0], store)[frames:], stored[frames:])   # padding frames stay 0
    assert 0.5 < min(gains) and max(gains) < 1.5 and 0.97 < np.mean(gains) < 1.03 and np.std(gains) > 0.07
    rolled = TrainClips([store], aug=Augment(roll_mag_aug=True, wave_roll=True))
    diff = (raw(rolled[(0, 1)][0], store)[:frames] - stored[:frames])[above_floor]
    assert diff.max() - diff.min() > 0.5                                 # a roll moves the content in time


def test_no_spc_training_clip_is_fully_masked():
    cfg = load_finetune_config("spc2", ["init=none"])
    assert (cfg.freqm, cfg.timem) == (48, 48) == tuple(load_finetune_config("spc1", ["init=none"]).__dict__[k]
                                                      for k in ("freqm", "timem"))
    torch.manual_seed(0)
    x = torch.ones(T, 128)
    masked_t, masked_f = np.zeros(10_000, int), np.zeros(10_000, int)
    for n in range(10_000):
        zero = spec_augment(x, cfg.freqm, cfg.timem) == 0                # the training set's own function
        assert not zero.all(), f"draw {n} masked the whole clip"
        masked_t[n], masked_f[n] = zero.all(1).sum(), zero.all(0).sum()  # whole frames / whole mel bins
    assert masked_t.max() < cfg.timem and masked_f.max() < cfg.freqm and masked_t.mean() > 15
    torch.manual_seed(0)                                                 # torchaudio's own transforms agree
    a = torchaudio.transforms.TimeMasking(48)(torchaudio.transforms.FrequencyMasking(48)(x.T[None]))[0].T
    torch.manual_seed(0)
    assert torch.equal(a, spec_augment(x, 48, 48))
    torch.manual_seed(0)                                                 # the old preset: 192 frames on 128
    blank = sum(bool((spec_augment(x, 0, 192) == 0).all()) for _ in range(300))
    assert blank > 60


def test_masks_wider_than_their_axis_are_refused_for_every_task(tmp_path):
    names, rng = ["a", "b", "c"], np.random.default_rng(0)
    for n in ("audioset_balanced_train.h5", "audioset_unbalanced_train.h5", "audioset_eval.h5"):
        lab = (rng.random((6, 3)) < 0.5).astype(np.uint8)
        lab[np.arange(6), np.arange(6) % 3] = 1
        class_store(tmp_path / n, lab, names, dataset="audioset")
    class_store(tmp_path / "esc50.h5", np.arange(10) % 2, ["dog", "rain"], folds=np.repeat(np.arange(1, 6), 2),
                dataset="esc50")
    spc_stores(tmp_path, "spc1", 12, per_class=(1, 1, 1))
    spc_stores(tmp_path, "spc2", 3, per_class=(1, 1, 1))
    for task in ("as2m", "as20k", "esc50", "spc1", "spc2"):
        base = [f"stores={tmp_path}", f"run_dir={tmp_path / 'runs'}", "init=none", "num_workers=0"]
        with pytest.raises(ConfigError, match=r"timem=65 is wider than the 64 frames") as e:
            run_finetune(load_finetune_config(f"{task}-mini", base + ["timem=65"], task=task))
        assert str(tmp_path) in str(e.value)
        with pytest.raises(ConfigError, match=r"freqm=129 is wider than the 128 mel bins"):
            run_finetune(load_finetune_config(f"{task}-mini", base + ["freqm=129"], task=task))


def test_noise_adds_at_most_a_tenth_then_rolls_time(clips):
    store, _ = clips
    plain = TrainClips([store])[0][0][0]                                 # [T, F]
    shifts = set()
    for seed in range(30):
        x = TrainClips([store], aug=Augment(noise=True))[(0, seed)][0][0]
        fits = [s for s in range(-10, 10)
                if ((d := torch.roll(x, -s, 0) - plain) >= 0).all() and (d < 0.1).all()]
        assert len(fits) >= 1
        shifts.add(fits[0])
    assert len(shifts) > 5


def test_spc1_silence_crops_and_class_balance(tmp_path):
    rng = np.random.default_rng(1)
    recording = (rng.normal(0, 0.1, 4 * SR) * 32767).astype(np.int16)   # one background-noise file, 4 s
    windows = [recording[k * SR:(k + 1) * SR] for k in (0, 1, 3)]       # window 2 went to valid
    words = wave_clips(3, seed=2)
    ids = [f"_silence_/white_noise_{k:04d}" for k in (0, 1, 3)] + [f"yes/a_nohash_{i}" for i in range(3)]
    store = wave_store(tmp_path / "spc1_train.h5", windows + words, np.array([11, 11, 11, 0, 0, 0]),
                       [f"c{i}" for i in range(12)], T, SR, ids=ids, dataset="spc1")
    ds = TrainClips([store], aug=Augment(silence_crops=True))
    assert ds.neighbours == {0: (0, 1), 1: (0, 1)}                       # window 3 has no training neighbour
    starts = set()
    for seed in range(40):
        cropped = ds._silence_crop(0, store.wave(0))                     # int16 [S]
        start = int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(recording[:2 * SR], 8)
                                    == cropped[:8]).all(1))[0])
        assert np.array_equal(cropped, recording[start:start + SR])      # a contiguous 1 s of the recording
        starts.add(start)
    assert len(starts) > 30 and ds.wave(0).shape == (SR,) and ds[(0, 5)][0].shape == (1, T, 128)
    assert torch.equal(ds[(3, 0)][0], TrainClips([store])[3][0])        # words keep their stored fbank
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    counts = np.zeros(3)
    for epoch in range(10):
        s = fd.WeightedEpochSampler(fd.class_balance_weights(labels), 300, replacement=True, seed=0)
        s.set_epoch(epoch)
        counts += np.bincount(labels[list(s)], minlength=3)
    assert np.allclose(counts / counts.sum(), 1 / 3, atol=0.03)          # each class drawn equally often
