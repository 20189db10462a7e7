"""utils/run_lock.py: O_EXCL lock files that name their holder (issue 14, item 11)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_tf.utils.run_lock import LockHeld, run_lock


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid  # exited and reaped: no such process (pid reuse within the test is practically impossible)


def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    path = str(tmp_path / "x.lock")
    with run_lock(path, "test run") as info:
        held = json.load(open(path))
        assert held == info and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(LockHeld) as e:
            with run_lock(path, "second run"):
                pass
        assert f"another second run holds the lock {path}: pid {os.getpid()} on host {socket.gethostname()}" in \
            str(e.value)
        assert os.path.exists(path)  # the failed attempt did not remove the holder's lock
    assert not os.path.exists(path)


def test_stale_lock_of_a_dead_process_on_this_host_is_replaced(tmp_path):
    path = str(tmp_path / "x.lock")
    with open(path, "w") as f:
        json.dump({"pid": _dead_pid(), "host": socket.gethostname(), "started": "then", "argv": ["old"]}, f)
    with run_lock(path) as info:
        assert json.load(open(path)) == info
    assert not os.path.exists(path)


@pytest.mark.parametrize("content", [
    {"pid": 1, "host": "some-other-host", "started": "then", "argv": ["annotate"]},  # cannot be checked from here
    None,  # empty: its creator may be writing it right now
])
def test_lock_that_cannot_be_checked_is_respected(tmp_path, content):
    path = str(tmp_path / "x.lock")
    with open(path, "w") as f:
        if content is not None:
            json.dump(content, f)
    with pytest.raises(LockHeld) as e:
        with run_lock(path, "annotate run"):
            pass
    msg = str(e.value)
    assert path in msg and f"remove {path}" in msg
    assert ("pid 1 on host some-other-host" in msg) if content else ("unknown process" in msg)
    assert os.path.exists(path)


def test_job_lock_is_taken_over_by_the_same_job_and_refuses_another(tmp_path):
    """A torchrun job's rank 0 locks with job=<rdzv id>: a relaunch of that job (requeued; its earlier rank 0 may
    have run on another host, so the pid cannot be checked) takes the lock over; another job is refused."""
    path = str(tmp_path / "x.lock")
    left = {"pid": 1, "host": "some-other-host", "started": "then", "argv": ["annotate"], "job": "4711"}
    with open(path, "w") as f:
        json.dump(left, f)
    with pytest.raises(LockHeld) as e:
        with run_lock(path, "annotate run", job="4712"):
            pass
    assert "pid 1 on host some-other-host of job 4711" in str(e.value)
    with pytest.raises(LockHeld):
        with run_lock(path, "annotate run"):  # no job: respected as before
            pass
    assert json.load(open(path)) == left
    with run_lock(path, "annotate run", job="4711") as info:
        assert json.load(open(path)) == info and info["job"] == "4711" and info["pid"] == os.getpid()
        with pytest.raises(LockHeld, match=f"pid {os.getpid()} on host .* of job 4711"):
            with run_lock(path, "second job", job="9"):
                pass
    assert not os.path.exists(path)
