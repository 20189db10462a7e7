"""The multi-process test helper cannot hang: a worker stuck past the deadline is killed with a TimeoutError, and a
collective that a finished rank never joins fails on the gloo timeout instead of blocking."""

import time

import pytest
import torch
import torch.distributed as dist

from tests.dist_utils import init_gloo, run_distributed


def _sleeper(rank, world, rdzv):
    init_gloo(rank, world, rdzv)
    dist.barrier()
    if rank == 1:
        time.sleep(600)


def _lonely_collective(rank, world, rdzv):
    init_gloo(rank, world, rdzv, timeout_s=3)
    if rank == 0:
        dist.all_reduce(torch.ones(1))  # rank 1 never joins


def test_deadline_kills_stuck_worker():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[(0, )?1\] still running"):
        run_distributed(_sleeper, 2, deadline_s=10)
    assert time.monotonic() - t0 < 40


def test_gloo_timeout_raises_instead_of_blocking():
    t0 = time.monotonic()
    with pytest.raises(Exception, match="(?i)timed out|timeout|connection closed|reset|abort"):
        run_distributed(_lonely_collective, 2, deadline_s=120)
    assert time.monotonic() - t0 < 100
