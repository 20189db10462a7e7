"""One preprocessing run: JSONL inputs -> one `.bin`/`.idx`/`.meta.json` per JSON key, through a work directory
that makes it atomic and resumable (the pipeline, policies and file layout are described in data/preprocess.py).

`run_single(cfg, tokenizer, dtype)` locks the work directory, resumes or starts, encodes every input block through
the worker pool (data/preprocess_workers.py), writes the index and meta, and renames the outputs into place.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..tokenizer.tokenizer import Tokenizer
from ..utils.io import atomic_write, fsync_dir
from ..utils.jsonl import InputError, InputStream, iter_blocks
from ..utils.logging import get_logger
from .indexed_dataset import (
    DTYPE_CODES,
    IndexedDataset,
    dataset_fingerprint,
    dtype_code,
    optimal_dtype,
    write_index,
)
from .preprocess_workers import (
    GC_THRESHOLD,
    BlockResult,
    PreprocessError,
    make_encoder,
    word_cache_status,
    worker_encode,
    worker_init,
)

if TYPE_CHECKING:
    from .preprocess import PreprocessConfig

log = get_logger("megatron_tf.preprocess")

META_FORMAT = "megatron_tf.preprocess.meta"
META_VERSION = 1
STATE_VERSION = 1
_DTYPE_NAMES = {np.dtype(v).name: v for v in DTYPE_CODES.values()}
ISSUE_KINDS = ("bad_json", "not_object", "missing_key", "not_string")


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: `{prefix}_{key}_document` (no sentence splitting)."""
    return f"{output_prefix}_{key}_document"


def meta_path(dataset_prefix: str) -> str:
    return dataset_prefix + ".meta.json"


def resolve_dtype(name: str, vocab_size: int) -> np.dtype:
    dt = np.dtype(optimal_dtype(vocab_size) if name == "auto" else _DTYPE_NAMES[name])
    if np.issubdtype(dt, np.integer) and vocab_size - 1 > np.iinfo(dt).max:
        raise PreprocessError(f"--dtype {dt.name} cannot hold token ids up to {vocab_size - 1} (vocab {vocab_size})")
    return dt


# ---- input position / tasks ------------------------------------------------------------------------------------
@dataclass
class _Task:
    file: int
    data: bytes
    first_line: int
    end_offset: int
    next_line: int
    prefix_sha256: str
    raw_read: int
    eof: bool
    file_record: dict | None  # set on the last block of a file


def _file_id(path: str) -> dict:
    st = os.stat(path)
    return {"path": path, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _start_of(file: int) -> dict:
    return {"file": file, "offset": 0, "line": 1, "prefix_sha256": None, "file_id": None}


def _tasks(cfg: PreprocessConfig, start: dict) -> Iterator[_Task]:
    """Blocks of all inputs from the position `start`."""
    first_file = start["file"]
    for fi in range(first_file, len(cfg.input)):
        path = cfg.input[fi]
        with InputStream(path) as stream:
            sha = hashlib.sha256()
            offset, line = 0, 1
            if fi == first_file and start["offset"]:
                offset, line = start["offset"], start["line"]
                left = offset
                while left:
                    chunk = stream.read(min(left, 1 << 22))
                    if not chunk:
                        raise PreprocessError(f"{path}: shorter than when the interrupted run read it "
                                              f"(expected at least {offset} bytes decompressed)")
                    sha.update(chunk)
                    left -= len(chunk)
                if sha.hexdigest() != start["prefix_sha256"]:
                    raise PreprocessError(f"{path}: its first {offset} bytes changed since the interrupted run "
                                          f"(sha256 {sha.hexdigest()}, expected {start['prefix_sha256']}); "
                                          "rerun with --no-resume")
                log.info(f"resuming {path} at line {line} (byte {offset})")
            for b in iter_blocks(stream, cfg.batch_bytes, line, offset):
                sha.update(b.data)
                rec = None
                if b.eof:
                    rec = {**_file_id(path), "compression": stream.compression, "sha256": stream.raw_sha256(),
                           "lines": b.first_line + b.num_lines - 1, "decompressed_bytes": b.end}
                yield _Task(fi, b.data, b.first_line, b.end, b.first_line + b.num_lines, sha.hexdigest(),
                            stream.raw_bytes_read, b.eof, rec)


# ---- output ----------------------------------------------------------------------------------------------------
class _KeyOutput:
    """Partial output of one JSON key in the work directory: tokens (.bin) and per-document lengths."""

    def __init__(self, work_dir: str, index: int, key: str, final_prefix: str):
        self.key = key
        self.final_prefix = final_prefix
        self.work_prefix = os.path.join(work_dir, f"key{index}")
        self.bin_path = self.work_prefix + ".bin"
        self.len_path = self.work_prefix + ".lengths"
        self.bin_bytes = 0
        self.docs = 0
        self._bin = self._len = None

    def open(self, bin_bytes: int, docs: int) -> None:
        for path, size in ((self.bin_path, bin_bytes), (self.len_path, 4 * docs)):
            if not os.path.exists(path):
                open(path, "wb").close()
            if os.path.getsize(path) < size:
                raise PreprocessError(f"{path}: {os.path.getsize(path)} bytes, shorter than the {size} bytes its "
                                      "checkpoint recorded; rerun with --no-resume")
            os.truncate(path, size)
        self.bin_bytes, self.docs = bin_bytes, docs
        self._bin = open(self.bin_path, "ab")
        self._len = open(self.len_path, "ab")

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self._bin.write(tokens.tobytes())
        self._len.write(lengths.tobytes())
        self.bin_bytes += tokens.nbytes
        self.docs += len(lengths)

    def sync(self) -> None:
        for f in (self._bin, self._len):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self._bin, self._len):
            if f is not None and not f.closed:
                f.close()


