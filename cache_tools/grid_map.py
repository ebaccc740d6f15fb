"""Map the teacher's token grid (Tt time x Ft frequency) onto the student's patch grid (Tp x Fp).

Each student patch takes the teacher cell that heard the same sound: in time, the patch centre
(Kaldi frames: 10 ms hop, 25 ms window) placed in the teacher's window as laion-clap's repeatpad
filled it (teacher_time); in frequency, the patch's centre frequency placed in the teacher's mel
bank split into Ft groups, low to high. Flat indices are time-major on both sides (teacher r*Ft + g,
student t*Fp + f). The index is built once per geometry, so `map_targets` is one gather on any
device; "bilinear" alignment weights the four cells around the centre instead of taking the nearest.
"""
from __future__ import annotations

import math

import torch


def hz_to_mel(f: torch.Tensor, htk: bool) -> torch.Tensor:
    """HTK: 1127 ln(1 + f/700) (Kaldi's scale). Slaney (librosa htk=False): linear below 1 kHz, log above."""
    if htk:
        return 1127.0 * torch.log1p(f / 700.0)
    step, logstep = 200.0 / 3, math.log(6.4) / 27.0
    return torch.where(f < 1000.0, f / step, 1000.0 / step + torch.log(f.clamp_min(1e-9) / 1000.0) / logstep)


def mel_to_hz(m: torch.Tensor, htk: bool) -> torch.Tensor:
    if htk:
        return 700.0 * torch.expm1(m / 1127.0)
    step, logstep = 200.0 / 3, math.log(6.4) / 27.0
    return torch.where(m < 1000.0 / step, m * step, 1000.0 * torch.exp(logstep * (m - 1000.0 / step)))


def patch_centre_hz(fp: int, patch: int, n_mels: int, fmin: float, fmax: float, htk: bool = True,
                    device=None) -> torch.Tensor:
    """[Fp] centre frequency (Hz) of each student frequency patch (mean of its bins' centre mels)."""
    lo, hi = hz_to_mel(torch.tensor([fmin, fmax], dtype=torch.float64, device=device), htk)
    dm = (hi - lo) / (n_mels + 1)
    bins = torch.arange(fp, dtype=torch.float64, device=device) * patch + (patch - 1) / 2  # [Fp] centre bin
    return mel_to_hz(lo + (bins + 1) * dm, htk)


def teacher_freq_group(freq_hz: torch.Tensor, teacher_mel: dict, ft: int) -> torch.LongTensor:
    """Teacher frequency group (0 = lowest) whose mel bins hold each frequency."""
    return torch.floor(_freq_position(freq_hz, teacher_mel, ft)).long().clamp(0, ft - 1)


def patch_centre_seconds(tp: int, patch: int = 16, frame_shift_s: float = 0.01, frame_length_s: float = 0.025,
                         device=None) -> torch.Tensor:
    """[Tp] centre time (s) of each student time patch."""
    t = torch.arange(tp, dtype=torch.float64, device=device)
    return (t * patch + (patch - 1) / 2) * frame_shift_s + frame_length_s / 2


def teacher_time(c: torch.Tensor, tt: int, window_s: float, clip_s: float | None) -> torch.Tensor:
    """Where in the teacher's window (seconds) student times c [Tp] fall, following laion-clap's
    repeat-pad of an L = clip_s second clip into its W = window_s second window (None: L = W)."""
    w = float(window_s)
    clip = w if clip_s is None else float(clip_s)
    step = w / tt
    if clip > w:                # the teacher saw the centre window [(L-W)/2, (L+W)/2) (teacher_input)
        c = c - (clip - w) / 2  # centre window
    elif clip < w:
        # c < L: the same sound, first repetition. c >= L is fbank padding (silence past the clip): the
        # middle of the teacher's silent tail if that spans a row (silence to silence), else time c mod L,
        # where the same stretch of the zero-padded clip was.
        tail = w - math.floor(w / clip) * clip  # zeros after the last repetition
        pad_time = torch.full_like(c, w - tail / 2) if tail >= step else torch.remainder(c, clip)
        c = torch.where(c < clip, c, pad_time)
    return c


def teacher_time_row(c: torch.Tensor, tt: int, window_s: float, clip_s: float | None) -> torch.LongTensor:
    """Teacher time row for student times c [Tp] (seconds); outside the window: its first / last row."""
    return torch.floor(teacher_time(c, tt, window_s, clip_s) / (float(window_s) / tt)).long().clamp(0, tt - 1)


def _freq_position(freq_hz: torch.Tensor, teacher_mel: dict, ft: int) -> torch.Tensor:
    """Fractional teacher frequency group of each frequency: group g spans [g, g + 1)."""
    htk = bool(teacher_mel.get("htk", False))
    n = int(teacher_mel["n_mels"])
    f = freq_hz.to(torch.float64)
    lo, hi = hz_to_mel(torch.tensor([float(teacher_mel["fmin"]), float(teacher_mel["fmax"])],
                                    dtype=torch.float64, device=f.device), htk)
    pos = (hz_to_mel(f, htk) - lo) / ((hi - lo) / (n + 1)) - 1  # fractional bin index; bin b spans b +- 0.5
    return (pos + 0.5) / (n / ft)


