"""The work directory of an annotation run and its chunks (used by labeling/annotate.py; format in its docstring).

A chunk is documents [c * chunk_docs, (c + 1) * chunk_docs): chunk-XXXXXXXX.doc.npy (float32 [docs, 3]) then
chunk-XXXXXXXX.tok.npy (uint8 q per token; written last, its presence marks the chunk complete), each written to a
temporary name and renamed. manifest.json keys what the chunks were computed for.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from ..data.indexed_dataset import IndexedDataset
from ..data.sidecar import quantize_scores, quantize_threshold
from ..utils.io import atomic_write
from ..utils.logging import get_logger
from .labeler import TokenLabeler, check_scores, zero_special_tokens

log = get_logger(__name__)

MANIFEST_FORMAT = 1


def _chunk_paths(work: str, c: int) -> tuple[str, str]:
    base = os.path.join(work, f"chunk-{c:08d}")
    return base + ".tok.npy", base + ".doc.npy"


def document_stats(q: np.ndarray, lengths: np.ndarray, frac_threshold: float) -> np.ndarray:
    """float32 [len(lengths), 3]: mean(q)/255, max(q)/255, mean(q >= ceil(255 T)) per document (0 when empty)."""
    out = np.zeros((lengths.size, 3), dtype=np.float32)
    nonempty = lengths > 0
    if not nonempty.any():
        return out
    starts = (np.cumsum(lengths) - lengths)[nonempty]
    n = lengths[nonempty].astype(np.float64)
    qt = quantize_threshold(frac_threshold)
    out[nonempty, 0] = (np.add.reduceat(q.astype(np.int64), starts) / n / 255.0).astype(np.float32)
    out[nonempty, 1] = (np.maximum.reduceat(q, starts) / 255.0).astype(np.float32)
    out[nonempty, 2] = (np.add.reduceat((q >= qt).astype(np.int64), starts) / n).astype(np.float32)
    return out


# ---- one chunk (runs in the main process or in a worker) ---------------------------------------------------------
def _save_npy(path: str, array: np.ndarray) -> None:
    """np.save atomically; a failed write (disk full: numpy says only "N requested and M written") names the file."""
    try:
        with atomic_write(path) as f:
            np.save(f, array, allow_pickle=False)
    except OSError as e:  # numpy's tofile error carries no errno
        msg = f"writing annotation chunk {path} ({array.nbytes} bytes) failed: {e.strerror or e}"
        raise (OSError(e.errno, msg) if e.errno else OSError(msg)) from e


class _ChunkJob:
    def __init__(self, prefix: str, labeler: TokenLabeler, work: str, chunk_docs: int, frac_threshold: float,
                 special_ids: list[int] = ()):
        self.prefix, self.labeler, self.work = prefix, labeler, work
        self.chunk_docs, self.frac_threshold = chunk_docs, frac_threshold
        self.special_ids = list(special_ids)
        self._ds: IndexedDataset | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ds": None}

    def run(self, c: int) -> int:
        if self._ds is None:
            self._ds = IndexedDataset(self.prefix)
            self._offs = self._ds.document_token_offsets()
        d0 = c * self.chunk_docs
        d1 = min(d0 + self.chunk_docs, self._ds.num_documents)
        offs = self._offs[d0 : d1 + 1]
        tokens = np.asarray(self._ds.tokens(int(offs[0]), int(offs[-1])))
        rel = offs - offs[0]
        docs = [tokens[rel[k] : rel[k + 1]] for k in range(d1 - d0)]
        name = getattr(self.labeler, "name", type(self.labeler).__name__)
        try:
            flat = check_scores(docs, self.labeler.score_documents(docs), name)
        except ValueError as e:
            raise ValueError(f"{self.prefix}: documents [{d0}, {d1}) (chunk {c}): {e}") from e
        q = quantize_scores(zero_special_tokens(tokens, flat, self.special_ids))
        stats = document_stats(q, np.diff(rel), self.frac_threshold)
        tok_path, doc_path = _chunk_paths(self.work, c)
        _save_npy(doc_path, stats)
        _save_npy(tok_path, q)  # written last: its presence marks the chunk complete
        return int(q.size)


_WORKER_JOB: _ChunkJob | None = None


def _worker_init(job: _ChunkJob) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_run(c: int) -> tuple[int, int]:
    assert _WORKER_JOB is not None
    return c, _WORKER_JOB.run(c)


def _created_now() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _open_work_dir(work: str, key: dict, restart: bool) -> str:
    """Create or verify the work directory; returns the creation time kept in the manifest."""
    manifest = os.path.join(work, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            old = json.load(f)
        diffs = [k for k in sorted(set(key) | set(old.get("key", {}))) if old.get("key", {}).get(k) != key.get(k)]
        if diffs:
            if not restart:
                lines = "; ".join(f"{k}: work dir has {old.get('key', {}).get(k)!r}, this run has {key.get(k)!r}"
                                  for k in diffs)
                raise ValueError(f"{manifest}: the unfinished annotation there was made with different settings "
                                 f"({lines}). Re-run with the same settings to resume, or pass --restart to discard "
                                 "it.")
            log.warning("discarding %s (settings changed: %s)", work, ", ".join(diffs))
            shutil.rmtree(work)
        else:
            return str(old["created"])
    elif os.path.isdir(work):
        shutil.rmtree(work)  # killed before the manifest was written: nothing in it is usable
    os.makedirs(work, exist_ok=True)
    created = _created_now()
    with atomic_write(manifest, "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "key": key, "created": created}, f, indent=1, sort_keys=True)
    return created


def _chunk_ok(work: str, c: int, ntok: int, ndoc: int) -> bool:
    tok_path, doc_path = _chunk_paths(work, c)
    if not (os.path.isfile(tok_path) and os.path.isfile(doc_path)):
        return False
    try:
        q = np.load(tok_path, mmap_mode="r", allow_pickle=False)
        d = np.load(doc_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        log.warning("chunk %d in %s is unreadable (%s); labeling it again", c, work, e)
        return False
    if q.dtype != np.uint8 or q.shape != (ntok,) or d.dtype != np.float32 or d.shape != (ndoc, 3):
        log.warning("chunk %d in %s has shapes %s/%s, expected (%d,)/(%d, 3); labeling it again", c, work, q.shape,
                    d.shape, ntok, ndoc)
        return False
    return True
