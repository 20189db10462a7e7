"""Process setup: rank and world size from the environment (torchrun, the deepspeed launcher, Slurm via srun +
torchrun), backend by device (NCCL on CUDA, gloo on CPU), one GPU per process (LOCAL_RANK); seeding; fault
injection for tests (MEGATRON_TF_FAULT).

A single process without a launcher needs no torch.distributed at all (every group handle is None).
"""

from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    initialized_here: bool


def init_distributed(device: str = "auto", backend: str = "auto", timeout_minutes: int = 10,
                     local_rank: int | None = None) -> DistEnv:
    """Initialise torch.distributed when WORLD_SIZE > 1 (or reuse an existing default group)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        initialized_here = False
    else:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        initialized_here = world > 1
    lr_env = os.environ.get("LOCAL_RANK")
    local = int(lr_env) if lr_env is not None else (local_rank if local_rank is not None else 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    be = backend if backend != "auto" else ("nccl" if use_cuda else "gloo")
    if initialized_here:
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(be, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **kw)
        log.info("torch.distributed: %s, world size %d", be, world)
    elif dist.is_initialized():
        be = dist.get_backend()
    else:
        be = None
    return DistEnv(rank, world, local, dev, be, initialized_here)


FAULT_ENV = "MEGATRON_TF_FAULT"  # fault injection for tests: "step:9" or "save:6" -> SIGKILL at that point


def fault_point(point: str, iteration: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{point}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))  # noqa: NPY002 (Megatron seeds the legacy global generator too)
    torch.manual_seed(seed)
