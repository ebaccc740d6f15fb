"""Teacher grid -> student patch grid: hand-checked cases, monotonicity, shapes, any device."""
import librosa
import numpy as np
import pytest
import torch

from cache_tools.grid_map import (hz_to_mel, map_targets, patch_centre_hz, patch_centre_seconds,
                                  teacher_freq_group, teacher_to_patch_index)

HTSAT = {"sr": 48000, "n_mels": 64, "fmin": 50, "fmax": 14000, "window_seconds": 10.0, "htk": False}


def test_mel_scales_match_librosa_and_kaldi():
    f = torch.tensor([0.0, 50.0, 999.0, 1000.0, 2300.0, 14000.0], dtype=torch.float64)
    assert np.allclose(hz_to_mel(f, htk=False).numpy(), librosa.hz_to_mel(f.numpy(), htk=False))
    assert np.allclose(hz_to_mel(f, htk=True).numpy(), 1127.0 * np.log(1 + f.numpy() / 700.0))
    # student patch 0 = Kaldi bins 0..15 of 128 (20..8000 Hz): centre between bin 7 and bin 8 centres
    edges = 700 * np.expm1(np.linspace(1127 * np.log1p(20 / 700), 1127 * np.log1p(8000 / 700), 130) / 1127)
    c = patch_centre_hz(8, 16, 128, 20.0, 8000.0)
    assert edges[8] < c[0] < edges[9] and edges[120] < c[7] < edges[121]


def test_frequency_groups_by_hand():
    # HTSAT 64 Slaney bins 50..14000 Hz in 2 groups: bins 0..31 low, 32..63 high.
    centres = librosa.mel_frequencies(66, fmin=50, fmax=14000, htk=False)[1:-1]  # bin b centre
    g = teacher_freq_group(torch.tensor(centres), HTSAT, 2)
    assert g.tolist() == [0] * 32 + [1] * 32
    # student patch centres: 148, 456, 874, 1444, 2221, 3279, 4720, 6683 Hz; bin 31 is centred at 2230 Hz,
    # so patches 0..4 fall in the low group and the top three (incl. the top patch, 6.7 kHz) in the high one
    groups = teacher_freq_group(patch_centre_hz(8, 16, 128, 20.0, 8000.0), HTSAT, 2)
    assert groups.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert teacher_freq_group(torch.tensor([10.0, 30000.0]), HTSAT, 2).tolist() == [0, 1]  # clamped


def test_time_rows_by_hand_ten_second_clip():
    idx = teacher_to_patch_index((32, 2), HTSAT, (64, 8), clip_seconds=10.0).view(64, 8)  # [Tp, Fp]
    rows = idx[:, 0] // 2
    # patch t centre (16t + 7.5) * 10 ms + 12.5 ms; teacher row = floor(centre / 312.5 ms)
    assert rows[0] == 0 and rows[2] == 1 and rows[20] == 10 and rows[63] == 31
    assert torch.equal(idx % 2, torch.tensor([0, 0, 0, 0, 0, 1, 1, 1]).expand(64, 8))
    expect = np.floor(((16 * np.arange(64) + 7.5) * 0.01 + 0.0125) / 0.3125).clip(0, 31)
    assert np.array_equal(rows.numpy(), expect)


def test_monotone_in_time_and_frequency():
    for tp, clip in ((64, 10.0), (32, 5.0), (8, 1.0)):
        idx = teacher_to_patch_index((32, 2), HTSAT, (tp, 8), clip_seconds=clip).view(tp, 8)
        rows, groups = idx // 2, idx % 2
        inside = patch_centre_seconds(tp) < clip  # patches on the clip, not fbank padding past it
        assert torch.all(rows[inside][1:, 0] >= rows[inside][:-1, 0])
        assert torch.all(groups[:, 1:] >= groups[:, :-1])


