"""Annotation across processes (labeling/annotate_dist.py) launched as users do: `python -m torch.distributed.run
--standalone --nproc-per-node 2 tools/annotate.py ...` on CPU. References are one-process runs of the same command
(the sidecars must be byte-identical); kills wait for an observable state (a marker file written by the labeling
rank), never for a time; every subprocess has a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import KIND_DOC_SCORES, KIND_TOKEN_MASK, KIND_TOKEN_SCORES, sidecar_path
from megatron_tf.labeling.annotate import lock_path_for, main, work_dir_for
from megatron_tf.utils.run_lock import run_lock
from tests.labeling.test_blocklist import REF_TERMS, _random_texts
from tests.proc_utils import wait_for_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = (KIND_TOKEN_SCORES, KIND_DOC_SCORES, KIND_TOKEN_MASK)
DEADLINE_S = 240  # per launch: 2 shared CPU cores, three Python processes importing torch
CHUNK_DOCS = 3
N_DOCS = 48  # 16 chunks

# Runs tools/annotate.py's main() with the chunk runner instrumented: every labeled chunk is appended to
# LOGDIR/calls-<RANK>.txt (the count of labeler calls per rank), and with BLOCK_RANK=r, rank r labels BLOCK_AFTER
# chunks, writes its pid to MARKER and blocks until it is killed.
_WRAPPER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from megatron_tf.labeling import annotate_chunks
from megatron_tf.labeling.annotate import main

real_run = annotate_chunks._ChunkJob.run
rank = os.environ.get("RANK", "0")
block = os.environ.get("BLOCK_RANK") == rank
n_done = [0]

def run(self, c):
    if block and n_done[0] >= int(os.environ["BLOCK_AFTER"]):
        with open(os.environ["MARKER"] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.environ["MARKER"] + ".tmp", os.environ["MARKER"])
        while True:
            time.sleep(1)
    out = real_run(self, c)
    with open(os.path.join(os.environ["LOGDIR"], "calls-" + rank + ".txt"), "a") as f:
        f.write(str(c) + "\\n")
    n_done[0] += 1
    return out

annotate_chunks._ChunkJob.run = run
sys.exit(main())
"""


@pytest.fixture
def setup(tmp_path, sp_tok):
    texts = _random_texts(N_DOCS, seed=21)
    docs = [sp_tok.tokenize(t) + [sp_tok.eod] for t in texts]
    ds = write_dataset(str(tmp_path / "data" / "corpus"), docs, dtype=np.uint16)
    terms = tmp_path / "terms.txt"
    terms.write_text("\n".join(REF_TERMS) + "\n", encoding="utf-8")
    wrapper = tmp_path / "annotate_wrapped.py"
    wrapper.write_text(_WRAPPER.format(repo=REPO))
    logdir = tmp_path / "calls"
    logdir.mkdir()
    return {"prefix": ds.path_prefix, "terms": str(terms), "model": sp_tok.path, "wrapper": str(wrapper),
            "logdir": str(logdir), "tmp": tmp_path}


def _args(s, prefix, *extra):
    return ["--data-prefix", prefix, "--labeler", "blocklist", "--terms", s["terms"], "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", s["model"], "--write-mask-threshold", "0.5",
            "--chunk-docs", str(CHUNK_DOCS), "--no-progress", *extra]


