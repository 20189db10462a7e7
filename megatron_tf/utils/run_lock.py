"""An exclusive run lock: a file created with O_CREAT | O_EXCL that says who holds it.

    with run_lock("P.forget.annotate.lock", "annotate run"):
        ...

The file holds JSON {"pid", "host", "started" (UTC), "argv"}. A second run fails with `LockHeld`, naming the file and
its holder. A lock left by a process that died (same host, pid gone: kill -9, OOM, power cut of a container) is
stale: it is replaced, with a warning. A lock from another host cannot be checked from here; the error says to
remove the file if that run is known to be gone. Works on shared filesystems that honour O_EXCL (local disks, NFSv3+).

Jobs of many processes (torchrun): one process takes the lock for the job (annotation: rank 0) and passes
`job=<id>` (torchrun's --rdzv-id, e.g. the Slurm job id); the file then also holds "job". A lock whose "job" is this
job's id was left by an earlier launch of the same job (a requeued Slurm job, whose rank 0 may have run on another
host): it is taken over, with a warning. A lock of another job is respected as above.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from .logging import get_logger

log = get_logger(__name__)


class LockHeld(ValueError):
    """Another run holds the lock; the message names the lock file and the holder."""


def _holder(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # gone, or being written by its creator this very moment


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _describe(h: dict | None) -> str:
    if h is None:
        return "an unknown process (the lock file is empty or unreadable: its owner may be writing it right now)"
    argv = " ".join(h.get("argv") or [])
    job = f" of job {h['job']}" if h.get("job") else ""
    return (f"pid {h.get('pid')} on host {h.get('host')}{job} since {h.get('started')}"
            + (f" ({argv})" if argv else ""))


def _try_create(path: str, info: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def run_lock(path: str, what: str = "run", job: str | None = None) -> Iterator[dict]:
    """Hold `path` for the duration of the block; raise LockHeld when another live process (or another job than
    `job`) holds it."""
    host = socket.gethostname()
    info = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "argv": list(sys.argv)}
    if job is not None:
        info["job"] = str(job)
    for _ in range(3):
        if _try_create(path, info):
            break
        h = _holder(path)
        if h is not None and job is not None and h.get("job") == str(job):
            if _holder(path) == h:
                log.warning("taking over lock %s: it was left by an earlier launch of this job (%s), %s", path, job,
                            _describe(h))
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            continue
        if h is not None and h.get("host") == host and isinstance(h.get("pid"), int) and not _pid_alive(h["pid"]):
            # stale: re-read right before removing, so a lock another run has just re-taken is not removed
            if _holder(path) == h:
                log.warning("removing stale lock %s: its holder, %s, is no longer running", path, _describe(h))
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            continue
        raise LockHeld(f"another {what} holds the lock {path}: {_describe(h)}. Wait for it to finish; if that "
                       f"process is gone (a process on another host cannot be checked from here), remove {path} "
                       "and retry")
    else:
        raise LockHeld(f"could not take the lock {path}: it keeps being re-created by another {what} "
                       f"({_describe(_holder(path))})")
    try:
        yield info
    finally:
        if _holder(path) == info:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
