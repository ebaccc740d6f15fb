"""Mixed precision for pretraining and fine-tuning: one meaning of the config's `amp` key.

    amp = resolve_amp(cfg.amp, device)     # "bf16" | "fp16" | "off"; always "off" off CUDA
    with autocast(device, amp): ...        # forward passes
    scaler = grad_scaler(amp)              # loss scaling for fp16 only (a pass-through otherwise)
"""
from __future__ import annotations

import torch


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision a run really uses: autocast runs on CUDA only, CPU runs in fp32."""
    return amp if device.type == "cuda" else "off"


def autocast(device: torch.device, amp: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16,
                          enabled=amp != "off")


def grad_scaler(amp: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=amp == "fp16")