def _env(s, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    return {**env, "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1", "LOGDIR": s["logdir"],
            "PYTHONPATH": REPO, **kw}


def _torchrun(s, prefix, *extra, script=None, nproc=2, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           script or os.path.join(REPO, "tools", "annotate.py"), *_args(s, prefix, *extra)]
    return subprocess.Popen(cmd, env=_env(s, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc, deadline_s=DEADLINE_S):
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"no result within {deadline_s} s: {err[-3000:]}") from None
    return proc.returncode, out, err


def _copy(src: str, dst: str) -> str:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    for ext in (".bin", ".idx"):
        shutil.copyfile(src + ext, dst + ext)
    return dst


def _sidecars(prefix):
    return {k: open(sidecar_path(prefix, k), "rb").read() for k in KINDS}


def _one_process_reference(s, monkeypatch, capsys) -> dict:
    ref = _copy(s["prefix"], str(s["tmp"] / "ref" / "corpus"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert main(_args(s, ref)) == 0, capsys.readouterr().err
    out = _sidecars(ref)
    assert np.frombuffer(out[KIND_TOKEN_SCORES][-1000:], np.uint8).any()  # the terms occur: not all zero
    return out


def _calls(s, rank) -> list[int]:
    path = os.path.join(s["logdir"], f"calls-{rank}.txt")
    return [int(x) for x in open(path).read().split()] if os.path.exists(path) else []


def test_two_ranks_write_the_one_process_sidecars_byte_for_byte(setup, monkeypatch, capsys):
    s = setup
    ref = _one_process_reference(s, monkeypatch, capsys)
    rc, out, err = _finish(_torchrun(s, s["prefix"], script=s["wrapper"]))
    assert rc == 0, err[-3000:]
    assert _sidecars(s["prefix"]) == ref
    assert not os.path.exists(work_dir_for(s["prefix"], "forget"))
    assert not os.path.exists(lock_path_for(s["prefix"], "forget"))
    c0, c1 = _calls(s, 0), _calls(s, 1)
    assert sorted(c0) == list(range(0, 16, 2)) and sorted(c1) == list(range(1, 16, 2))  # disjoint, all, once
    assert "labeling, rank 0" in out and "labeling, rank 1" in out and "merge (chunks -> sidecars)" in out
    assert "rank 1: labeled 8 chunks" in out


def test_killed_rank_fails_the_job_and_a_relaunch_labels_only_the_rest(setup, monkeypatch, capsys):
    s = setup
    ref = _one_process_reference(s, monkeypatch, capsys)
    marker = str(s["tmp"] / "blocked")
    proc = _torchrun(s, s["prefix"], "--dist-timeout", "30", script=s["wrapper"], BLOCK_RANK="1", BLOCK_AFTER="3",
                     MARKER=marker)
    try:
        wait_for_file(marker, proc, DEADLINE_S)  # rank 1 has labeled 3 chunks and is inside its 4th
        os.kill(int(open(marker).read()), signal.SIGKILL)
        rc, out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert rc != 0
    assert "Signal 9" in err or "exitcode  : -9" in err or "SIGKILL" in err, err[-3000:]
    assert not os.path.exists(sidecar_path(s["prefix"], KIND_TOKEN_SCORES))
    work = work_dir_for(s["prefix"], "forget")
    before = sorted(int(f[6:14]) for f in os.listdir(work) if f.endswith(".tok.npy"))
    assert set(_calls(s, 1)) <= set(before) and len(_calls(s, 1)) == 3
    assert set(before) == set(_calls(s, 0)) | set(_calls(s, 1))

    # merging what is there refuses and names the missing chunks (documents of chunk c: [3c, 3c + 3))
    missing = sorted(set(range(16)) - set(before))
    capsys.readouterr()
    assert main(_args(s, s["prefix"], "--merge-only")) == 2
    msg = capsys.readouterr().err
    assert f"cannot merge: {len(missing)} of 16 chunks are missing" in msg
    c = missing[0]
    assert f"chunk-{c:08d} (documents [{3 * c}, {3 * c + 3}))" in msg and work in msg
    assert not os.path.exists(sidecar_path(s["prefix"], KIND_TOKEN_SCORES))

    for r in (0, 1):
        os.remove(os.path.join(s["logdir"], f"calls-{r}.txt")) if os.path.exists(
            os.path.join(s["logdir"], f"calls-{r}.txt")) else None
    rc, out, err = _finish(_torchrun(s, s["prefix"], script=s["wrapper"]))
    assert rc == 0, err[-3000:]
    again = _calls(s, 0) + _calls(s, 1)
    assert sorted(again) == missing  # nothing finished was labeled again, every missing chunk once
    assert f"({len(before)} chunks kept from an interrupted run)" in out
    assert _sidecars(s["prefix"]) == ref


def test_a_second_job_is_refused_with_the_lock_holder(setup):
    s = setup
    with run_lock(lock_path_for(s["prefix"], "forget"), "annotate job", job="other-job"):
        rc, out, err = _finish(_torchrun(s, s["prefix"], "--dist-timeout", "30"))
    assert rc != 0
    assert f"holds the lock {lock_path_for(s['prefix'], 'forget')}: pid {os.getpid()}" in err
    assert "of job other-job" in err
    assert not os.path.exists(work_dir_for(s["prefix"], "forget"))


# ---- without torchrun: our own detection of a dead rank and of one that never joins ----------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(s, rank, world, port, *extra, **env):
    cmd = [sys.executable, s["wrapper"], *_args(s, s["prefix"], *extra)]
    env = _env(s, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), **env)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_without_torchrun_a_dead_rank_is_named_within_the_timeout(setup):
    s = setup
    marker = str(s["tmp"] / "blocked")
    port = _free_port()
    procs = [_rank(s, r, 2, port, "--dist-timeout", "4", BLOCK_RANK="1", BLOCK_AFTER="1", MARKER=marker)
             for r in (0, 1)]
    try:
        wait_for_file(marker, procs[1], DEADLINE_S)
        os.killpg(procs[1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        rc, out, err = _finish(procs[0], 120)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert rc == 1, err[-3000:]
    assert "annotate: error: rank 1 stopped responding (no heartbeat for 4 s; noticed by rank 0" in err
    assert waited < 60  # 4 s of silence plus rank 0's own remaining chunks, not a hang
    assert not os.path.exists(sidecar_path(s["prefix"], KIND_TOKEN_SCORES))


def test_without_torchrun_a_rank_that_never_joins_is_named(setup):
    s = setup
    t0 = time.monotonic()
    rc, out, err = _finish(_rank(s, 0, 3, _free_port(), "--dist-timeout", "3"), 120)
    assert rc == 1, err[-3000:]
    assert "ranks [1, 2] of world size 3 did not join within 3 s" in err
    assert time.monotonic() - t0 < 60
    rc, out, err = _finish(_rank(s, 1, 2, _free_port(), "--dist-timeout", "3"), 120)  # rank 0 (the store) missing
    assert rc == 1 and "cannot reach the job's store at 127.0.0.1:" in err and "rank 0, which hosts it" in err, err


def _slurm(s, **env):
    """examples/slurm_annotate.sh on this host with stand-ins for srun (runs its command once: one node) and
    scontrol (this host)."""
    bindir = s["tmp"] / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    (bindir / "srun").write_text("#!/bin/sh\nshift\nexec \"$@\"\n")  # drops --kill-on-bad-exit=1
    (bindir / "torchrun").write_text(f"#!/bin/sh\nexec {sys.executable} -m torch.distributed.run \"$@\"\n")
    for f in ("scontrol", "srun", "torchrun"):
        os.chmod(bindir / f, 0o755)
    env = _env(s, PATH=f"{bindir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=REPO, SLURM_JOB_ID="4711",
               SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(_free_port()), DATA_PREFIX=s["prefix"],
               TOKENIZER_MODEL=s["model"], LABELER="blocklist", TERMS=s["terms"], NPROC_PER_NODE="2",
               CHUNK_DOCS=str(CHUNK_DOCS), EXTRA_ARGS="--write-mask-threshold 0.5", **env)
    proc = subprocess.Popen(["bash", os.path.join(REPO, "examples", "slurm_annotate.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return _finish(proc)


def test_slurm_example_launches_through_srun_and_torchrun_rendezvous(setup, monkeypatch, capsys):
    """The c10d rendezvous path of a multi-node launch (one node here), with the requeue-stable --rdzv-id; same
    sidecars as one process."""
    s = setup
    ref = _one_process_reference(s, monkeypatch, capsys)
    rc, out, err = _slurm(s, SLURM_NNODES="1")
    assert rc == 0, err[-3000:]
    assert _sidecars(s["prefix"]) == ref
    assert "labeling, rank 1" in out


def test_slurm_example_fails_when_a_node_never_joins(setup):
    """SLURM_NNODES=2 but only this node starts: torchrun's rendezvous gives up after JOIN_TIMEOUT s; no rank ran."""
    s = setup
    t0 = time.monotonic()
    rc, out, err = _slurm(s, SLURM_NNODES="2", JOIN_TIMEOUT="4")
    assert rc != 0 and "RendezvousTimeoutError" in err, err[-3000:]
    assert time.monotonic() - t0 < 90
    assert not os.path.exists(work_dir_for(s["prefix"], "forget"))


def test_todo_travels_as_runs():
    from megatron_tf.labeling.annotate_dist import _expand, _runs

    assert _runs([0, 1, 2, 5, 6, 9]) == [[0, 3], [5, 7], [9, 10]] and _runs([]) == []
    assert _runs(list(range(10**6))) == [[0, 10**6]]
    assert _expand([[0, 3], [5, 7], [9, 10]]) == [0, 1, 2, 5, 6, 9]
