"""On-disk cache of dataset index arrays (.npy), keyed by a hash of everything that determines them.

Layout in the cache directory, for a description dict `desc` of kind K ("gpt", "blend", "docscore"):

    <sha256(canonical JSON of desc)[:32]>-K-<name>.npy     one file per array (np.save, no pickles)
    <sha256(canonical JSON of desc)[:32]>-K-description.json  the description itself, written LAST

Every file is written to a temporary name and renamed into place (utils/io.py), and the description is renamed last,
so a reader that sees the description sees complete arrays. Concurrent ranks that miss the cache together each
build the (identical) arrays and rename them over each other; a killed writer leaves only temporaries, never a
truncated array under a final name. Loads use `np.load(mmap_mode="r", allow_pickle=False)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np

from ..utils.io import atomic_write
from ..utils.logging import get_logger

log = get_logger(__name__)


def description_hash(desc: dict) -> str:
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def array_digest(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (for keys that depend on a set of document ids)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def cache_paths(cache_dir: str, kind: str, desc: dict, names: tuple[str, ...]) -> tuple[dict[str, str], str]:
    base = os.path.join(cache_dir, f"{description_hash(desc)}-{kind}")
    return {n: f"{base}-{n}.npy" for n in names}, f"{base}-description.json"


def load_or_build(cache_dir: str | None, kind: str, desc: dict, names: tuple[str, ...],
                  build: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """Return ({name: array}, cache_hit). Builds and saves on a miss; in memory only when cache_dir is None or not
    writable (logged)."""
    if cache_dir is None:
        return build(), False
    paths, desc_path = cache_paths(cache_dir, kind, desc, names)
    if os.path.isfile(desc_path) and all(os.path.isfile(p) for p in paths.values()):
        with open(desc_path, encoding="utf-8") as f:
            found = json.load(f)
        if found != json.loads(json.dumps(desc)):
            raise ValueError(f"{desc_path}: index cache description does not match its hash: expected {desc}, "
                             f"found {found} (hash collision or edited file; delete it)")
        return {n: np.load(p, mmap_mode="r", allow_pickle=False) for n, p in paths.items()}, True
    arrays = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for n, p in paths.items():
            with atomic_write(p) as f:
                np.save(f, np.ascontiguousarray(arrays[n]), allow_pickle=False)
        with atomic_write(desc_path, "w") as f:
            json.dump(desc, f, indent=1, sort_keys=True)
    except OSError as e:
        log.warning("cannot write the %s index cache in %s (%s); keeping the indices in memory", kind, cache_dir, e)
    return arrays, False
