"""Waiting on child processes without timing assumptions (kill tests)."""

from __future__ import annotations

import os
import time


def wait_for_file(path: str, proc, deadline_s: float = 300.0) -> None:
    """Wait until `path` exists while `proc` (a subprocess.Popen) runs; fail with its stderr if it exits first or
    after deadline_s seconds (a generous bound for a loaded CI machine, not a timing assumption)."""
    end = time.monotonic() + deadline_s
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {path} appeared: "
                                 f"{proc.stderr.read()[-3000:] if proc.stderr else ''!r}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {deadline_s:.0f} s")
        time.sleep(0.05)
