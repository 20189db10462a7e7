"""Payload checksums for sidecars and checkpoints: XXH3-64 (xxhash), computed in chunks.

One algorithm everywhere, named in the files that carry it ("xxh3_64", 16 lowercase hex digits), so a reader can
verify a payload while streaming it without holding it in memory. XXH3 is not cryptographic: it catches flipped
bits and truncation, not tampering. Cost: `benchmarks/bench_checksum.py` measures it per GB on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import xxhash

ALGORITHM = "xxh3_64"
CHUNK_BYTES = 8 << 20  # 8 MiB: large enough that the per-call overhead is negligible, small enough for any RAM


class ChecksumError(ValueError):
    """A payload's checksum differs from the one its file states."""


def new_hasher():
    return xxhash.xxh3_64()


def digest_buffers(buffers: Iterable) -> str:
    """Checksum of the concatenation of `buffers` (bytes, memoryviews or contiguous numpy arrays)."""
    h = new_hasher()
    for b in buffers:
        if isinstance(b, np.ndarray):
            b = np.ascontiguousarray(b).view(np.uint8).reshape(-1)
        h.update(memoryview(b))
    return h.hexdigest()


def digest_file(path: str, offset: int = 0, length: int | None = None) -> str:
    """Checksum of `length` bytes of `path` from `offset` (to the end when None), read in CHUNK_BYTES pieces."""
    h = new_hasher()
    size = os.path.getsize(path)
    end = size if length is None else offset + length
    if end > size:
        raise ChecksumError(f"{path}: payload [{offset}, {end}) runs past the end of the file ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        left = end - offset
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise ChecksumError(f"{path}: file ended after {end - left} of {end} bytes while checksumming")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def verify_file(path: str, expected: str, offset: int = 0, length: int | None = None, what: str = "payload") -> None:
    """Raise ChecksumError naming the file, the expected and the found checksum when they differ."""
    found = digest_file(path, offset, length)
    if found != expected:
        raise ChecksumError(f"{path}: {what} checksum mismatch ({ALGORITHM}): expected {expected}, found {found} "
                            f"(the file was modified or corrupted after it was written)")
