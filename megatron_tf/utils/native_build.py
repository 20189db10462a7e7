"""Shared libraries compiled on first use (data/native.py's C helpers, ops/flce_cuda.py's CUDA kernels): where they
are cached and how one is built without ever leaving a half-written file under its final name.

    out = cached_library_path("libmtf_native", source_bytes)       # $MEGATRON_TF_CACHE or ~/.cache/megatron_tf
    build_once(out, lambda directory, name: compile_into(directory, name))   # -> out
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """$MEGATRON_TF_CACHE, else ~/.cache/megatron_tf."""
    return Path(os.environ.get("MEGATRON_TF_CACHE", Path.home() / ".cache" / "megatron_tf"))


def cached_library_path(stem: str, source: bytes, suffix: str = "") -> Path:
    """cache_dir()/<stem>_<sha256(source)[:16]><suffix>.so: a new source gets a new file, an old one is reused."""
    return cache_dir() / f"{stem}_{hashlib.sha256(source).hexdigest()[:16]}{suffix}.so"


def build_once(out: Path, compile_into: Callable[[str, str], str]) -> Path:
    """`out` if it exists; else compile_into(directory, name) -> path of the built file, in a temporary directory
    beside `out` (same filesystem), renamed to `out` when complete. A failed or killed build leaves nothing."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        os.replace(compile_into(tmp, out.name), out)
    return out
