"""One logger for the package. Rank 0 logs at INFO by default; other ranks at WARNING (set MEGATRON_TF_LOG_ALL=1)."""

import logging
import os
import sys

_CONFIGURED = False


def get_logger(name: str = "megatron_tf") -> logging.Logger:
    global _CONFIGURED
    if not _CONFIGURED:
        _CONFIGURED = True
        root = logging.getLogger("megatron_tf")
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            rank = os.environ.get("RANK", "0")
            handler.setFormatter(logging.Formatter(f"[%(asctime)s][rank{rank}][%(name)s] %(message)s", "%H:%M:%S"))
            root.addHandler(handler)
            level = os.environ.get("MEGATRON_TF_LOG_LEVEL")
            if level is None:
                level = "INFO" if rank == "0" or os.environ.get("MEGATRON_TF_LOG_ALL") == "1" else "WARNING"
            root.setLevel(level)
            root.propagate = False
    return logging.getLogger(name)
