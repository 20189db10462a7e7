"""Ranks from the launcher, a gloo group with timeouts, work partitioning and "all done" points that never hang.

For jobs of many independent work items (annotation chunks, preprocessing input files) run under torchrun (one
node: `torchrun --standalone --nproc-per-node G`; many: srun + torchrun with `--rdzv-endpoint` on the first node):

    env = rank_env()                      # RANK, WORLD_SIZE, LOCAL_RANK, ... (world size 1 without a launcher)
    device = pin_device(env, "auto")      # GPU ranks: torch.cuda.set_device(LOCAL_RANK % device_count)
    with WorkGroup(env, timeout_s=600, name="annotate") as g:
        if env.rank == 0:
            g.publish("plan", {"todo": todo})           # JSON-serialisable values
        plan = g.fetch("plan", src=0)                   # waits while rank 0 is alive
        for item in partition(plan["todo"], env.rank, env.world_size):
            ...                                          # disjoint items per rank
        infos = g.all_arrive("labeled", {"items": n})   # list of every rank's info, in rank order
        if env.rank == 0:
            ...merge...
            g.publish("merged", {"ok": True})
        else:
            g.fetch("merged", src=0)

API
- `rank_env(environ=os.environ) -> RankEnv`: rank, world_size, local_rank, local_world_size, master_addr,
  master_port, run_id (TORCHELASTIC_RUN_ID: torchrun's --rdzv-id, e.g. the Slurm job id), restart_count and
  agent_store (torchrun hosts the store). Without a launcher: rank 0 of 1. Inconsistent variables (RANK >= WORLD_SIZE,
  a missing MASTER_ADDR, non-integers) raise DistWorkError naming the variable and its value.
- `pin_device(env, device)`: "cpu", or "cuda:<k>" with k = LOCAL_RANK % device_count, made current
  (torch.cuda.set_device) so libraries that say "cuda" use the rank's own GPU. device: auto | cpu | cuda.
- `partition(items, rank, world_size)`: items[rank::world_size] (round robin: disjoint, covers all, balanced
  when the cost of items drifts along the list).
- `WorkGroup(env, timeout_s, name)`: a context manager. Entering connects to the job's TCPStore (torchrun's agent
  store, or one hosted by rank 0 without torchrun), waits until every rank has joined (else DistWorkError naming
  the ranks that did not join within timeout_s), initialises the default torch.distributed gloo group with
  timeout_s as its collective timeout, and starts a heartbeat thread (a counter in the store every
  heartbeat_s = min(5, timeout_s / 10) s). Leaving it destroys the group (and, on an exception, publishes the error,
  so the other ranks stop waiting at once and report it).
  - `publish(key, value)` / `fetch(key, src)`: a JSON value from one rank to all.
  - `all_arrive(point, info) -> list`: a barrier with a payload (gathered by gloo once all have arrived).
  - `fail(message)`: tell the others that this rank failed (done by __exit__ on an exception).
  Every wait (fetch, all_arrive) polls the store and raises DistWorkError when a rank published an error
  ("rank 1 failed: ..."), a watched rank has not advanced its heartbeat for timeout_s seconds (died, its node lost:
  "rank 5 stopped responding ..."; rank 0 watches every rank it waits for and tells the others, the others watch
  rank 0 and the rank they fetch from), or the store itself is unreachable (its host died). Waits have no overall
  limit otherwise: a rank that is alive and working may take hours, one that is gone is noticed within timeout_s.
- DistWorkError (a RuntimeError): every failure above; messages name the rank(s), host:port and the timeout.

Keys live under "dist_work/<name>/<run_id>/<restart_count>/", so a torchrun restart or a second WorkGroup in the
same job never sees stale keys. Persistent progress (what survives a relaunch) is the caller's job: files on a
filesystem every rank sees (annotation keeps per-chunk files; a relaunch labels only the missing ones).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .logging import get_logger

log = get_logger(__name__)

POLL_S = 0.1  # how often a wait looks at the store


class DistWorkError(RuntimeError):
    """A rank failed, died, never joined, or the job's store is unreachable; the message says which."""