def test_short_clip_padding_follows_repeatpad():
    # 1 s clip: laion-clap repeats it 10 times (no silent tail), so the padded student patch
    # patches t=6, 7 (centres 1.0475 s, 1.2075 s) see the teacher at 0.0475 s and 0.2075 s: row 0
    idx = teacher_to_patch_index((32, 2), HTSAT, (8, 8), clip_seconds=1.0).view(8, 8)
    assert (idx[:, 0] // 2).tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
    # 3 s clip repeated 3 times then 1 s of zeros: padding patches map to the silent tail (9.5 s, row 30)
    idx = teacher_to_patch_index((32, 2), HTSAT, (20, 8), clip_seconds=3.0).view(20, 8)
    assert (idx[-1, 0] // 2).item() == 30 and (idx[0, 0] // 2).item() == 0
    # 20 s clip: the teacher saw the centre 10 s, so the student's 5 s mark is teacher row 0
    idx = teacher_to_patch_index((32, 2), HTSAT, (125, 8), clip_seconds=20.0).view(125, 8)
    assert (idx[31, 0] // 2).item() == 0 and (idx[60, 0] // 2).item() > 0


@pytest.mark.parametrize("t", [1024, 512, 128])
def test_shapes_and_gather(t):
    tp = t // 16
    idx = teacher_to_patch_index((32, 2), HTSAT, (tp, 8), clip_seconds=t / 100)
    assert idx.shape == (tp * 8,) and idx.dtype == torch.long and idx.min() >= 0 and idx.max() < 64
    x = torch.randn(3, 32, 2, 5)  # [B, Tt, Ft, D]
    y = map_targets(x, idx)
    assert y.shape == (3, tp * 8, 5)
    n = 5 * 8 + 6  # student token t=5, f=6 -> teacher (row, group) of idx[n]
    r, g = divmod(int(idx[n]), 2)
    assert torch.equal(y[:, n], x[:, r, g])


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="mel bins"):
        teacher_to_patch_index((32, 2), HTSAT, (64, 7))
    with pytest.raises(ValueError, match="frequency groups"):
        teacher_to_patch_index((32, 3), HTSAT, (64, 8))


def test_runs_on_any_device():
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        idx = teacher_to_patch_index((32, 2), HTSAT, (64, 8), device=dev)
        x = torch.randn(2, 32, 2, 4, device=dev)
        assert idx.device.type == dev and map_targets(x, idx).device.type == dev
    # index built on the cpu, targets on another device: map_targets moves the index there
    x = torch.empty(2, 32, 2, 4, device="meta")
    y = map_targets(x, teacher_to_patch_index((32, 2), HTSAT, (64, 8)))
    assert y.shape == (2, 512, 4) and y.device.type == "meta"


def test_bilinear_weights_by_hand():
    """Bilinear alignment: the four teacher cells around the patch centre, weights by distance to their centres."""
    from cache_tools.grid_map import teacher_to_patch_weights
    idx, w = teacher_to_patch_weights((32, 2), HTSAT, (64, 8), clip_seconds=10.0)
    assert idx.shape == w.shape == (512, 4) and torch.allclose(w.sum(1), torch.ones(512))
    # patch t=20 centres at (16*20 + 7.5) * 10 ms + 12.5 ms = 3.2875 s; teacher rows are 0.3125 s wide,
    # centred at (r + 0.5) * 0.3125: position 10.52 rows -> rows 10 and 11, weights 0.98 / 0.02 along time
    n = 20 * 8 + 0                                       # frequency patch 0: below group 0's centre (weight 1)
    by_row: dict[int, float] = {}
    for r, wt in zip((idx[n] // 2).tolist(), w[n].tolist()):
        by_row[r] = by_row.get(r, 0.0) + wt
    assert by_row[10] == pytest.approx(0.98) and by_row[11] == pytest.approx(0.02)
    assert w[n][(idx[n] % 2) == 1].sum() == 0
    # on constant-in-time targets bilinear equals nearest; on a ramp it is the ramp at the patch centre
    ramp = torch.arange(32, dtype=torch.float32)[None, :, None, None].expand(1, 32, 2, 1) + 0.5   # row centres
    y = map_targets(ramp, idx, w)[0, :, 0].view(64, 8)
    c = patch_centre_seconds(64) / 0.3125
    inside = (c > 0.5) & (c < 31.5)
    assert torch.allclose(y[inside, 0].double(), c[inside], atol=1e-5)
    near = map_targets(ramp, teacher_to_patch_index((32, 2), HTSAT, (64, 8), clip_seconds=10.0))[0, :, 0]
    assert not torch.equal(near.view(64, 8)[:, 0], y[:, 0])


def test_padding_valid_marks_patches_past_the_real_clip():
    from cache_tools.grid_map import padding_valid
    v = padding_valid(torch.tensor([10.0, 1.0, 0.2]), 64)       # [3, 64]
    c = patch_centre_seconds(64)
    assert v.shape == (3, 64) and v[0].sum() == 62 and not v[0, 62:].any()   # 1024 frames = 10.24 s > 10 s
    assert v[1].sum() == int((c < 1.0).sum()) == 6 and v[1, :6].all() and not v[1, 6:].any()
    assert v[2].sum() == 1                                       # one patch centre (0.0875 s) inside 0.2 s
