"""On-disk cache of dataset index arrays (.npy), keyed by a hash of everything that determines them.

Layout in the cache directory, for a description dict `desc` of kind K ("gpt", "blend", "docscore"):

    <sha256(canonical JSON of desc)[:32]>-K-<name>.npy     one file per array (np.save, no pickles)
    <sha256(canonical JSON of desc)[:32]>-K-description.json  the description itself, written LAST

Every file (arrays and description) is written to a temporary name and fsynced, all at once in threads (ext4 then
commits them in about one journal flush: 4 sequential fsyncs took 22-40 ms on the 2-core development machine's disk,
4 concurrent ones 12-24 ms), then renamed into place, the description last, so a reader that sees the description
sees complete arrays. The directory is not fsynced: an entry lost in a crash is only rebuilt. With background=True
(the GPT and blending indices) the arrays are returned as soon as they are built and the same writing happens in one
background thread of this process (so training starts while the cache is made durable; the interpreter waits for
it at exit, and wait_for_cache_writes() waits for it explicitly); a process killed meanwhile leaves temporaries and
no entry, which the next run rebuilds. Concurrent ranks that
miss the cache together each build the (identical) arrays and rename them over each other; a killed writer leaves
only temporaries, never a truncated array under a final name. Loads use `np.load(mmap_mode="r", allow_pickle=False)`;
an entry whose arrays cannot be read (a filesystem that lost data in a crash) is logged and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..utils.io import tmp_path_for
from ..utils.logging import get_logger

log = get_logger(__name__)

# background cache writes of this process: one thread, in submission order (the interpreter joins it at exit)
_background: ThreadPoolExecutor | None = None
_pending: dict[str, Future] = {}  # description path -> its write, until it finishes
_lock = threading.RLock()  # RLock: a write that is already done runs its callback inside submit's lock


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
                  build: Callable[[], dict[str, np.ndarray]], background: bool = False
                  ) -> tuple[dict[str, np.ndarray], bool]:
    """Return ({name: array}, cache_hit). Builds and saves on a miss (in the background thread with background=True;
    module docstring); in memory only when cache_dir is None or not writable (logged)."""
    if cache_dir is None:
        return build(), False
    paths, desc_path = cache_paths(cache_dir, kind, desc, names)
    with _lock:
        writing = _pending.get(desc_path)
    if writing is not None:  # this process is still writing this entry: wait for it rather than build it again
        writing.result()
    if os.path.isfile(desc_path) and all(os.path.isfile(p) for p in paths.values()):
        with open(desc_path, encoding="utf-8") as f:
            found = json.load(f)
        if found != json.loads(json.dumps(desc)):
            raise ValueError(f"{desc_path}: index cache description does not match its hash: expected {desc}, "
                             f"found {found} (hash collision or edited file; delete it)")
        try:
            return {n: np.load(p, mmap_mode="r", allow_pickle=False) for n, p in paths.items()}, True
        except (OSError, ValueError, EOFError) as e:
            log.warning("%s: unreadable %s index cache entry (%s); rebuilding it", desc_path, kind, e)
    arrays = build()
    if background:
        global _background
        with _lock:
            if _background is None:
                _background = ThreadPoolExecutor(1, thread_name_prefix="index-cache")
            future = _background.submit(_save_entry, cache_dir, kind, desc, paths, desc_path, arrays)
            _pending[desc_path] = future
            future.add_done_callback(lambda f, k=desc_path: _finished(k, f))
    else:
        _save_entry(cache_dir, kind, desc, paths, desc_path, arrays)
    return arrays, False


def wait_for_cache_writes() -> None:
    """Wait until every background cache write of this process has finished (each logs its own failure)."""
    with _lock:
        pending = list(_pending.values())
    for f in pending:
        f.result()


def _finished(desc_path: str, future: Future) -> None:
    with _lock:
        if _pending.get(desc_path) is future:
            del _pending[desc_path]


def _save_entry(cache_dir: str, kind: str, desc: dict, paths: dict[str, str], desc_path: str,
                arrays: dict[str, np.ndarray]) -> None:
    try:
        os.makedirs(cache_dir, exist_ok=True)
        writers = [(p, lambda f, a=arrays[n]: np.save(f, np.ascontiguousarray(a), allow_pickle=False))
                   for n, p in paths.items()]
        writers.append((desc_path, lambda f: f.write(json.dumps(desc, indent=1, sort_keys=True).encode("utf-8"))))
        _write_all_synced(writers)
    except OSError as e:
        log.warning("cannot write the %s index cache in %s (%s); keeping the indices in memory", kind, cache_dir, e)


def _write_all_synced(writers: list[tuple[str, Callable]]) -> None:
    """For each (path, write): write(f) into a temporary file beside path; fsync them all concurrently; rename them
    in order (the last one, the description, last)."""
    tmps = []
    try:
        for path, write in writers:
            tmps.append(tmp_path_for(path))
            with open(tmps[-1], "wb") as f:
                write(f)
        with ThreadPoolExecutor(len(tmps)) as pool:
            list(pool.map(_fsync_path, tmps))
        for (path, _), tmp in zip(writers, tmps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise


def _fsync_path(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
