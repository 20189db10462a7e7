"""Run a test function in N processes on CPU with the gloo backend (torch.multiprocessing.spawn).

Usage in a test module (the worker must be a module-level function so it can be pickled):

    def _worker(rank, world_size, port, tmp):
        init_gloo(rank, world_size, port)
        ...

    def test_x(tmp_path):
        run_distributed(_worker, 2, str(tmp_path))
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world_size: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def _entry(rank, fn, world_size, port, args):
    try:
        fn(rank, world_size, port, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args) -> None:
    """Spawn `world_size` processes running fn(rank, world_size, port, *args); re-raises the first failure."""
    mp.spawn(_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)
