"""torch.distributed helpers shared by pretraining and fine-tuning.

Launch with `torchrun --nproc-per-node K ...`: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and the
rendezvous address; `init_distributed` reads them, picks NCCL on CUDA and gloo on CPU, and pins each
process to its GPU. Started with plain `python`, everything runs single-process (world size 1) and
the collectives below become no-ops, so the same loop runs on a laptop and on a cluster.

    dist = init_distributed("cuda")          # DistInfo(rank, world_size, local_rank, device)
    model = wrap_ddp(model, dist)            # DDP only when world_size > 1
    ...
    cleanup()
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from cache_tools.errors import ConfigError



@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N" -> torch.device; ConfigError (one
    line) for anything else and for CUDA asked for where there is none (silently training on CPU would
    waste a cluster job)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        want = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: not a device (auto | cpu | cuda | cuda:N)") from None
    if want.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: only cpu and cuda are supported")
    if want.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here (no GPU visible to torch); "
                          "use --device cpu")
    if want.index is not None and want.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible here")
    return want


def init_distributed(device: str = "cuda") -> DistInfo:
    """Join the process group torchrun set up (if any) and choose this rank's device
    (`device` as resolve_device takes it)."""
    want = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want.type == "cuda":
        index = local if world > 1 or want.index is None else want.index
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, rank=rank, world_size=world,
                                 device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        tdist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (a copy; `t` itself is not changed). Identity when single-process."""
    if not is_dist():
        return t.clone()
    out = t.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out / get_world_size()


def wrap_ddp(model: torch.nn.Module, dist: DistInfo, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` when world_size > 1, else `model` itself."""
    if not dist.enabled:
        return model
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     find_unused_parameters=find_unused_parameters)

