"""utils/dist_work.py: ranks from the launcher's environment, partitioning, and WorkGroup across real processes
(launched by hand with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as torchrun would; every process has a deadline).
A dead rank, a rank that never joins and an unreachable store are tested through tools/annotate.py in
tests/labeling/test_annotate_dist.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_tf.utils.dist_work import DistWorkError, RankEnv, WorkGroup, partition, pin_device, rank_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_rank_env_reads_torchrun_variables():
    env = rank_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "n0",
                    "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "4711", "TORCHELASTIC_RESTART_COUNT": "2",
                    "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert env == RankEnv(rank=5, world_size=8, local_rank=1, local_world_size=4, master_addr="n0",
                          master_port=29500, run_id="4711", restart_count=2, agent_store=True)
    assert env.distributed and env.endpoint == "n0:29500"
    assert rank_env({}) == RankEnv() and not RankEnv().distributed


@pytest.mark.parametrize("environ,message", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2: expected 0 <= RANK < WORLD_SIZE=2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x': expected an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0: expected >= 1"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 but MASTER_ADDR is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
])
def test_rank_env_rejects_inconsistent_variables(environ, message):
    with pytest.raises(DistWorkError, match=message.replace("(", "\\(").replace("[", "\\[")):
        rank_env(environ)


def test_partition_is_disjoint_round_robin_and_complete():
    items = list(range(10, 27))
    parts = [partition(items, r, 4) for r in range(4)]
    assert parts[1] == [11, 15, 19, 23]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert partition(items[:2], 3, 4) == []
    with pytest.raises(ValueError, match="rank 4 outside world size 4"):
        partition(items, 4, 4)


def test_pin_device_on_cpu_and_single_process_group_is_a_no_op():
    assert pin_device(RankEnv(), "cpu") == "cpu"
    with pytest.raises(DistWorkError, match="expected auto, cpu or cuda"):
        pin_device(RankEnv(), "gpu")
    with WorkGroup(RankEnv(), timeout_s=1, name="t") as g:
        g.publish("plan", {"todo": [1, 2]})
        assert g.fetch("plan", 0) == {"todo": [1, 2]}
        assert g.all_arrive("done", {"n": 3}) == [{"n": 3}]
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        WorkGroup(RankEnv(), timeout_s=0)


_SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
import torch.distributed as dist
from megatron_tf.utils.dist_work import WorkGroup, partition, rank_env
env = rank_env()
with WorkGroup(env, timeout_s=float(os.environ.get("TIMEOUT_S", "20")), name="t") as g:
    if env.rank == 0:
        g.publish("plan", {{"todo": list(range(7))}})
    todo = g.fetch("plan", src=0)["todo"]
    mine = partition(todo, env.rank, env.world_size)
    if os.environ.get("FAIL_RANK") == str(env.rank):
        raise ValueError("bad input on rank " + str(env.rank))
    if os.environ.get("DIE_RANK") == str(env.rank):
        os._exit(3)
    infos = g.all_arrive("labeled", {{"rank": env.rank, "items": mine}})
    assert dist.get_world_size() == env.world_size and dist.get_backend() == "gloo"
    print("RESULT " + json.dumps(infos), flush=True)
"""


def _launch(tmp_path, world, **env):
    script = tmp_path / "group.py"
    script.write_text(_SCRIPT.format(repo=REPO))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for r in range(world):
        e = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **env}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_ranks_publish_fetch_and_arrive(tmp_path):
    results = _launch(tmp_path, 3)
    want = [{"rank": 0, "items": [0, 3, 6]}, {"rank": 1, "items": [1, 4]}, {"rank": 2, "items": [2, 5]}]
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        assert json.loads(out.split("RESULT ", 1)[1]) == want


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("bad", [1, 0])  # rank 0 also hosts the store: it stays until the other has read the error
def test_a_failing_rank_stops_the_others_with_its_message(tmp_path, bad):
    results = _launch(tmp_path, 2, FAIL_RANK=str(bad))
    rc, _, err = results[bad]
    assert rc != 0 and f"ValueError: bad input on rank {bad}" in err
    rc, _, err = results[1 - bad]
    assert rc != 0 and f"DistWorkError: rank {bad} failed: ValueError: bad input on rank {bad}" in err, err[-2000:]


def test_pin_device_takes_local_rank_modulo_the_gpus(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    assert pin_device(RankEnv(rank=13, world_size=16, local_rank=5), "auto") == "cuda:1"
    assert pin_device(RankEnv(rank=2, world_size=16, local_rank=2), "cuda") == "cuda:2"
    assert calls == [1, 2]
    assert pin_device(RankEnv(local_rank=3), "cpu") == "cpu" and calls == [1, 2]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DistWorkError, match="rank 0: device cuda requested but CUDA is not available"):
        pin_device(RankEnv(), "cuda")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_dead_rank_is_named_to_every_rank_by_rank_0(tmp_path):
    """Rank 2 exits without a word after joining: rank 0 (watching every rank) notices its heartbeat stop within the
    timeout and tells rank 1 (which watches only rank 0)."""
    results = _launch(tmp_path, 3, DIE_RANK="2", TIMEOUT_S="3")
    assert results[2][0] == 3
    for rc, _, err in results[:2]:
        assert rc != 0 and "DistWorkError: rank 2 stopped responding (no heartbeat for 3 s; noticed by rank 0" in err, \
            err[-2000:]
