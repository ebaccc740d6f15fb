"""The CLAP teacher: laion-clap's HTSAT audio branch -> each clip's final Swin token map.

Only the audio branch is built (the text branch would download RoBERTa), and `clap_module.*` is
imported from the package folder inside a function, with HF_HUB_OFFLINE=1: `import laion_clap` would
load HuggingFace tokenizers over the network. The token grid is the input of HTSAT's `tscam_conv`
head, read with a forward pre-hook ([B, D, Ft, Tt]) and handed out as [B, Tt, Ft, D]; `grid` is
(Tt, Ft) everywhere. Its frequency mean is laion-clap's `fine_grained_embedding`, its mean `embedding`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import torch

from cache_tools.errors import CheckpointError, StoreError
from cache_tools.fingerprint import file_sha256
from cache_tools.safe_load import LAION_CLAP, safe_torch_load
from pipeline.teacher_input import FusionMel, layout_batch, quantize_int16, resample

log = logging.getLogger(__name__)

FUSION_TYPE = "aff_2d"        # what laion-clap's fusion checkpoints use (hook.py CLAP_Module)
AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
# teacher_mel of laion-clap's HTSAT-tiny / -base configs (non-fusion), for stand-in teachers (tests, benchmarks)
# that must not need laion-clap; tests/test_teacher.py checks it against the configs
HTSAT_MEL = {"sr": 48000, "n_mels": 64, "fmin": 50, "fmax": 14000, "window_seconds": 10.0, "htk": False}


def clap_package_dir() -> Path:
    """The installed laion_clap package folder (found without importing it)."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or spec.origin is None:
        raise CheckpointError("laion_clap is not installed: `pip install laion-clap==1.1.7`")
    return Path(spec.origin).parent


def import_clap_module():
    """laion-clap's `clap_module.htsat` and `clap_module.model`, without laion_clap's __init__."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if "huggingface_hub" in sys.modules:              # already imported (timm does): its flag is read at import
        import huggingface_hub.constants as hf_constants
        hf_constants.HF_HUB_OFFLINE = True
    pkg = str(clap_package_dir())
    if pkg not in sys.path:
        sys.path.insert(0, pkg)
    import clap_module.htsat as htsat
    import clap_module.model as model
    return htsat, model


def model_config(model: str) -> dict:
    """The package's `clap_module/model_configs/<model>.json` (embed_dim, audio_cfg, text_cfg)."""
    cfg_dir = clap_package_dir() / "clap_module" / "model_configs"
    path = cfg_dir / f"{model}.json"
    if not path.is_file():
        known = sorted(p.stem for p in cfg_dir.glob("HTSAT-*.json"))
        raise CheckpointError(f"{path}: no laion-clap model config for {model!r}; HTSAT configs: {known}")
    cfg = json.loads(path.read_text())
    if cfg.get("audio_cfg", {}).get("model_type") != "HTSAT":
        raise CheckpointError(f"{path}: audio model_type is {cfg.get('audio_cfg', {}).get('model_type')!r}, "
                           "the teacher supports HTSAT only")
    return cfg


def teacher_mel(audio_cfg: dict, fusion: bool) -> dict:
    """The mel bank the teacher's tokens come from, as target stores record it (`teacher_mel`);
    the grid map reads it to place each token. Fusion models use torchaudio's HTK mel
    (training/data.py get_mel); the others torchlibrosa's, i.e. librosa's Slaney mel."""
    return {"sr": audio_cfg["sample_rate"], "n_mels": audio_cfg["mel_bins"],
            "fmin": audio_cfg["fmin"], "fmax": audio_cfg["fmax"],
            "window_seconds": audio_cfg["clip_samples"] / audio_cfg["sample_rate"], "htk": bool(fusion)}


