"""The CLAP teacher's input layout: 16 kHz waves -> laion-clap's 48 kHz, 10 s model input.

Clips are laid out as laion-clap's `training/data.py:get_audio_features` does (short clips
"repeatpad": whole repeats, then zeros), with one change: where laion-clap picks a random window
of a long clip, we pick a fixed one (non-fusion: the centre window; fusion: the middle start of
each third of the possible chunk starts), so the same wave always gives the same target.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from pipeline.audio_io import resample  # noqa: F401  (teacher.py takes it from here)


def quantize_int16(wave: torch.Tensor) -> torch.Tensor:
    """Round-trip through int16 as laion-clap's inference API does (clip to [-1, 1], x32767)."""
    return (torch.clamp(wave, -1.0, 1.0) * 32767.0).to(torch.int16).float() / 32767.0


def repeatpad(wave: torch.Tensor, max_len: int) -> torch.Tensor:
    """wave: (S,) with S <= max_len -> (max_len,): whole repeats of the clip, then zeros."""
    n_repeat = max_len // wave.shape[0]
    wave = wave.repeat(n_repeat)                                # (n_repeat * S,)
    return F.pad(wave, (0, max_len - wave.shape[0]))            # (max_len,)


def centre_window(wave: torch.Tensor, max_len: int) -> torch.Tensor:
    """wave: (S,) with S > max_len -> its centre (max_len,) window."""
    start = (wave.shape[0] - max_len) // 2
    return wave[start:start + max_len]


class FusionMel:
    """laion-clap's fusion front end (`training/data.py:get_mel`): torchaudio power mel
    (HTK scale, no filter norm), in dB without a floor; (L,) -> (frames, n_mels)."""

    def __init__(self, audio_cfg: dict):
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=audio_cfg["sample_rate"], n_fft=audio_cfg["window_size"],
            win_length=audio_cfg["window_size"], hop_length=audio_cfg["hop_size"],
            center=True, pad_mode="reflect", power=2.0, norm=None,
            n_mels=audio_cfg["mel_bins"], f_min=audio_cfg["fmin"], f_max=audio_cfg["fmax"])
        self.to_db = torchaudio.transforms.AmplitudeToDB(top_db=None)

    def to(self, device) -> "FusionMel":
        self.mel = self.mel.to(device)
        return self

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return self.to_db(self.mel(wave)).T                     # (n_mels, frames) -> (frames, n_mels)


def fusion_chunk_starts(total_frames: int, chunk_frames: int) -> list[int]:
    """The middle start of each third of the possible chunk starts (laion-clap draws them at random;
    an empty third falls back to start 0, as in laion-clap)."""
    thirds = np.array_split(np.arange(total_frames - chunk_frames + 1), 3)
    return [int(t[len(t) // 2]) if len(t) else 0 for t in thirds]


def fusion_input(wave: torch.Tensor, max_len: int, hop: int, fusion_mel: FusionMel) -> tuple[torch.Tensor, bool]:
    """One 48 kHz clip (S,) -> (mel_fusion (4, frames, n_mels), longer). Short or exact clips: the
    repeat-padded clip's mel four times, longer=False; long clips: [whole clip squeezed to one window,
    front, middle, back chunk], longer=True."""
    if wave.shape[0] <= max_len:
        mel = fusion_mel(repeatpad(wave, max_len))              # (frames, n_mels)
        return torch.stack([mel, mel, mel, mel]), False         # (4, frames, n_mels)
    mel = fusion_mel(wave)                                      # (total_frames, n_mels)
    chunk_frames = max_len // hop + 1                           # frames of one window (centre=True)
    total_frames = mel.shape[0]
    if total_frames == chunk_frames:                            # longer by less than one hop
        return torch.stack([mel, mel, mel, mel]), False
    from torchvision.transforms.functional import resize         # laion-clap's Resize, its defaults
    shrink = resize(mel[None], [chunk_frames, mel.shape[1]])[0]  # (chunk_frames, n_mels)
    chunks = [mel[s:s + chunk_frames] for s in fusion_chunk_starts(total_frames, chunk_frames)]
    return torch.stack([shrink, *chunks]), True                 # (4, chunk_frames, n_mels)


def layout_batch(waves48k: list[torch.Tensor], audio_cfg: dict, fusion_mel: FusionMel | None) -> dict:
    """48 kHz clips (each (S_i,)) -> the dict laion-clap's HTSAT.forward takes:
    waveform (B, clip_samples), longer (B, 1) bool, and mel_fusion (B, 4, frames, n_mels) if fusion
    (laion-clap's get_audio_embedding stacks each clip's (1,) `longer` into (B, 1))."""
    max_len, hop = audio_cfg["clip_samples"], audio_cfg["hop_size"]
    windows, mels, longer = [], [], []
    for wave in waves48k:
        windows.append(repeatpad(wave, max_len) if wave.shape[0] <= max_len else centre_window(wave, max_len))
        if fusion_mel is not None:
            mel, is_longer = fusion_input(wave, max_len, hop, fusion_mel)
            mels.append(mel)
            longer.append(is_longer)
        else:
            longer.append(wave.shape[0] > max_len)              # laion-clap's rand_trunc flag
    batch = {"waveform": torch.stack(windows),                  # (B, clip_samples)
             "longer": torch.tensor(longer, dtype=torch.bool, device=windows[0].device)[:, None]}  # (B, 1)
    if fusion_mel is not None:
        batch["mel_fusion"] = torch.stack(mels)                 # (B, 4, frames, n_mels)
    return batch