@dataclass(frozen=True)
class RankEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    run_id: str | None = None
    restart_count: int = 0
    agent_store: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def endpoint(self) -> str:
        return f"{self.master_addr}:{self.master_port}"


def _int_var(environ, var: str, default: int | None) -> int | None:
    value = environ.get(var)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistWorkError(f"environment variable {var}={value!r}: expected an integer") from None


def rank_env(environ=None) -> RankEnv:
    """The process's place in the job, from the launcher's environment (torchrun sets all of it)."""
    environ = os.environ if environ is None else environ
    world = _int_var(environ, "WORLD_SIZE", 1)
    rank = _int_var(environ, "RANK", 0)
    if world < 1:
        raise DistWorkError(f"environment variable WORLD_SIZE={world}: expected >= 1")
    if not 0 <= rank < world:
        raise DistWorkError(f"environment variable RANK={rank}: expected 0 <= RANK < WORLD_SIZE={world}")
    local = _int_var(environ, "LOCAL_RANK", rank if world == 1 else 0)
    local_world = _int_var(environ, "LOCAL_WORLD_SIZE", 1)
    if local < 0:
        raise DistWorkError(f"environment variable LOCAL_RANK={local}: expected >= 0")
    addr, port = environ.get("MASTER_ADDR"), _int_var(environ, "MASTER_PORT", None)
    if world > 1:
        if not addr:
            raise DistWorkError(f"WORLD_SIZE={world} but MASTER_ADDR is not set: launch with torchrun (or set "
                                "MASTER_ADDR and MASTER_PORT to the host and port of rank 0)")
        if port is None or not 0 < port < 65536:
            raise DistWorkError(f"WORLD_SIZE={world} but MASTER_PORT={environ.get('MASTER_PORT')!r}: expected a "
                                "port number 1..65535")
    return RankEnv(rank=rank, world_size=world, local_rank=local, local_world_size=local_world, master_addr=addr,
                   master_port=port, run_id=environ.get("TORCHELASTIC_RUN_ID") or None,
                   restart_count=_int_var(environ, "TORCHELASTIC_RESTART_COUNT", 0),
                   agent_store=environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True")


def pin_device(env: RankEnv, device: str = "auto") -> str:
    """Make this rank's GPU current (LOCAL_RANK % device_count) and return "cuda:<k>"; "cpu" without CUDA."""
    if device not in ("auto", "cpu", "cuda"):
        raise DistWorkError(f"device {device!r}: expected auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if device == "cuda":
            raise DistWorkError(f"rank {env.rank}: device cuda requested but CUDA is not available")
        return "cpu"
    k = env.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(k)
    return f"cuda:{k}"


def partition(items: Sequence, rank: int, world_size: int) -> list:
    """Round robin: rank r takes items r, r + W, r + 2W, ... (disjoint; together all items)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(items[rank::world_size])


class WorkGroup:
    """See the module docstring. Not reentrant; one per job step."""

    def __init__(self, env: RankEnv, timeout_s: float = 600.0, name: str = "work", heartbeat_s: float | None = None):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.env, self.timeout_s, self.name = env, float(timeout_s), name
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.05, min(5.0, timeout_s / 10))
        self.ns = f"dist_work/{name}/{env.run_id or 'norun'}/{env.restart_count}/"
        self._store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False
        self._pg_here = False
        self._pg = None  # the gloo group of all_arrive (None: the default group, created here)

    # ---- setup ---------------------------------------------------------------------------------------------------
    def _connect(self):
        import torch.distributed as dist

        e = self.env
        master = e.rank == 0 and not e.agent_store
        try:
            return dist.TCPStore(e.master_addr, e.master_port, e.world_size, is_master=master,
                                 timeout=datetime.timedelta(seconds=self.timeout_s), wait_for_workers=False,
                                 multi_tenant=master)
        except Exception as exc:  # DistNetworkError / DistStoreError / RuntimeError
            who = "this rank cannot host it (port in use?)" if master else (
                "torchrun's agent on the first node" if e.agent_store else "rank 0, which hosts it, did not start")
            raise DistWorkError(f"rank {e.rank}: cannot reach the job's store at {e.endpoint} within "
                                f"{self.timeout_s:g} s ({who}): {exc}") from exc

    def __enter__(self) -> WorkGroup:
        if not self.env.distributed:
            return self
        self._store = self._connect()
        self._set(f"joined/{self.env.rank}", {"host": socket.gethostname(), "pid": os.getpid()})
        self._store_call(self._store.add, self.ns + "joined", 1)
        self._wait_joined()
        self._init_pg()
        self._thread = threading.Thread(target=self._heartbeat, name="dist_work-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _wait_joined(self) -> None:
        end = time.monotonic() + self.timeout_s
        while self._store_call(self._store.add, self.ns + "joined", 0) < self.env.world_size:
            if time.monotonic() > end:
                missing = [r for r in range(self.env.world_size)
                           if not self._store_call(self._store.check, [self.ns + f"joined/{r}"])]
                raise DistWorkError(
                    f"rank {self.env.rank}: ranks {missing} of world size {self.env.world_size} did not join within "
                    f"{self.timeout_s:g} s (store {self.env.endpoint}): a rank or node did not start, died before "
                    "joining, or was launched with another WORLD_SIZE")
            time.sleep(POLL_S)

    def _init_pg(self) -> None:
        import torch.distributed as dist

        e = self.env
        timeout = datetime.timedelta(seconds=self.timeout_s)
        if dist.is_available() and dist.is_initialized():  # the caller's group (e.g. NCCL): a gloo one beside it
            self._pg = dist.new_group(backend="gloo", timeout=timeout)
            return
        dist.init_process_group("gloo", store=dist.PrefixStore(self.ns + "pg", self._store), rank=e.rank,
                                world_size=e.world_size, timeout=timeout)
        self._pg_here = True

    def _heartbeat(self) -> None:
        import torch.distributed as dist

        e = self.env
        try:  # its own connection: the main thread's client may be blocked in a call
            store = dist.TCPStore(e.master_addr, e.master_port, e.world_size, is_master=False,
                                  timeout=datetime.timedelta(seconds=self.timeout_s))
            key = self.ns + f"hb/{e.rank}"
            while not self._stop.is_set():
                store.add(key, 1)
                self._stop.wait(self.heartbeat_s)
        except Exception as exc:  # the store is gone: the waits report it
            log.warning("rank %d: heartbeat stopped: %s", e.rank, exc)

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.env.distributed:
            return
        if exc is not None and not self._failed and not isinstance(exc, DistWorkError):
            with contextlib.suppress(Exception):
                self.fail(f"{type(exc).__name__}: {exc}")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.heartbeat_s + 5)
        if self._pg_here:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        with contextlib.suppress(Exception):
            if self.env.rank != 0 or self.env.agent_store:
                self._set(f"left/{self.env.rank}", True)
            else:  # rank 0 hosts the store: let the others read the last values (or its error) before it goes away
                end = time.monotonic() + (self.timeout_s if exc is None else min(self.timeout_s, 10.0))
                keys = [self.ns + f"left/{r}" for r in range(1, self.env.world_size)]
                while not self._store.check(keys) and time.monotonic() < end:
                    time.sleep(POLL_S)
        self._store = None

    # ---- store access --------------------------------------------------------------------------------------------
    def _store_call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            raise DistWorkError(f"rank {self.env.rank}: lost the job's store at {self.env.endpoint} (hosted by "
                                f"{'torchrun on the first node' if self.env.agent_store else 'rank 0'}: that "
                                f"process or its node died?): {exc}") from exc

    def _set(self, key: str, value: Any) -> None:
        self._store_call(self._store.set, self.ns + key, json.dumps(value))

    def _get(self, key: str) -> Any:
        return json.loads(self._store_call(self._store.get, self.ns + key))

    def fail(self, message: str, _seen: bool = False) -> None:
        """Tell every rank that this one failed; their waits raise with `message`."""
        self._failed = True
        if self._store is None:
            return
        self._set(f"error/{self.env.rank}", {"message": message, "seen": _seen})
        self._store_call(self._store.add, self.ns + "errors", 1)

    def _check_errors(self, errors_seen: list[int]) -> None:
        n = self._store_call(self._store.add, self.ns + "errors", 0)
        if n == errors_seen[0]:
            return
        errors_seen[0] = n
        for r in range(self.env.world_size):
            if r != self.env.rank and self._store_call(self._store.check, [self.ns + f"error/{r}"]):
                e = self._get(f"error/{r}")
                raise DistWorkError(e["message"] if e["seen"] else f"rank {r} failed: {e['message']}")

    def _wait(self, done, watch: dict[int, str], what: str) -> None:
        """Poll until done(). Meanwhile each rank in `watch` must either have set its key watch[r] or keep beating;
        one that does neither for timeout_s is reported dead (to every rank, through the errors key)."""
        me = self.env.rank
        watch = {r: self.ns + k for r, k in watch.items() if r != me}
        beats = {r: (-1, time.monotonic()) for r in watch}
        errors_seen = [0]
        next_look = 0.0
        while True:
            self._check_errors(errors_seen)
            if done():
                return
            now = time.monotonic()
            if now >= next_look:  # heartbeats move every heartbeat_s: no need to look more often
                next_look = now + min(self.heartbeat_s, 1.0)
                for r in [r for r in watch if self._store_call(self._store.check, [watch[r]])]:
                    del watch[r]
                for r in watch:
                    hb = self._store_call(self._store.add, self.ns + f"hb/{r}", 0)
                    last, since = beats[r]
                    if hb != last:
                        beats[r] = (hb, now)
                    elif now - since > self.timeout_s:
                        msg = (f"rank {r} stopped responding (no heartbeat for {self.timeout_s:g} s; noticed by rank "
                               f"{me} waiting for {what}): it died or its node was lost; relaunch the same command "
                               "to resume")
                        with contextlib.suppress(DistWorkError):
                            self.fail(msg, _seen=True)
                        raise DistWorkError(msg)
            time.sleep(POLL_S)

    # ---- the API ---------------------------------------------------------------------------------------------------
    def publish(self, key: str, value: Any) -> None:
        """Make a JSON value available to every rank under `key` (one publisher per key)."""
        if self.env.distributed:
            self._set(f"val/{key}", value)
        else:
            self._local = {**getattr(self, "_local", {}), key: value}

    def fetch(self, key: str, src: int = 0) -> Any:
        """The value rank `src` publishes under `key`; waits while `src` is alive."""
        if not self.env.distributed:
            return self._local[key]
        k = f"val/{key}"
        if src != self.env.rank:
            self._wait(lambda: self._store_call(self._store.check, [self.ns + k]), {src: k},
                       f"{key!r} from rank {src}")
        return self._get(k)

    def all_arrive(self, point: str, info: Any = None) -> list:
        """Barrier with a payload: every rank's `info` (picklable), in rank order, once all have arrived at `point`.
        Rank 0 watches every rank that has not arrived, the others watch rank 0 (which tells them of a dead rank):
        O(world size) store traffic, not its square. The payloads travel by one gloo all_gather once all are there."""
        if not self.env.distributed:
            return [info]
        import torch.distributed as dist

        me, world = self.env.rank, self.env.world_size
        self._set(f"at/{point}/{me}", True)
        self._store_call(self._store.add, self.ns + f"at/{point}", 1)
        watch = {r: f"at/{point}/{r}" for r in range(world)} if me == 0 else {0: f"at/{point}/0"}
        self._wait(lambda: self._store_call(self._store.add, self.ns + f"at/{point}", 0) >= world, watch,
                   f"all ranks at {point!r}")
        out: list = [None] * world
        try:
            dist.all_gather_object(out, info, group=self._pg)
        except Exception as exc:  # a rank died right after arriving: gloo reports it (or times out)
            raise DistWorkError(f"rank {me}: exchanging results at {point!r} failed (a rank died?): {exc}") from exc
        return out