def teacher_to_patch_index(teacher_grid, teacher_mel: dict, patch_grid, frame_shift_s: float = 0.01,
                           patch: int = 16, n_mels: int = 128, fmin: float = 20.0, fmax: float = 8000.0,
                           clip_seconds: float | None = None, frame_length_s: float = 0.025,
                           device=None) -> torch.LongTensor:
    """[Tp*Fp] flat time-major index into the teacher's Tt*Ft tokens, one per student patch.

    teacher_grid: (Tt, Ft); teacher_mel: the store's `teacher_mel` attrs (sr, n_mels, fmin, fmax,
    window_seconds, htk); patch_grid: (Tp, Fp) with Fp*patch == n_mels; clip_seconds: length of
    the clips the teacher saw (None: they fill its window)."""
    tt, ft = (int(v) for v in teacher_grid)
    tp, fp = (int(v) for v in patch_grid)
    if fp * patch != n_mels:
        raise ValueError(f"patch grid {patch_grid} with patch {patch} does not cover {n_mels} mel bins")
    if int(teacher_mel["n_mels"]) % ft:
        raise ValueError(f"teacher n_mels {teacher_mel['n_mels']} does not split into {ft} frequency groups")
    c = patch_centre_seconds(tp, patch, frame_shift_s, frame_length_s, device)  # [Tp]
    rows = teacher_time_row(c, tt, float(teacher_mel.get("window_seconds", 10.0)), clip_seconds)  # [Tp]
    groups = teacher_freq_group(patch_centre_hz(fp, patch, n_mels, fmin, fmax, True, device), teacher_mel, ft)  # [Fp]
    return (rows[:, None] * ft + groups[None, :]).reshape(-1)  # [Tp, Fp] -> [Tp*Fp], token n = t*Fp + f


def _linear_pair(pos: torch.Tensor, size: int) -> tuple[torch.LongTensor, torch.Tensor]:
    """Cells (cell k centred at k + 0.5) either side of fractional positions pos [M]: ([M,2], weights [M,2])."""
    x = (pos - 0.5).clamp(0, size - 1)
    lo = torch.floor(x).long().clamp(0, max(size - 2, 0))
    frac = (x - lo).clamp(0, 1)
    cells = torch.stack([lo, (lo + 1).clamp(max=size - 1)], dim=1)  # [M,2]
    return cells, torch.stack([1 - frac, frac], dim=1)               # [M,2]


def teacher_to_patch_weights(teacher_grid, teacher_mel: dict, patch_grid, frame_shift_s: float = 0.01,
                             patch: int = 16, n_mels: int = 128, fmin: float = 20.0, fmax: float = 8000.0,
                             clip_seconds: float | None = None, frame_length_s: float = 0.025,
                             device=None) -> tuple[torch.LongTensor, torch.Tensor]:
    """Bilinear alignment: ([Tp*Fp, 4] teacher tokens, [Tp*Fp, 4] float32 weights summing to 1), the
    four teacher cells around each patch centre (same geometry as teacher_to_patch_index)."""
    tt, ft = (int(v) for v in teacher_grid)
    tp, fp = (int(v) for v in patch_grid)
    teacher_to_patch_index(teacher_grid, teacher_mel, patch_grid, frame_shift_s, patch, n_mels, fmin, fmax,
                           clip_seconds, frame_length_s, device)                     # the same checks
    w = float(teacher_mel.get("window_seconds", 10.0))
    c = teacher_time(patch_centre_seconds(tp, patch, frame_shift_s, frame_length_s, device), tt, w, clip_seconds)
    rows, wr = _linear_pair(c / (w / tt), tt)                                                   # [Tp,2]
    groups, wg = _linear_pair(_freq_position(patch_centre_hz(fp, patch, n_mels, fmin, fmax, True, device),
                                             teacher_mel, ft), ft)                              # [Fp,2]
    idx = rows[:, None, :, None] * ft + groups[None, :, None, :]                                # [Tp,Fp,2,2]
    wt = wr[:, None, :, None] * wg[None, :, None, :]                                            # [Tp,Fp,2,2]
    return idx.reshape(tp * fp, 4), wt.reshape(tp * fp, 4).float()


def padding_valid(clip_seconds: torch.Tensor, tp: int, patch: int = 16, frame_shift_s: float = 0.01,
                  frame_length_s: float = 0.025) -> torch.Tensor:
    """[B, Tp] float: 1 where a time patch's centre lies inside the clip's real audio (clip_seconds [B]),
    0 on the fbank padding past it (whose targets would be tokens of repeated audio or silence)."""
    c = patch_centre_seconds(tp, patch, frame_shift_s, frame_length_s, clip_seconds.device)   # [Tp]
    return (c[None, :] < clip_seconds.to(torch.float64)[:, None]).float()


def map_targets(targets: torch.Tensor, index: torch.LongTensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """targets [B, Tt, Ft, D], index [Tp*Fp] (nearest) or [Tp*Fp, K] with weight [Tp*Fp, K] (bilinear: K = 4)
    -> [B, Tp*Fp, D] (a gather along the token axis, then the weighted sum of the K cells)."""
    b, tt, ft, d = targets.shape
    flat = targets.reshape(b, tt * ft, d)  # [B, Tt*Ft, D], token r*Ft + g
    index = index.to(flat.device)
    if weight is None:
        return flat.index_select(1, index)  # [B, Tp*Fp, D]
    n, k = index.shape
    cells = flat.index_select(1, index.reshape(-1)).reshape(b, n, k, d)   # [B, N, K, D]
    return (cells.float() * weight.to(flat.device)[None, :, :, None]).sum(2)   # [B, N, D] float32
