"""AudioMAE's features: Kaldi log-mel fbank (128 bins, 10 ms hop), zero-padded or cut to target_length."""
from __future__ import annotations

import numpy as np
import torch
import torchaudio

# exactly the keyword arguments AudioMAE passes to torchaudio.compliance.kaldi.fbank
FBANK_PARAMS: dict = dict(htk_compat=True, sample_frequency=16000, use_energy=False,
                          window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
NUM_MEL_BINS = FBANK_PARAMS["num_mel_bins"]

# AudioMAE's normalisation constants (mean, std); the loader applies (x - mean) / (2 * std)
NORM_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "spc1": (-6.845978, 5.5654526),
    "spc2": (-6.845978, 5.5654526),
    "custom": (-4.2677393, 4.5689974),   # your own data (prepare folder): AudioSet's, what pretraining used
}


def fbank(wave: np.ndarray | torch.Tensor, target_length: int) -> torch.Tensor:
    """wave [n] float in [-1, 1] at 16 kHz (un-padded) -> log-mel [target_length, 128] float32."""
    w = torch.as_tensor(wave, dtype=torch.float32).reshape(1, -1)  # [1, n]
    fb = torchaudio.compliance.kaldi.fbank(w - w.mean(), **FBANK_PARAMS)  # [frames, 128]
    pad = target_length - fb.shape[0]
    if pad > 0:
        fb = torch.nn.functional.pad(fb, (0, 0, 0, pad))  # [target_length, 128], zero frames at the end
    return fb[:target_length]  # [target_length, 128]
