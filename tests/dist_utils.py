"""Run a test function in N processes on CPU with the gloo backend (torch.multiprocessing, spawn), never hanging.

Usage in a test module (the worker must be a module-level function so it can be pickled):

    def _worker(rank, world_size, rdzv, tmp):
        init_gloo(rank, world_size, rdzv)
        ...

    def test_x(tmp_path):
        run_distributed(_worker, 2, str(tmp_path))

No hangs:
- rendezvous through a FileStore in a fresh temporary directory (`rdzv` is a "file://" URL): no free-port race
  between picking a port and binding it;
- the process group has a gloo timeout (GLOO_TIMEOUT_S): a rank waiting on a collective that a dead or diverged
  rank never joins raises instead of blocking;
- `run_distributed` joins the workers against a deadline; past it, it asks each worker for its Python stacks
  (faulthandler on SIGUSR1, printed to the test's stderr), kills them and raises TimeoutError.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import shutil
import signal
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GLOO_TIMEOUT_S = 180.0  # per collective; generous: 2 shared CPU cores, one rank may build a dataset index meanwhile
DEADLINE_S = 240.0  # default per run_distributed call: below pytest-timeout's 300 s per-test default (pyproject)


def init_gloo(rank: int, world_size: int, rdzv: str, timeout_s: float = GLOO_TIMEOUT_S) -> None:
    """Initialise the default gloo group through the FileStore at `rdzv` (given by run_distributed)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"  # read by nothing here, but some libraries insist on it being set
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rdzv, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _entry(rank, fn, world_size, rdzv, args):
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for stacks before killing us
    try:
        fn(rank, world_size, rdzv, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _kill(ctx, dump_stacks: bool) -> None:
    alive = [p for p in ctx.processes if p.is_alive()]
    if dump_stacks:
        for p in alive:
            os.kill(p.pid, signal.SIGUSR1)
        time.sleep(1.0)
    for p in alive:
        p.kill()
    for p in alive:
        p.join(10)


def run_distributed(fn, world_size: int, *args, deadline_s: float = DEADLINE_S) -> None:
    """Spawn `world_size` processes running fn(rank, world_size, rdzv, *args); re-raise the first failure, or raise
    TimeoutError (after dumping the workers' stacks) when they are not all done within `deadline_s` seconds."""
    store_dir = tempfile.mkdtemp(prefix="gloo_rdzv_")
    rdzv = "file://" + os.path.join(store_dir, "store")
    ctx = mp.start_processes(_entry, args=(fn, world_size, rdzv, args), nprocs=world_size, join=False,
                             start_method="spawn")
    end = time.monotonic() + deadline_s
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                stuck = [i for i, p in enumerate(ctx.processes) if p.is_alive()]
                _kill(ctx, dump_stacks=True)
                raise TimeoutError(f"run_distributed({getattr(fn, '__name__', fn)}, {world_size}): ranks {stuck} "
                                   f"still running after {deadline_s:.0f} s (stacks dumped above); killed")
            if ctx.join(timeout=min(left, 1.0)):  # raises ProcessRaisedException / ProcessExitedException
                return
    except BaseException:
        _kill(ctx, dump_stacks=False)
        raise
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
