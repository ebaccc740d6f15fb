"""AudioMAE's features: the definition a clip store's `fbank` follows, shared by both stages.

Kaldi log-mel (`torchaudio.compliance.kaldi.fbank`, 128 bins, 25 ms Hanning window, 10 ms hop) of
the mean-removed 16 kHz wave, zero-padded or cut to `target_length` frames. It lives here because
stage one writes it into the clip store and fine-tuning's waveform augmentation (mixup, roll, crop)
recomputes it from the stored wave: both must call the same function. A gain alone needs no
recomputation (`gain_fbank`).
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio

# exactly the keyword arguments AudioMAE passes to torchaudio.compliance.kaldi.fbank
FBANK_PARAMS: dict = dict(htk_compat=True, sample_frequency=16000, use_energy=False,
                          window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
NUM_MEL_BINS = FBANK_PARAMS["num_mel_bins"]
WINDOW = 400                 # samples in one frame: Kaldi's default frame_length of 25 ms at 16 kHz
HOP = 160                    # samples between frames: frame_shift 10 ms at 16 kHz


def fbank(wave: np.ndarray | torch.Tensor, target_length: int) -> torch.Tensor:
    """wave [n] float in [-1, 1] at 16 kHz (un-padded) -> log-mel [target_length, 128] float32."""
    w = torch.as_tensor(wave, dtype=torch.float32).reshape(1, -1)  # [1, n]
    fb = torchaudio.compliance.kaldi.fbank(w - w.mean(), **FBANK_PARAMS)  # [frames, 128]
    pad = target_length - fb.shape[0]
    if pad > 0:
        fb = torch.nn.functional.pad(fb, (0, 0, 0, pad))  # [target_length, 128], zero frames at the end
    return fb[:target_length]  # [target_length, 128]


def clip_samples(stored_fbank: np.ndarray, stored_wave: np.ndarray) -> int:
    """The length, in samples, of the clip behind a stored (fbank [T, 128], wave [S]) pair, for stores
    without `wave_length`. Padding frames are all zeros and a computed frame never is (log energies sit
    at or above log(eps)), so the frame count bounds the length; the smallest length that also holds
    the last non-zero sample drops only trailing digital silence shorter than one hop."""
    fb = np.asarray(stored_fbank)
    wave = np.asarray(stored_wave)
    computed = np.flatnonzero(np.any(fb != 0, axis=1))                   # frames with values
    frames = int(computed[-1]) + 1 if len(computed) else 0
    voiced = np.flatnonzero(wave)
    last = int(voiced[-1]) + 1 if len(voiced) else 0
    shortest = WINDOW + HOP * (frames - 1) if frames else 0
    return min(len(wave), max(last, shortest))


LOG_FLOOR = float(np.log(np.finfo(np.float32).eps))   # Kaldi fbank's log(max(energy, eps))


def gain_fbank(fb: torch.Tensor, g: float) -> torch.Tensor:
    """The stored Kaldi log-mel [T, F] of a wave -> that of g * wave: mel energies scale by g^2, so the
    computed frames shift by 2 ln g and stay at or above the log floor; padding frames stay 0. [T, F]"""
    frames = fb.ne(0).any(1, keepdim=True)                            # [T, 1] computed (not padded) frames
    floor = fb <= LOG_FLOOR + 1e-2                                    # [T, F] bins at the floor (fp16)
    return torch.where(frames & ~floor, (fb + 2 * np.log(g)).clamp_min(LOG_FLOOR), fb)
