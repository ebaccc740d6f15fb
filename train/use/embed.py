"""Embeddings from a trained encoder for any waveform: `load_pretrained(path).embed(wave, sr)`.

Public API
----------
load_pretrained(path, device="cpu", norm=None) -> PretrainedEncoder   (eval mode)
    path: our pretrain / finetune checkpoint.pt, AudioMAE's pretrained.pth / finetuned.pth (both read
    with torch.load(weights_only=True), train.model.checkpoint), or a folder written by `supmam export`
    (model.safetensors + config.json, train.use.export). norm=(mean, std) overrides the stored statistics.
PretrainedEncoder.embed(wave, sr, layer=-1, hop=None, max_batch=8) -> Embeddings
    wave: [n] one mono clip, [B, n] a batch of mono clips, or [B, C, n] (channels are averaged);
    numpy or torch, float in [-1, 1] or integer PCM (int16 / int32 / uint8 / int8, scaled by its full
    scale; other integer types are refused), any whole rate `sr` in 1000..384000 Hz (resampled to 16 kHz:
    pipeline.audio_io.resample). An empty batch, sr <= 0, max_batch < 1: ConfigError saying so.
    patches=False: Embeddings.patches is None (memory for frames [B, T', D] only).
Embeddings: clip [B, D], frames [B, T', D], timestamps [T'] (float64 seconds), patches [B, T', F', D],
    plus layer, hop (seconds) and window (seconds) as used. Windows are encoded max_batch at a time and
    only the columns each owns are kept: memory follows the output, not the windows times their tokens.
ConfigError: a user-facing problem (bad input, unknown layer); CheckpointError:
    a file that cannot be read as an encoder. Messages read `<file>: <why>`.

What the numbers are
--------------------
Features: AudioMAE's Kaldi fbank (pipeline.features: 128 mel bins, 25 ms windows, 10 ms hop) of the
16 kHz mono wave, normalised as the checkpoint was trained, (x - mean) / (2 std). Statistics: ours
store them (`norm` in pretrain / finetune checkpoints, `normalization` in exported config.json);
AudioMAE's files get AudioMAE's constants for the file's `args.dataset` (AudioSet when absent); our
checkpoints written before the statistics were stored get their task's constants (pretraining:
AudioSet) with a warning. `encoder.norm_source` says which.
Layer: `layer` indexes the transformer blocks (0 = first, -1 = last); the last block's tokens pass
through the encoder's final LayerNorm when it has one (pretrained encoders do; fine-tuned ones
dropped it, as AudioMAE does). The classifier's fc_norm / head are never applied.
patches [B, T', F', D]: the chosen layer's patch tokens on the (time, frequency) patch grid (the cls
token is dropped). frames = patches averaged over frequency; clip = frames averaged over time (= the
mean of all real patch tokens, AudioMAE's global-pool input).
Timestamps: column t covers fbank frames [t p, (t + 1) p); its timestamp is the centre of the audio
those frames span, t p 10 ms + ((p - 1) 10 ms + 25 ms) / 2 (p = 16: 160 t + 87.5 ms).
Length: the encoder sees windows of its trained length L (fbank frames, e.g. 1024 = 10.24 s). A
clip of n_f frames keeps the columns at least half of whose p frames are real,
max(1, round-half-up(n_f / p)), so every timestamp lies inside the clip (a clip under half a column
keeps its one column); the other (padding) columns are dropped. Shorter clips are zero-padded to L
before normalisation, as in training. Longer clips are cut into windows starting every `hop`
seconds (rounded to whole patch columns; default L, no overlap), the last window zero-padded; each
column is taken from the window in which it lies closest to the window's centre (ties: the earlier
window), so timestamps stay on one regular grid. Clips under one 25 ms fbank window (400 samples)
are zero-padded to it.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from cache_tools.errors import CheckpointError, ConfigError
from pipeline.audio_io import MAX_RATE, MIN_RATE, resample
from pipeline.features import FBANK_PARAMS, NORM_STATS
from train.model.checkpoint import encoder_from_checkpoint, load_checkpoint
from train.distributed import resolve_device
from train.model.models_vit import AudioViT
from train.use.features import block_index, block_tokens

SAMPLE_RATE = FBANK_PARAMS["sample_frequency"]
SHIFT_S, WIN_S = FBANK_PARAMS["frame_shift"] / 1000, 0.025     # Kaldi defaults: 10 ms hop, 25 ms window
MIN_SAMPLES = round(WIN_S * SAMPLE_RATE)                        # one fbank frame
HOP_SAMPLES = round(SHIFT_S * SAMPLE_RATE)                      # between fbank frames
# AudioMAE's `args.dataset` -> our NORM_STATS key (AudioMAE's main_finetune_as.py norm_stats)
AUDIOMAE_DATASETS = {"audioset": "audioset", "k400": "audioset", "esc50": "esc50", "speechcommands": "spc2"}
TASK_DATASETS = {"as2m": "audioset", "as20k": "audioset", "esc50": "esc50", "spc1": "spc1", "spc2": "spc2"}


@dataclass
class Embeddings:
    clip: Tensor          # [B, D]
    frames: Tensor        # [B, T', D]
    timestamps: Tensor    # [T'] float64 seconds, centre of each patch column
    patches: Tensor | None  # [B, T', F', D] (None: embed(..., patches=False))
    layer: int            # the block index used (0-based, non-negative)
    hop: float            # seconds between window starts
    window: float         # seconds of fbank frames one window holds


def column_times(n_cols: int, patch: int) -> Tensor:
    """[n_cols] float64 seconds: the centre of the audio that patch column t's fbank frames span."""
    t = torch.arange(n_cols, dtype=torch.float64)
    return t * patch * SHIFT_S + ((patch - 1) * SHIFT_S + WIN_S) / 2


