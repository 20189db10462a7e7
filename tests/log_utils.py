"""Capturing what the package logs, for tests.

    with captured_log() as messages:             # "megatron_tf" and its children, INFO and above
        build(...)
    assert any("forget flags from" in m for m in messages)

The package logger does not propagate to pytest's caplog, and its level is set once per process (INFO on rank 0,
WARNING elsewhere, utils/logging.py); a test that reads INFO lines lowers it for the block and gives it back.
"""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def captured_log(name: str = "megatron_tf", level: int = logging.INFO):
    """The messages (str) that logger `name` emits at `level` or above while the block runs."""
    messages: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    old = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