def load_audio_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An official laion-clap checkpoint ({"state_dict": sd} or a bare sd, DDP's "module." prefix
    allowed) -> the "audio_branch.*" state dict, prefixes stripped; text branch and projections ignored."""
    try:
        ckpt = safe_torch_load(path, allow=LAION_CLAP)   # weights only: numpy lr scalars allowed, no code
    except StoreError as err:
        raise CheckpointError(str(err)) from None
    sd = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state dict (or a dict with 'state_dict') of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    audio = {k.removeprefix("audio_branch."): v for k, v in sd.items() if k.startswith("audio_branch.")}
    if not audio:
        raise CheckpointError(f"{path}: no 'audio_branch.*' keys; first keys: {sorted(sd)[:5]}")
    return audio


def load_strict(net: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Load sd into net, refusing any missing, unexpected or mis-shaped key (all listed)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: audio_branch keys do not match the model (is `fusion` right?); "
                           f"missing keys ({len(missing)}): {missing}; unexpected keys ({len(unexpected)}): {unexpected}")
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatches (is `model` right?): {bad}")
    net.load_state_dict(sd, strict=True)


class ClapTeacher:
    """laion-clap HTSAT audio branch in eval mode; `token_grid` maps 16 kHz waves to [B, Tt, Ft, D]."""

    def __init__(self, net: torch.nn.Module, cfg: dict, model: str, fusion: bool, checkpoint: Path | None,
                 checkpoint_id: str, device: str | torch.device = "cpu", amp_dtype=None, quantize: bool = True):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.audio_cfg = dict(cfg["audio_cfg"])
        self.model, self.fusion = model, fusion
        self.checkpoint, self.checkpoint_id = checkpoint, checkpoint_id
        self.name = f"laion-clap {model}" + (" fusion" if fusion else "")
        self.amp_dtype = AMP_DTYPES[amp_dtype] if isinstance(amp_dtype, str) else amp_dtype
        self.quantize = quantize
        self.sample_rate = self.audio_cfg["sample_rate"]
        self.dim = net.num_features                           # embed_dim * 2^(stages-1): 768 tiny, 1024 base
        self.grid = self._derive_grid(net)                    # (Tt, Ft): (32, 2) for HTSAT
        self.mel = teacher_mel(self.audio_cfg, fusion)
        self._fusion_mel = FusionMel(self.audio_cfg).to(self.device) if fusion else None
        self._grid_out: list[torch.Tensor] = []
        net.tscam_conv.register_forward_pre_hook(lambda module, args: self._grid_out.append(args[0]))

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, model: str = "HTSAT-tiny", fusion: bool = False,
                        seed: int = 0, device: str | torch.device = "cpu", amp_dtype=None,
                        quantize: bool = True) -> "ClapTeacher":
        """Build the audio branch of `model` (HTSAT-tiny: 630k / 630k-audioset checkpoints; HTSAT-base:
        music / speech) and load `path`, or with path None seeded random weights. amp_dtype: None (fp32),
        "bf16" or "fp16" for the Swin stages (front end fp32); quantize: the int16 round trip of laion-clap's
        inference API."""
        htsat, clap_model = import_clap_module()
        cfg = model_config(model)
        audio_cfg = clap_model.CLAPAudioCfp(**cfg["audio_cfg"])
        with torch.random.fork_rng(devices=[]):               # seed construction, leave the caller's RNG alone
            torch.manual_seed(seed)
            net = htsat.create_htsat_model(audio_cfg, enable_fusion=fusion,
                                           fusion_type=FUSION_TYPE if fusion else "None")
        if path is None:
            checkpoint_id = f"untrained:seed={seed}"
            log.warning("CLAP teacher %s has random weights (%s): its targets carry no CLAP semantics",
                        model, checkpoint_id)
        else:
            path = Path(path)
            if not path.is_file():
                raise CheckpointError(f"{path}: CLAP checkpoint not found")
            load_strict(net, load_audio_state_dict(path), path)
            checkpoint_id = f"sha256:{file_sha256(path)}"
        return cls(net, cfg, model, fusion, path, checkpoint_id, device, amp_dtype, quantize)

    @staticmethod
    def _derive_grid(net) -> tuple[int, int]:
        """(Tt, Ft) of HTSAT's regrouped token map, from the model's geometry (forward_features)."""
        side = net.spec_size // 2 ** (len(net.depths) - 1)   # the spec_size x spec_size image, downsampled
        sf, st = side // net.patch_stride[0], side // net.patch_stride[1]   # final token map (SF, ST)
        c_freq_bin = sf // net.freq_ratio                      # token rows per stacked time chunk
        return st * (sf // c_freq_bin), c_freq_bin              # (Tt, Ft): chunks laid end to end in time

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def model_input(self, wave16k: torch.Tensor, sr: int = 16000) -> dict:
        """(B, S) waves at sr -> laion-clap's input dict (waveform, longer[, mel_fusion]) on device."""
        if not isinstance(wave16k, torch.Tensor) or wave16k.dim() != 2 or wave16k.shape[1] == 0:
            shape = tuple(wave16k.shape) if isinstance(wave16k, torch.Tensor) else type(wave16k).__name__
            raise ValueError(f"{self.name}: token_grid needs a (B, S) float wave tensor with S > 0, got {shape}")
        wave = self._checked(wave16k)
        wave = resample(wave, sr, self.sample_rate)           # (B, S * 48000 / sr)
        return self.layout(list(wave))

    def _checked(self, wave: torch.Tensor) -> torch.Tensor:
        """A float wave with finite samples, as fp32 on the teacher's device."""
        if not wave.is_floating_point():
            raise ValueError(f"{self.name}: the teacher needs float waves in [-1, 1], got {wave.dtype} "
                             "(scale int16 clip-store waves by 1/32768)")
        wave = wave.to(self.device, torch.float32)
        if not torch.isfinite(wave).all():
            raise ValueError(f"{self.name}: the wave holds NaN or inf values")
        return wave

    def layout(self, waves: list[torch.Tensor]) -> dict:
        """Clips at the teacher's rate, each (S_i,) -> laion-clap's input dict: the int16 round trip
        (hook.py), then repeatpad of the clip / the fixed long-clip window (teacher_input.layout_batch)."""
        if self.quantize:
            waves = [quantize_int16(w) for w in waves]
        return layout_batch(waves, self.audio_cfg, self._fusion_mel)

    def forward_input(self, batch: dict) -> dict:
        """laion-clap's HTSAT on a prepared batch; returns its output dict plus 'grid' [B, Tt, Ft, D]."""
        net = self.net
        self._grid_out.clear()
        # laion-clap's 2-D fusion writes fp32 chunk features into autocast ones (index_put dtype error):
        # a fusion batch holding a long clip runs in fp32, even inside a caller's autocast
        fp32_only = self.fusion and bool(batch["longer"].any())
        if fp32_only and (self.amp_dtype is not None or torch.is_autocast_enabled(self.device.type)):
            log.warning("%s: a batch holds clips longer than the window: fusion runs it in fp32", self.name)
        with torch.autocast(self.device.type, enabled=False) if fp32_only else self._autocast():
            if self.fusion:                                   # HTSAT's own fusion path, mel made in fp32
                out = net(batch, device=self.device)
            else:                                             # HTSAT.forward's non-fusion steps, front end fp32
                with torch.autocast(self.device.type, enabled=False):
                    x = net.spectrogram_extractor(batch["waveform"])   # (B, 1, frames, n_fft/2+1)
                    x = net.logmel_extractor(x)                        # (B, 1, frames, n_mels)
                x = net.bn0(x.transpose(1, 3)).transpose(1, 3)         # bn over mel bins: (B, 1, frames, n_mels)
                x = net.reshape_wav2img(x)                             # (B, 1, spec_size, spec_size)
                out = net.forward_features(x)
        grid = self._grid_out.pop().float()                   # [B, D, Ft, Tt], the tscam_conv input
        grid = grid.permute(0, 3, 2, 1)                       # [B, Tt, Ft, D], the target store's order
        expected = (batch["waveform"].shape[0], *self.grid, self.dim)
        if tuple(grid.shape) != expected:
            raise RuntimeError(f"{self.name}: token map {tuple(grid.shape)}, expected {expected}")
        return {**out, "grid": grid}

    @torch.no_grad()
    def token_grid(self, wave16k: torch.Tensor, sr: int = 16000) -> torch.Tensor:
        """wave16k: [B, S] float in [-1, 1] at sr -> [B, Tt, Ft, D] float32 token grid, the target
        store's layout (tiny: [B, 32, 2, 768]). Resampling and mels run in fp32 even inside a
        caller's autocast; the Swin stages follow it."""
        with torch.autocast(self.device.type, enabled=False):
            batch = self.model_input(wave16k, sr)
        return self.forward_input(batch)["grid"]

    @torch.no_grad()
    def token_grid_waves(self, waves: list[torch.Tensor]) -> torch.Tensor:
        """B clips at the teacher's own rate (`sample_rate`), each (S_i,) float in [-1, 1], any lengths
        -> [B, Tt, Ft, D] float32: laion-clap's path from a loaded file (stage one's full-band input)."""
        bad = [tuple(w.shape) for w in waves if not isinstance(w, torch.Tensor) or w.dim() != 1 or not len(w)]
        if not waves or bad:
            raise ValueError(f"{self.name}: token_grid_waves needs a non-empty list of (S,) waves, S > 0; got {bad}")
        with torch.autocast(self.device.type, enabled=False):
            batch = self.layout([self._checked(w) for w in waves])
        return self.forward_input(batch)["grid"]

    def describe(self) -> dict:
        """Target-store attrs for this teacher (grid = [Tt, Ft])."""
        untrained = self.checkpoint_id.startswith("untrained:")
        return {"teacher": self.name, "teacher_model": self.model, "fusion": self.fusion,
                "fusion_type": FUSION_TYPE if self.fusion else None,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "checkpoint_sha256": self.checkpoint_id if untrained else self.checkpoint_id.removeprefix("sha256:"),
                "checkpoint_id": self.checkpoint_id,
                "grid": list(self.grid), "dim": self.dim, "teacher_mel": dict(self.mel),
                "amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch."),
                "input": "token_grid: 16 kHz -> 48 kHz (torchaudio resample); token_grid_waves: clips at 48 kHz"
                         + (", int16 round trip" if self.quantize else "")
                         + ", repeatpad of the clip to the window, long clips: centre window / middle fusion chunks"}

    def __repr__(self) -> str:
        return f"ClapTeacher({self.name}, {self.checkpoint_id}, dim={self.dim}, grid={self.grid}, device={self.device})"