def stitch_plan(n_cols: int, window_cols: int, hop_cols: int) -> tuple[int, Tensor, Tensor]:
    """(number of windows W, window index [n_cols], column inside that window [n_cols]).

    Window w covers columns [w hop, w hop + window); column g comes from the covering window whose
    centre it is closest to, the earlier window on ties. The distance is convex in w, so the best
    covering window is the floor or the ceiling of the real w whose centre is g, clipped to the
    covering ones: O(n_cols), not the [W, n_cols] table (4 GB for an hour at one column's hop)."""
    W = 1 + max(0, math.ceil((n_cols - window_cols) / hop_cols))
    g = torch.arange(n_cols, dtype=torch.int64)                               # [G]
    lo = ((g - window_cols + 1).clamp(min=0) + hop_cols - 1) // hop_cols      # [G] first covering window
    hi = (g // hop_cols).clamp(max=W - 1)                                     # [G] last covering window
    ideal = torch.floor((g.double() + 0.5 - window_cols / 2) / hop_cols).long()  # [G] floor of the real w
    cand = torch.stack([ideal, ideal + 1]).clamp(min=lo, max=hi)              # [2, G]
    dist = (g - cand * hop_cols + 0.5 - window_cols / 2).abs()                # [2, G] exact in halves
    w = torch.where(dist[1] < dist[0], cand[1], cand[0])                      # ties: the earlier one
    return W, w, g - w * hop_cols


def _stitch_plan_table(n_cols: int, window_cols: int, hop_cols: int) -> tuple[int, Tensor, Tensor]:
    """The [W, n_cols] reference stitch_plan is checked against (tests only)."""
    W = 1 + max(0, math.ceil((n_cols - window_cols) / hop_cols))
    g = torch.arange(n_cols, dtype=torch.float64)[None]                      # [1, G]
    start = (torch.arange(W, dtype=torch.float64) * hop_cols)[:, None]       # [W, 1]
    local = g - start                                                        # [W, G]
    dist = (local + 0.5 - window_cols / 2).abs()
    dist[(local < 0) | (local >= window_cols)] = math.inf
    w = dist.argmin(dim=0)                                                   # [G]
    return W, w, (g[0] - start[w, 0]).long()


class PretrainedEncoder(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, vit: AudioViT, norm_mean: float, norm_std: float, source: str, norm_source: str):
        super().__init__()
        self.vit = vit.eval()
        self.norm_mean, self.norm_std = float(norm_mean), float(norm_std)
        self.source, self.norm_source = source, norm_source

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def window_frames(self) -> int:
        return self.vit.patch_grid[0] * self.vit.patch

    def train(self, mode: bool = True) -> "PretrainedEncoder":
        return super().train(False)                 # always eval: no dropout / drop-path at inference

    def hop_columns(self, hop: float | None) -> int:
        """Seconds between window starts -> whole patch columns (at least 1, default the window)."""
        win_cols, col_s = self.vit.patch_grid[0], self.vit.patch * SHIFT_S
        if hop is None:
            return win_cols
        if isinstance(hop, bool) or not isinstance(hop, (int, float, np.integer, np.floating)) \
                or not 0 < hop <= win_cols * col_s + 1e-9:
            raise ConfigError(f"hop {hop} s: must be in (0, {win_cols * col_s:g}] s, the encoder's window")
        return max(1, min(win_cols, round(hop / col_s)))

    def waves(self, wave, sr) -> Tensor:
        """Any wave the API takes -> [B, m] float32 mono at 16 kHz (module docstring: input rules)."""
        w = as_float_wave(wave)
        if w.dim() == 1:
            w = w[None]                                                      # [1, n]
        elif w.dim() == 3:
            w = w.mean(dim=1)                                                # [B, C, n] -> [B, n]
        if w.dim() != 2 or w.shape[0] == 0 or w.shape[-1] == 0:
            raise ConfigError(f"wave of shape {tuple(w.shape)}: expected [n], [B, n] or [B, C, n] samples "
                              "with at least one clip and one sample")
        if not torch.isfinite(w).all():
            raise ConfigError("wave holds NaN or infinite samples")
        rate = check_rate(sr)
        return w if rate == SAMPLE_RATE else resample(w, rate, SAMPLE_RATE)  # [B, m]

    def fbanks(self, wave, sr: int) -> tuple[Tensor, int]:
        """Any wave -> (raw log-mel [B, n_f, 128] at 16 kHz, n_f). See the module docstring for shapes."""
        w = self.waves(wave, sr)                                             # [B, m]
        return torch.stack([fbank_chunked(x) for x in w]), fbank_frames(w.shape[-1])

    def encode(self, x: Tensor, layer: int) -> Tensor:
        """Normalised fbank windows [N, 1, L, 128] -> block `layer`'s patch tokens [N, Tp, Fp, D]."""
        h = block_tokens(self.vit, x, layer)                                 # [N, 1+Tp*Fp, D]
        Tp, Fp = x.shape[2] // self.vit.patch, x.shape[3] // self.vit.patch
        return h[:, 1:].reshape(x.shape[0], Tp, Fp, -1)                      # [N, Tp, Fp, D] time-major

    @torch.no_grad()
    def embed(self, wave, sr: int, layer: int = -1, hop: float | None = None, max_batch: int = 8,
              patches: bool = True) -> Embeddings:
        """Windows are encoded max_batch at a time and only the columns each one owns are kept, so
        memory grows with the output (patches [B, G, Fp, D], or frames [B, G, D] with patches=False),
        never with the number of windows times their tokens."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ConfigError(f"layer {layer!r}: a block index (0 = the first, -1 = the last)")
        layer = block_index(self.depth, int(layer))
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch={max_batch!r}: must be a whole number of windows, at least 1")
        hop_cols = self.hop_columns(hop)
        w = self.waves(wave, sr)                                             # [B, m]
        B, p, L, n_f = w.shape[0], self.vit.patch, self.window_frames, fbank_frames(w.shape[-1])
        win_cols, Fp, D = self.vit.patch_grid[0], self.vit.patch_grid[1], self.embed_dim
        n_cols = max(1, (n_f + p // 2) // p)                                 # columns at least half real
        W, w_of, c_of = stitch_plan(n_cols, win_cols, hop_cols)
        total = (W - 1) * hop_cols * p + L
        dev = self.vit.cls_token.device
        frames = torch.empty(B, n_cols, D, device=dev)                       # [B, G, D]
        kept = torch.empty(B, n_cols, Fp, D, device=dev) if patches else None  # [B, G, Fp, D]
        for b in range(B):
            fb = nn.functional.pad(fbank_chunked(w[b]), (0, 0, 0, total - n_f))  # [total, 128] zero frames
            fb = (fb - self.norm_mean) / (2 * self.norm_std)                 # AudioMAE's normalisation
            for i in range(0, W, max_batch):
                k = min(max_batch, W - i)
                x = torch.stack([fb[(i + j) * hop_cols * p:(i + j) * hop_cols * p + L] for j in range(k)])
                out = self.encode(x[:, None].to(dev), layer)                 # [k, Tp, Fp, D]
                a, z = torch.searchsorted(w_of, torch.tensor([i, i + k])).tolist()  # w_of is non-decreasing
                own = slice(a, z)                                            # the columns these windows own
                got = out[(w_of[own] - i).to(dev), c_of[own].to(dev)]        # [g, Fp, D]
                frames[b, own] = got.mean(dim=1)
                if kept is not None:
                    kept[b, own] = got
        return Embeddings(clip=frames.mean(dim=1), frames=frames, timestamps=column_times(n_cols, p),
                          patches=kept, layer=layer, hop=hop_cols * p * SHIFT_S, window=L * SHIFT_S)


def fbank_frames(n: int) -> int:
    """Kaldi frames of n samples at 16 kHz (snip_edges; under one window counts as one padded frame)."""
    return 1 + (max(n, MIN_SAMPLES) - MIN_SAMPLES) // HOP_SAMPLES


def fbank_chunked(x: Tensor, chunk: int = 4096) -> Tensor:
    """[m] 16 kHz -> raw log-mel [n_f, 128], `chunk` frames at a time: the same values as
    pipeline.features.fbank (frames are independent once the clip's mean is removed), with Kaldi's
    [frames, 512] FFT buffers bounded by the chunk, not the clip's duration."""
    if x.shape[-1] < MIN_SAMPLES:
        x = nn.functional.pad(x, (0, MIN_SAMPLES - x.shape[-1]))             # [400]
    n_f, x = fbank_frames(x.shape[-1]), x - x.mean()
    parts = [torchaudio.compliance.kaldi.fbank(x[a * HOP_SAMPLES:(min(a + chunk, n_f) - 1) * HOP_SAMPLES + MIN_SAMPLES][None],
                                               **FBANK_PARAMS) for a in range(0, n_f, chunk)]
    return torch.cat(parts)                                                  # [n_f, 128]


def check_rate(sr) -> int:
    """A sample rate the caller passed -> int Hz, or ConfigError (bool, fractional, <= 0, absurd)."""
    ok = isinstance(sr, (int, np.integer, float, np.floating)) and not isinstance(sr, (bool, np.bool_))
    if not ok or not math.isfinite(float(sr)) or float(sr) != int(sr) or not MIN_RATE <= int(sr) <= MAX_RATE:
        raise ConfigError(f"sr={sr!r}: the sample rate must be a whole number of Hz in {MIN_RATE}..{MAX_RATE}")
    return int(sr)


def as_float_wave(wave) -> Tensor:
    """numpy / torch / list samples -> float32 tensor in [-1, 1] on the CPU. Integer PCM is scaled by
    its type's full scale (int16 / 32768, int32 / 2^31, uint8: (x - 128) / 128, int8 / 128); other
    integer, bool or complex types are refused: their scale cannot be known."""
    if isinstance(wave, Tensor):
        w = wave.detach().cpu()
        if w.dtype in (torch.int16, torch.int32, torch.uint8, torch.int8):
            w = w.numpy()
    else:
        try:
            w = np.asarray(wave)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"wave: not an array of samples ({e})") from None
    if isinstance(w, np.ndarray):
        scale = INT_SCALE.get(w.dtype.str[1:])
        if scale is not None:
            off, full = scale
            return torch.from_numpy((w.astype(np.float32) - off) / full)
        if w.dtype.kind not in "f":
            raise ConfigError(f"wave of dtype {w.dtype}: pass float samples in [-1, 1] or int16 / int32 / "
                              "uint8 / int8 PCM")
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    if not w.is_floating_point():
        raise ConfigError(f"wave of dtype {w.dtype}: pass float samples in [-1, 1] or int16 / int32 / "
                          "uint8 / int8 PCM")
    return w.float()


INT_SCALE = {"i2": (0.0, 32768.0), "i4": (0.0, 2.0 ** 31), "u1": (128.0, 128.0), "i1": (0.0, 128.0)}


def _stat(value, what: str, where) -> float:
    """A stored normalisation number -> float, or CheckpointError naming the file and the value."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CheckpointError(f"{where}: normalisation {what} is {value!r} ({type(value).__name__}), not a number")
    return float(value)


def norm_of_checkpoint(ck: dict, path: str | Path = "checkpoint") -> tuple[float, float, str]:
    """(mean, std, where they come from) for a loaded checkpoint dict (see the module docstring).
    A `norm` entry that is there but not {mean: number, std: number} is a CheckpointError."""
    stored = ck.get("norm")
    if stored is not None:
        if not isinstance(stored, dict) or not {"mean", "std"} <= stored.keys():
            raise CheckpointError(f"{path}: `norm` is {str(stored)[:80]!r}, not {{mean, std}}")
        return _stat(stored["mean"], "mean", path), _stat(stored["std"], "std", path), "stored in the checkpoint"
    dataset = getattr(ck.get("args"), "dataset", None)
    if isinstance(dataset, str) and dataset in AUDIOMAE_DATASETS:
        return (*NORM_STATS[AUDIOMAE_DATASETS[dataset]], f"AudioMAE's {dataset} constants (the file's args.dataset)")
    kind = ck.get("kind")
    if isinstance(kind, str) and kind in ("pretrain", "finetune"):
        cfg = ck.get("config")
        task = cfg.get("task") if kind == "finetune" and isinstance(cfg, dict) else None
        key = TASK_DATASETS.get(task, "audioset") if isinstance(task, str) else "audioset"
        warnings.warn(f"checkpoint predates stored normalisation stats; using AudioMAE's {key} constants "
                      f"{NORM_STATS[key]}", stacklevel=3)
        return (*NORM_STATS[key], f"AudioMAE's {key} constants (not stored in this older checkpoint)")
    return (*NORM_STATS["audioset"], "AudioMAE's AudioSet constants (default for AudioMAE files)")


EXPORT_CHECKED = ("embed_dim", "depth", "patch", "target_length", "num_heads")   # config.json vs the weights


def _load_export_dir(path: Path) -> tuple[AudioViT, float, float, str]:
    """An export folder's encoder; config.json's values are checked for type and against the weights."""
    from train.use.export import CONFIG, read_export
    try:
        sd, cfg = read_export(path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    where, meta, norm = path / CONFIG, cfg.get("supmam"), cfg.get("normalization")
    if not isinstance(meta, dict) or not isinstance(norm, dict) or not {"mean", "std"} <= norm.keys():
        raise CheckpointError(f"{where}: `supmam` and `normalization` {{mean, std}} must be objects")
    odd = {k: meta[k] for k in EXPORT_CHECKED if k in meta and (isinstance(meta[k], bool) or not isinstance(meta[k], int))}
    if odd:
        raise CheckpointError(f"{where}: {', '.join(f'{k}={v!r}' for k, v in odd.items())}: not whole numbers")
    vit = encoder_from_checkpoint(path, {"model": sd, "model_args": {"num_heads": meta.get("num_heads")}})
    have = {"embed_dim": vit.embed_dim, "depth": len(vit.blocks), "patch": vit.patch,
            "target_length": vit.patch_grid[0] * vit.patch, "num_heads": vit.blocks[0].attn.num_heads}
    differ = [f"{k}={meta[k]} (the weights: {have[k]})" for k in EXPORT_CHECKED if k in meta and meta[k] != have[k]]
    if differ:
        raise CheckpointError(f"{where}: says {', '.join(differ)}; config.json and model.safetensors disagree")
    source = norm.get("source", "stored")
    return vit, _stat(norm["mean"], "mean", where), _stat(norm["std"], "std", where), \
        f"{source if isinstance(source, str) else 'stored'} (export config.json)"


def load_pretrained(path: str | Path, device: str | torch.device = "cpu",
                    norm: tuple[float, float] | None = None) -> PretrainedEncoder:
    """Any encoder file this project reads -> PretrainedEncoder on `device`, in eval mode."""
    path = Path(path)
    try:
        if path.is_dir():
            vit, mean, std, source = _load_export_dir(path)
        else:
            ck = load_checkpoint(path)
            vit = encoder_from_checkpoint(path, ck)
            mean, std, source = norm_of_checkpoint(ck, path)
    except CheckpointError as e:
        raise CheckpointError(str(e)) from e
    if norm is not None:
        ok = isinstance(norm, (tuple, list)) and len(norm) == 2 and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in norm)
        if not ok:
            raise ConfigError(f"norm={norm!r}: give (mean, std), two numbers")
        mean, std, source = float(norm[0]), float(norm[1]), "given by the caller"
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CheckpointError(f"{path}: normalisation stats mean={mean} std={std} are not usable")
    return PretrainedEncoder(vit, mean, std, str(path), source).to(resolve_device(str(device))).eval()


def describe(enc: PretrainedEncoder) -> dict:
    """JSON-able summary of what produced an embedding (stored beside embeddings on disk)."""
    return {"source": enc.source, "embed_dim": enc.embed_dim, "depth": enc.depth, "patch": enc.vit.patch,
            "window_frames": enc.window_frames, "norm_mean": enc.norm_mean, "norm_std": enc.norm_std,
            "norm_source": enc.norm_source, "sample_rate": SAMPLE_RATE, "fbank": json.loads(json.dumps(FBANK_PARAMS))}