_WORK_FILE = re.compile(r"^(state\.json|lock|key\d+\.(bin|lengths|idx|meta\.json))(\.tmp-.*)?$")


def _work_files(work_dir: str, keep_lock: bool = False) -> list[str]:
    """The files this module writes in a work directory (nothing else there is ever touched)."""
    if not os.path.isdir(work_dir):
        return []
    return [os.path.join(work_dir, n) for n in sorted(os.listdir(work_dir))
            if _WORK_FILE.match(n) and not (keep_lock and n == "lock")]


def remove_work_dir(work_dir: str) -> None:
    """Remove our files from the work directory, then the directory if that left it empty."""
    for path in _work_files(work_dir):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    with contextlib.suppress(OSError):
        os.rmdir(work_dir)
    fsync_dir(os.path.dirname(os.path.abspath(work_dir)))


def _final_files(prefix: str) -> list[str]:
    return [prefix + ".bin", meta_path(prefix), prefix + ".idx"]


class _Run:
    def __init__(self, cfg: PreprocessConfig, tokenizer: Tokenizer, dtype: np.dtype):
        self.cfg = cfg
        self.tok = tokenizer
        self.dtype = dtype
        self.work_dir = cfg.resolved_work_dir()
        self.state_path = os.path.join(self.work_dir, "state.json")
        self.outputs = [_KeyOutput(self.work_dir, i, k, output_prefix_for(cfg.output_prefix, k))
                        for i, k in enumerate(cfg.json_keys)]
        self.config = {
            "state_version": STATE_VERSION,
            "inputs": list(cfg.input),
            "json_keys": list(cfg.json_keys),
            "append_eod": cfg.append_eod,
            "on_bad_line": cfg.on_bad_line,
            "on_empty": cfg.on_empty,
            "dtype": dtype.name,
            "tokenizer": tokenizer.describe(),
        }
        self.stats = {
            "lines": 0,
            "blank_lines": 0,
            "bad_lines": dict.fromkeys(ISSUE_KINDS, 0),
            "issues": [],
            "keys": {k: {"documents": 0, "tokens": 0, "empty_skipped": 0, "empty_kept": 0, "max_token_id": -1}
                     for k in cfg.json_keys},
        }
        why_not = word_cache_status(tokenizer) if cfg.word_cache else "--no-word-cache"
        self.word_cache = why_not is None
        log.info("word cache: " + ("on (exact for this tokenizer)" if self.word_cache else f"off ({why_not})"))
        self.files_done: list[dict] = []
        self.position: dict = _start_of(0)  # where reading goes on
        self.phase = "running"
        self._lock = None

    # -- state ---------------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "config": self.config,
            "phase": self.phase,
            "position": self.position,
            "files_done": self.files_done,
            "outputs": [{"key": o.key, "bin_bytes": o.bin_bytes, "docs": o.docs} for o in self.outputs],
            "stats": self.stats,
        }

    def checkpoint(self) -> None:
        for o in self.outputs:
            o.sync()
        with atomic_write(self.state_path, "w") as f:
            json.dump(self._state(), f, indent=1)

    def lock(self) -> None:
        """One run per output prefix: an exclusive lock on a file in the work directory (POSIX only)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        os.makedirs(self.work_dir, exist_ok=True)
        self._lock = open(os.path.join(self.work_dir, "lock"), "a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise PreprocessError(f"another preprocess run holds {self.work_dir} (same --output-prefix); "
                                  "wait for it to finish") from None

    def load_or_start(self) -> None:
        """Resume from the work directory if it holds a compatible checkpoint, else start clean."""
        cfg = self.cfg
        state = None
        if os.path.isdir(self.work_dir):
            if cfg.resume and os.path.isfile(self.state_path):
                with open(self.state_path, encoding="utf-8") as f:
                    state = json.load(f)
                self._check_compatible(state)
            elif _work_files(self.work_dir, keep_lock=True):
                why = "--no-resume" if not cfg.resume else "no checkpoint in it"
                log.info(f"removing partial output of an earlier run in {self.work_dir} ({why})")
                for path in _work_files(self.work_dir, keep_lock=True):
                    os.remove(path)
        os.makedirs(self.work_dir, exist_ok=True)
        if state is None:
            for o in self.outputs:
                o.open(0, 0)
            self.checkpoint()
            return
        self.phase = state["phase"]
        self.position = state["position"]
        self.files_done = state["files_done"]
        self.stats = state["stats"]
        for o, rec in zip(self.outputs, state["outputs"]):
            if self.phase == "running":
                o.open(rec["bin_bytes"], rec["docs"])
            else:
                o.bin_bytes, o.docs = rec["bin_bytes"], rec["docs"]
        log.info(f"resuming from {self.state_path}: {len(self.files_done)} input file(s) done, "
                 f"{sum(k['documents'] for k in self.stats['keys'].values())} documents written")

    def _check_compatible(self, state: dict) -> None:
        old = state.get("config", {})
        diffs = [f"{k}: was {old.get(k)!r}, now {v!r}" for k, v in self.config.items() if old.get(k) != v]
        if diffs:
            raise PreprocessError(
                f"work directory {self.work_dir} holds an interrupted run with different settings ("
                + "; ".join(diffs) + "); rerun with --no-resume to start over, or restore the settings")
        pos = state["position"]
        for rec in state["files_done"] + ([pos["file_id"]] if pos["offset"] else []):
            now = _file_id(rec["path"]) if os.path.isfile(rec["path"]) else None
            if now is None or now["bytes"] != rec["bytes"] or now["mtime_ns"] != rec["mtime_ns"]:
                found = "missing" if now is None else f"{now['bytes']} bytes, mtime_ns {now['mtime_ns']}"
                raise PreprocessError(
                    f"input {rec['path']} changed since the interrupted run (expected {rec['bytes']} bytes, mtime_ns "
                    f"{rec['mtime_ns']}; found {found}); rerun with --no-resume to start over")

    # -- main loop -----------------------------------------------------------------------------------------------
    def handle(self, task: _Task, res: BlockResult) -> None:
        st = self.stats
        if res.fatal is not None:
            line, kind, detail = res.fatal
            raise PreprocessError(f"{self.cfg.input[task.file]}:{line}: {kind}: {detail}")
        st["lines"] += res.lines
        st["blank_lines"] += res.blank
        for kind, n in res.issue_counts.items():
            st["bad_lines"][kind] = st["bad_lines"].get(kind, 0) + n
        room = self.cfg.max_issues_listed - len(st["issues"])
        for line, kind, detail in res.issues[: max(room, 0)]:
            st["issues"].append(f"{self.cfg.input[task.file]}:{line}: {kind}: {detail}")
        for o, tokens, lengths, n_empty in zip(self.outputs, res.tokens, res.lengths, res.empty):
            if tokens.size and int(tokens.max()) >= self.tok.vocab_size:
                raise PreprocessError(
                    f"{self.cfg.input[task.file]}: lines from {task.first_line}: tokenizer "
                    f"{self.tok.path or self.tok.type_name} produced token id {int(tokens.max())}, outside its "
                    f"vocabulary [0, {self.tok.vocab_size}) (a tokenizer whose added tokens lie beyond vocab_size?)")
            o.write(tokens, lengths)
            ks = st["keys"][o.key]
            ks["documents"] += len(lengths)
            ks["tokens"] += int(tokens.size)
            ks["empty_kept" if self.cfg.on_empty == "keep" else "empty_skipped"] += n_empty
            if tokens.size:
                ks["max_token_id"] = max(ks["max_token_id"], int(tokens.max()))
        if task.eof:
            self.files_done.append(task.file_record)
            self.position = _start_of(task.file + 1)
        else:
            self.position = {"file": task.file, "offset": task.end_offset, "line": task.next_line,
                             "prefix_sha256": task.prefix_sha256, "file_id": _file_id(self.cfg.input[task.file])}

    def run(self) -> None:
        cfg = self.cfg
        if self.phase == "running":
            if self.position["file"] < len(cfg.input):
                self._encode_all(self.position)
            for o in self.outputs:
                o.sync()
                o.close()
            self._write_index_and_meta()
            self.phase = "finalizing"
            with atomic_write(self.state_path, "w") as f:
                json.dump(self._state(), f, indent=1)
        self._rename_into_place()
        remove_work_dir(self.work_dir)

    def _encode_all(self, start: dict) -> None:
        cfg = self.cfg
        spec = {
            "tokenizer_type": cfg.tokenizer_type, "tokenizer_model": cfg.tokenizer_model,
            "vocab_size": cfg.vocab_size, "tokenizer_threads": cfg.tokenizer_threads,
            "fingerprint": self.tok.fingerprint, "keys": list(cfg.json_keys), "append_eod": cfg.append_eod,
            "on_empty": cfg.on_empty, "on_bad_line": cfg.on_bad_line, "dtype": self.dtype.name,
            "max_issues": cfg.max_issues_listed, "word_cache": self.word_cache,
        }
        before = np.concatenate([[0], np.cumsum([os.path.getsize(p) for p in cfg.input])]).tolist()
        pool = None
        if cfg.workers > 1:
            ctx = mp.get_context(start_method())
            pool = ctx.Pool(cfg.workers, initializer=worker_init, initargs=(spec,))
            encode = None
        else:
            encode = make_encoder(spec).encode
        progress = _Progress(before[-1], before[start["file"]], cfg.log_interval, self.stats)
        last_ckpt = time.monotonic()
        gc_threshold = gc.get_threshold()
        if pool is None:  # encoding here: the workers' GC thresholds for the run (preprocess_workers.GC_THRESHOLD)
            gc.set_threshold(*GC_THRESHOLD)
        try:
            pending: deque = deque()
            max_pending = 3 * cfg.workers

            def drain(n: int) -> None:
                nonlocal last_ckpt
                while len(pending) > n:
                    task, fut = pending.popleft()
                    self.handle(task, fut.get() if pool is not None else fut)
                    progress.update(before[task.file] + task.raw_read)
                    if time.monotonic() - last_ckpt >= cfg.checkpoint_interval:
                        self.checkpoint()
                        last_ckpt = time.monotonic()

            for task in _tasks(cfg, start):
                args = (task.data, task.first_line)
                fut = pool.apply_async(worker_encode, (args,)) if pool is not None else encode(*args)
                task.data = b""  # the bytes now live in the worker's queue; do not keep them twice
                pending.append((task, fut))
                drain(max_pending)
            drain(0)
            if pool is not None:
                pool.close()
                pool.join()
        finally:
            gc.set_threshold(*gc_threshold)
            if pool is not None:
                pool.terminate()
            progress.close()

    def _write_index_and_meta(self) -> None:
        for o in self.outputs:
            lengths = np.fromfile(o.len_path, dtype=np.int32)
            nonempty = lengths > 0
            seq_lengths = lengths[nonempty]
            doc_idx = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(nonempty, out=doc_idx[1:])
            # a kill while this is written leaves phase "running": the next run rewrites it
            write_index(o.work_prefix + ".idx", self.dtype, seq_lengths, doc_idx)
            ds = IndexedDataset(o.work_prefix)  # validates sizes against the .bin
            ks = self.stats["keys"][o.key]
            if ds.num_tokens != ks["tokens"] or ds.num_documents != ks["documents"]:
                raise PreprocessError(f"{o.work_prefix}: wrote {ds.num_tokens} tokens / {ds.num_documents} documents "
                                      f"but counted {ks['tokens']} / {ks['documents']}")
            meta = self._meta(o, ds)
            with atomic_write(o.work_prefix + ".meta.json", "w") as f:
                json.dump(meta, f, indent=1, sort_keys=False)
                f.write("\n")

    def _meta(self, o: _KeyOutput, ds: IndexedDataset) -> dict:
        st, ks = self.stats, self.stats["keys"][o.key]
        return {
            "format": META_FORMAT,
            "format_version": META_VERSION,
            "megatron_tf_version": __version__,
            "dataset": {
                "prefix": os.path.basename(o.final_prefix),
                "json_key": o.key,
                "dtype": self.dtype.name,
                "dtype_code": dtype_code(self.dtype),
                "fingerprint": dataset_fingerprint(o.work_prefix),
            },
            "tokenizer": self.tok.describe(),
            "append_eod": self.cfg.append_eod,
            "counts": {
                "documents": ds.num_documents,
                "sequences": len(ds),
                "tokens": ds.num_tokens,
                "empty_documents_skipped": ks["empty_skipped"],
                "empty_documents_kept": ks["empty_kept"],
                "lines": st["lines"],
                "blank_lines": st["blank_lines"],
                "bad_lines_skipped": {k: v for k, v in st["bad_lines"].items() if v},
            },
            "max_token_id": ks["max_token_id"],
            "policies": {"on_bad_line": self.cfg.on_bad_line, "on_empty": self.cfg.on_empty},
            "bad_lines_listed": st["issues"],
            "inputs": [{k: r[k] for k in ("path", "compression", "bytes", "sha256", "lines")}
                       for r in self.files_done],
        }

    def _rename_into_place(self) -> None:
        for o in self.outputs:
            install_outputs(o.work_prefix, o.final_prefix)


def install_outputs(work_prefix: str, final_prefix: str) -> None:
    """Rename work .bin, .meta.json, .idx to the final prefix in that order; idempotent so that a kill in between is
    finished by the next run."""
    final = _final_files(final_prefix)
    work = [work_prefix + ".bin", work_prefix + ".meta.json", work_prefix + ".idx"]
    if os.path.exists(work[2]) and os.path.exists(final[2]):
        os.remove(final[2])  # an older dataset's index must not pair with the new .bin
    for w, f in zip(work, final):
        if os.path.exists(w):
            os.replace(w, f)
        elif not os.path.exists(f):
            raise PreprocessError(f"{w} is missing and {f} does not exist; rerun with --no-resume")
    fsync_dir(os.path.dirname(os.path.abspath(final[0])))


class _Progress:
    """tqdm over input bytes (ETA) with docs/s and tokens/s; plain log lines when stderr is not a terminal."""

    def __init__(self, total_bytes: int, done_bytes: int, log_interval: int, stats: dict):
        from tqdm import tqdm

        self.stats = stats
        self.t0 = time.monotonic()
        self.docs0, self.toks0 = self._counts()
        self.log_interval = max(1, log_interval)
        self.next_log = self.docs0 + self.log_interval
        self.bar = tqdm(total=total_bytes, initial=done_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                        desc="preprocess", disable=None, mininterval=1.0, smoothing=0.1)
        self.pos = done_bytes
        self.plain = self.bar.disable and log.isEnabledFor(logging.INFO)

    def _counts(self) -> tuple[int, int]:
        ks = self.stats["keys"].values()
        return max((k["documents"] for k in ks), default=0), sum(k["tokens"] for k in ks)

    def update(self, pos: int) -> None:
        docs, toks = self._counts()
        dt = max(time.monotonic() - self.t0, 1e-9)
        rates = f"{(docs - self.docs0) / dt:,.0f} docs/s, {(toks - self.toks0) / dt:,.0f} tokens/s"
        if pos > self.pos:
            self.bar.update(pos - self.pos)
            self.pos = pos
        if not self.bar.disable:
            self.bar.set_postfix_str(rates, refresh=False)
        elif self.plain and docs >= self.next_log:
            log.info(f"{docs:,} documents, {toks:,} tokens ({rates}); {self.pos / 2**20:,.1f} MiB read")
            self.next_log = docs + self.log_interval

    def close(self) -> None:
        self.bar.close()


def start_method() -> str:
    """fork when this process runs a single thread on Linux, else spawn. A fork of a threaded parent (pytest-xdist,
    a torchrun rank's heartbeat, tqdm's monitor) can deadlock on a lock another thread held; when there is none,
    fork starts the pool at once, where spawn re-imports numpy and the tokenizers in each worker (measured on the
    busy 2-core machine: first results of a 2-worker pool after 0.06-0.08 s with fork, 0.4-0.6 s with spawn; the
    whole SentencePiece benchmark run takes ~6 s)."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def run_single(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype) -> dict[str, dict]:
    """Run (or resume) one preprocessing of cfg.input into cfg.output_prefix; the meta record of each key."""
    run = _Run(cfg, tok, dtype)
    run.lock()
    try:
        run.load_or_start()  # a refused resume keeps the work directory
        try:
            run.run()
        except InputError:
            # bad data: the checkpoint would only replay the same error; leave nothing behind
            for o in run.outputs:
                o.close()
            remove_work_dir(run.work_dir)
            raise
        except BaseException:
            for o in run.outputs:
                o.close()
            log.warning(f"interrupted; partial work is kept in {run.work_dir}: rerun the same command to resume")
            raise
    finally:
        if run._lock is not None:
            run._lock.close()
    metas = {}
    for o in run.outputs:
        with open(meta_path(o.final_prefix), encoding="utf-8") as f:
            metas[o.key] = json.load(f)
    return metas
