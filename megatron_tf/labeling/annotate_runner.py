"""Annotation runner: label every token of an indexed dataset and write the forget sidecars beside it (command
line, labeler construction: labeling/annotate.py, labeling/registry.py).

    P.N.tokscores   uint8 per token, q = round(255 * score)
    P.N.docscores   float32 per document, columns mean_score, max_score, frac_ge_<T> (T = --doc-frac-threshold)
    P.N.tokmask     packed bits q >= ceil(255 * T) (only with --write-mask-threshold T)

Document scores are functions of the stored q (so they equal what data/filters.py computes from the token scores):
mean_score = mean(q) / 255, max_score = max(q) / 255, frac_ge_T = fraction of tokens with q >= ceil(255 T); all 0
for an empty document.

The dataset is processed in chunks of --chunk-docs documents in document order. Each finished chunk is saved
atomically in the work directory P.N.annotate-work/ (chunk-XXXXXXXX.doc.npy then chunk-XXXXXXXX.tok.npy; the .tok
file marks the chunk complete), next to manifest.json which records what the chunks were computed for (dataset
fingerprint, sizes, chunk size, labeler describe(), tokenizer fingerprint, doc columns, creation time). A re-run
with the same arguments verifies the manifest, keeps the complete chunks, labels the rest, then streams the chunks in
order into the sidecars (temporary names, renamed into place) and removes the work directory. Chunks are pure
functions of (dataset, labeler, chunk index), so the result is byte-identical whatever the number of workers and
however often the run was interrupted. The creation time is taken from SOURCE_DATE_EPOCH when set (reproducible
builds), else the clock at the first start, and kept across resumes.

Under torchrun (RANK/WORLD_SIZE set) ranks label disjoint chunks and rank 0 merges: labeling/annotate_dist.py,
docs/annotation.md. --merge-only labels nothing and refuses, naming them, when chunks are missing.

One run per (P, N) at a time: the lock file P.N.annotate.lock (utils/run_lock.py) names its holder; a second run
fails with that name, a lock left by a dead process on this host is replaced. Under torchrun only rank 0 holds it,
for the job (job = torchrun's run id: a relaunch of the same job takes it over, another job is refused).
Special tokens (eod, hidden, pad) get score 0 whatever the labeler says. With --write-mask-threshold the mask records
the checksum of the token scores it was derived from (docs/sidecar_format.md); without it, a P.N.tokmask left by an
earlier annotation is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np

from .. import __version__
from ..data.indexed_dataset import IndexedDataset, token_id_range
from ..data.sidecar import (
    KIND_DOC_SCORES,
    KIND_TOKEN_MASK,
    KIND_TOKEN_SCORES,
    BitPacker,
    SidecarWriter,
    document_scores_header,
    quantize_scores,
    quantize_threshold,
    sidecar_path,
    token_mask_header,
    token_scores_header,
)
from ..utils.checksum import new_hasher
from ..utils.io import TMP_MARK, read_json, remove_stale_tmp
from ..utils.logging import get_logger
from ..utils.run_lock import run_lock
from .annotate_chunks import (  # noqa: F401  (document_stats, _chunk_paths: part of this module's API)
    MANIFEST_FORMAT,
    _chunk_ok,
    _chunk_paths,
    _ChunkJob,
    _open_work_dir,
    _worker_init,
    _worker_run,
    document_stats,
)
from .labeler import TokenLabeler, special_token_ids

log = get_logger(__name__)



def frac_column(threshold: float) -> tuple[str, float]:
    """Column name frac_ge_<T> and the threshold it stands for: T with two decimals (0.50) when that is exact, else
    up to six; readers (data/filters.py) parse T back from the name, so the name is the threshold used."""
    text = f"{threshold:.2f}" if round(threshold, 2) == threshold else f"{threshold:.6f}".rstrip("0")
    quantize_threshold(float(text))
    return f"frac_ge_{text}", float(text)


def doc_columns(doc_frac_threshold: float) -> list[str]:
    return ["mean_score", "max_score", frac_column(doc_frac_threshold)[0]]


def work_dir_for(prefix: str, name: str) -> str:
    return f"{prefix}.{name}.annotate-work"


# ---- validation ----------------------------------------------------------------------------------------------------
def check_tokenizer(ds: IndexedDataset, tokenizer, fingerprint: str | None = None) -> dict:
    """The tokenizer must be the dataset's (P.meta.json, when present) and cover every token id.

    P.meta.json (written by preprocessing) gives `tokenizer.fingerprint` and `max_token_id`; one whose
    `dataset.fingerprint` is not this dataset's is stale and ignored (with a warning). Without a usable meta.json the
    `.bin` is scanned for its largest id. Returns {"source": "meta.json" | "scan", "max_token_id": ...}.
    """
    meta_path = ds.path_prefix + ".meta.json"
    max_id = None
    meta = None
    if os.path.isfile(meta_path):
        meta = read_json(meta_path, ValueError)
        stated = (meta.get("dataset") or {}).get("fingerprint")
        actual = fingerprint or ds.fingerprint()
        if stated is not None and stated != actual:
            log.warning("%s describes dataset %s..., not %s (%s...): ignored", meta_path, stated[:16], ds.path_prefix,
                        actual[:16])
            meta = None
    if meta is not None:
        tok = meta.get("tokenizer") or {}
        fp = tok.get("fingerprint")
        if fp is not None and fp != tokenizer.fingerprint:
            raise ValueError(
                f"tokenizer mismatch: {meta_path} says the dataset was made with tokenizer fingerprint {fp} "
                f"({tok.get('type', '?')} {tok.get('path', '')}), but the given tokenizer {tokenizer.path} "
                f"({tokenizer.type_name}) has fingerprint {tokenizer.fingerprint}")
        if meta.get("max_token_id") is not None:
            max_id = int(meta["max_token_id"])
    source = "meta.json" if max_id is not None else "scan"
    if max_id is None:
        max_id = token_id_range(ds)[1]  # vectorised, in blocks (indexed_dataset.token_id_range)
    if max_id >= tokenizer.vocab_size:
        where = meta_path if source == "meta.json" else ds.bin_path
        raise ValueError(f"{where}: dataset has token id {max_id}, outside the vocabulary of tokenizer "
                         f"{tokenizer.path} (vocab_size {tokenizer.vocab_size}): wrong --tokenizer-model?")
    return {"source": source, "max_token_id": max_id}


# ---- the run -------------------------------------------------------------------------------------------------------
@dataclass
class AnnotateSummary:
    paths: list[str]
    num_tokens: int
    num_documents: int
    thresholds: list[float]
    token_fraction: dict[float, float]  # tokens with q >= ceil(255 t)
    doc_fraction_any: dict[float, float]  # documents with at least one such token (max_score >= t)
    doc_fraction_mean: dict[float, float]  # documents with mean_score >= t
    doc_fraction_frac: float  # documents with frac_ge_T >= 0.5 (T = doc_frac_threshold)
    doc_frac_threshold: float
    seconds: float
    resumed_chunks: int
    notes: list[str] = field(default_factory=list)  # labeler-specific lines (the classifier's cost accounting)
    # per labeling process (torchrun rank): {"rank", "host", "workers", "chunks", "tokens", "seconds"}; seconds are
    # wall time of that process's labeling (time.perf_counter), tokens those of the chunks it labeled
    ranks: list[dict] = field(default_factory=list)
    merge_seconds: float = 0.0  # chunks -> sidecars (wall, time.perf_counter), including the checks and checksums

    def format(self) -> str:
        rate = self.num_tokens / max(self.seconds, 1e-9)
        lines = [f"annotated {self.num_tokens:,} tokens in {self.num_documents:,} documents in {self.seconds:.1f} s "
                 f"({rate:,.0f} tokens/s)"
                 + (f" ({self.resumed_chunks} chunks kept from an interrupted run)" if self.resumed_chunks else "")]
        for t in self.thresholds:
            lines.append(f"  threshold {t:.2f}: {self.token_fraction[t]:.2%} of tokens flagged; documents with "
                         f"max_score >= {t:.2f}: {self.doc_fraction_any[t]:.2%}, mean_score >= {t:.2f}: "
                         f"{self.doc_fraction_mean[t]:.2%}")
        lines.append(f"  documents with {frac_column(self.doc_frac_threshold)[0]} >= 0.50: "
                     f"{self.doc_fraction_frac:.2%}")
        lines += [f"  wrote {p}" for p in self.paths]
        lines += self.rate_lines()
        lines += self.notes
        return "\n".join(lines)


    def rate_lines(self) -> list[str]:
        """Labeler throughput per process and the merge time (tokens/s = tokens labeled / labeling wall seconds)."""
        lines = []
        for r in self.ranks:
            rate = f"{r['tokens'] / r['seconds']:,.0f} tokens/s" if r["seconds"] > 0 and r["tokens"] else "-"
            lines.append(f"  labeling, rank {r['rank']} ({r['host']}, {r['workers']} worker(s)): {r['chunks']} chunks, "
                         f"{r['tokens']:,} tokens in {r['seconds']:.2f} s: {rate}")
        lines.append(f"  merge (chunks -> sidecars): {self.merge_seconds:.2f} s")
        return lines


def annotate(prefix: str, labeler: TokenLabeler, tokenizer, *, name: str = "forget",
             write_mask_threshold: float | None = None, doc_frac_threshold: float = 0.5, workers: int = 1,
             chunk_docs: int = 1024, restart: bool = False, progress: bool = True,
             merge_only: bool = False) -> AnnotateSummary:
    """Label `prefix` with `labeler` and write P.name.{tokscores,docscores[,tokmask]}. Resumable; see module doc.
    Raises LockHeld (utils/run_lock.py) when another run annotates the same prefix and name. merge_only: label
    nothing, merge the chunks of the work directory (ValueError naming the missing ones when any is missing)."""
    with run_lock(lock_path_for(prefix, name), f"annotate run of {prefix} --name {name}"):
        return _annotate(prefix, labeler, tokenizer, name=name, write_mask_threshold=write_mask_threshold,
                         doc_frac_threshold=doc_frac_threshold, workers=workers, chunk_docs=chunk_docs,
                         restart=restart, progress=progress, merge_only=merge_only)


def lock_path_for(prefix: str, name: str) -> str:
    return f"{prefix}.{name}.annotate.lock"


@dataclass
class _Plan:
    """What a run labels: the dataset, its chunks, the work directory and (on the merging process) what is done."""

    ds: IndexedDataset
    fingerprint: str
    key: dict
    work: str
    nchunks: int
    bounds: list[tuple[int, int]]
    ntok: list[int]
    job: _ChunkJob
    columns: list[str]
    doc_frac_threshold: float
    meta: dict | None = None  # sidecar metadata (setup only)
    done: list[int] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)


def _plan(prefix: str, labeler: TokenLabeler, tokenizer, *, name: str, doc_frac_threshold: float, chunk_docs: int,
          restart: bool = False, setup: bool = True) -> _Plan:
    """The run's plan. setup (one process per run: the lock holder): check the tokenizer, create or verify the work
    directory, remove temporaries, find the complete chunks. Without setup only what labeling needs."""
    ds = IndexedDataset(prefix)
    fingerprint = ds.fingerprint()
    check = check_tokenizer(ds, tokenizer, fingerprint) if setup else None
    doc_frac_threshold = frac_column(doc_frac_threshold)[1]
    columns = doc_columns(doc_frac_threshold)
    special_ids = special_token_ids(tokenizer)
    key = {"format": MANIFEST_FORMAT, "dataset_fingerprint": fingerprint, "num_tokens": ds.num_tokens,
           "num_documents": ds.num_documents, "chunk_docs": chunk_docs, "labeler": labeler.describe(),
           "tokenizer_fingerprint": tokenizer.fingerprint, "columns": columns, "special_ids": special_ids}
    key = json.loads(json.dumps(key))
    work = work_dir_for(prefix, name)
    doc_offs = ds.document_token_offsets()
    nchunks = (ds.num_documents + chunk_docs - 1) // chunk_docs
    bounds = [(c * chunk_docs, min((c + 1) * chunk_docs, ds.num_documents)) for c in range(nchunks)]
    ntok = [int(doc_offs[b] - doc_offs[a]) for a, b in bounds]
    job = _ChunkJob(prefix, labeler, work, chunk_docs, doc_frac_threshold, special_ids)
    plan = _Plan(ds, fingerprint, key, work, nchunks, bounds, ntok, job, columns, doc_frac_threshold)
    if not setup:
        return plan
    created = _open_work_dir(work, key, restart)
    for f in os.listdir(work):  # temporaries of chunk files being written when a run was killed
        if TMP_MARK in f:
            os.remove(os.path.join(work, f))
    for p in (sidecar_path(prefix, k, name) for k in (KIND_TOKEN_SCORES, KIND_TOKEN_MASK, KIND_DOC_SCORES)):
        remove_stale_tmp(p)
    plan.done = [c for c in range(nchunks) if _chunk_ok(work, c, ntok[c], bounds[c][1] - bounds[c][0])]
    plan.todo = sorted(set(range(nchunks)) - set(plan.done))
    if plan.done:
        log.info("%s: resuming, %d of %d chunks already labeled", work, len(plan.done), nchunks)
    tok_info = {"type": tokenizer.type_name, "fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                "special_ids": special_ids}
    plan.meta = {"labeler": labeler.describe(), "tokenizer": tok_info, "created": created,
                 "megatron_tf_version": __version__, "doc_frac_threshold": doc_frac_threshold,
                 "max_token_id": check["max_token_id"]}
    return plan


def _label(plan: _Plan, chunks: list[int], workers: int, progress: bool, desc: str = "") -> dict:
    """Label `chunks` (in this process or a pool); returns {"chunks", "tokens", "seconds"} of this labeling."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=sum(plan.ntok[c] for c in chunks), unit="tok", unit_scale=True, disable=not progress,
               desc=f"annotate {os.path.basename(plan.ds.path_prefix)}{desc}", smoothing=0.1)
    try:
        if workers == 1 or len(chunks) <= 1:
            for c in chunks:
                bar.update(plan.job.run(c))
        else:
            _run_pool(plan.job, chunks, workers, bar)
    finally:
        bar.close()
    return {"chunks": len(chunks), "tokens": sum(plan.ntok[c] for c in chunks),
            "seconds": time.perf_counter() - t0}


def missing_chunks(plan: _Plan) -> list[int]:
    return [c for c in range(plan.nchunks)
            if not _chunk_ok(plan.work, c, plan.ntok[c], plan.bounds[c][1] - plan.bounds[c][0])]


def _merge(plan: _Plan, name: str, write_mask_threshold: float | None) -> AnnotateSummary:
    """Chunks -> sidecars; refuses, naming them, when chunks are missing. Removes the work directory."""
    missing = missing_chunks(plan)
    if missing:
        shown = ", ".join(f"chunk-{c:08d} (documents [{plan.bounds[c][0]}, {plan.bounds[c][1]}))"
                          for c in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ValueError(f"{plan.work}: cannot merge: {len(missing)} of {plan.nchunks} chunks are missing or "
                         f"incomplete: {shown}. Run the same command without --merge-only to label them (with "
                         "several nodes the work directory must be on a filesystem every node sees)")
    t0 = time.perf_counter()
    summary = _finalize(plan.ds, plan.fingerprint, plan.work, plan.nchunks, name, plan.meta, plan.columns,
                        write_mask_threshold, plan.doc_frac_threshold)
    shutil.rmtree(plan.work)
    summary.merge_seconds = time.perf_counter() - t0
    summary.resumed_chunks = len(plan.done)
    return summary


def _annotate(prefix: str, labeler: TokenLabeler, tokenizer, *, name: str, write_mask_threshold: float | None,
              doc_frac_threshold: float, workers: int, chunk_docs: int, restart: bool, progress: bool,
              merge_only: bool = False) -> AnnotateSummary:
    t_start = time.time()
    if merge_only and not os.path.isfile(os.path.join(work_dir_for(prefix, name), "manifest.json")):
        raise ValueError(f"--merge-only: no unfinished annotation to merge ({work_dir_for(prefix, name)}/manifest.json "
                         "does not exist)")
    plan = _plan(prefix, labeler, tokenizer, name=name, doc_frac_threshold=doc_frac_threshold,
                 chunk_docs=chunk_docs, restart=restart)
    stats = {"chunks": 0, "tokens": 0, "seconds": 0.0}
    if not merge_only:
        stats = _label(plan, plan.todo, workers, progress)
    summary = _merge(plan, name, write_mask_threshold)
    summary.ranks = [{"rank": 0, "host": socket.gethostname(), "workers": workers, **stats}]
    summary.seconds = time.time() - t_start
    return summary


def _run_pool(job: _ChunkJob, todo: list[int], workers: int, bar) -> None:
    # spawn: workers start clean (no inherited threads or locks from the parent; safe with torch labelers).
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(job,)) as ex:
        pending, it = set(), iter(todo)
        try:
            for c in it:
                pending.add(ex.submit(_worker_run, c))
                if len(pending) >= 2 * workers:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        bar.update(f.result()[1])
            for f in pending:
                bar.update(f.result()[1])
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _finalize(ds: IndexedDataset, fingerprint: str, work: str, nchunks: int, name: str, meta: dict,
              columns: list[str], mask_threshold: float | None, frac_threshold: float) -> AnnotateSummary:
    """Stream the chunks, in order, into the sidecars; count the summary on the way."""
    prefix = ds.path_prefix
    thresholds = sorted({0.5, frac_threshold} | ({mask_threshold} if mask_threshold is not None else set()))
    qts = {t: quantize_threshold(t) for t in thresholds}
    tok_count = dict.fromkeys(thresholds, 0)
    any_count = dict.fromkeys(thresholds, 0)
    mean_count = dict.fromkeys(thresholds, 0)
    frac_count = 0
    mask_path = sidecar_path(prefix, KIND_TOKEN_MASK, name)
    binding = None
    if mask_threshold is not None:  # the mask's header (written first) records the token scores' checksum
        h = new_hasher()
        for c in range(nchunks):
            h.update(np.load(_chunk_paths(work, c)[0], allow_pickle=False))
        binding = h.hexdigest()
    writers = [SidecarWriter(sidecar_path(prefix, KIND_DOC_SCORES, name),
                             document_scores_header(ds, columns, meta, fingerprint)),
               SidecarWriter(sidecar_path(prefix, KIND_TOKEN_SCORES, name), token_scores_header(ds, meta, fingerprint))]
    packer = None
    if mask_threshold is not None:
        writers.append(SidecarWriter(mask_path, token_mask_header(ds, mask_threshold, meta, fingerprint, binding)))
        packer = BitPacker()
    try:
        for c in range(nchunks):
            tok_path, doc_path = _chunk_paths(work, c)
            q = np.load(tok_path, allow_pickle=False)
            d = np.load(doc_path, allow_pickle=False)
            writers[0].write(d)
            writers[1].write(q)
            if packer is not None:
                writers[2].write(packer.feed(q >= qts[mask_threshold]))
            for t, qt in qts.items():
                tok_count[t] += int(np.count_nonzero(q >= qt))
                any_count[t] += int(np.count_nonzero(quantize_scores(d[:, 1]) >= qt))
                mean_count[t] += int(np.count_nonzero(d[:, 0] >= t))
            frac_count += int(np.count_nonzero(d[:, 2] >= 0.5))
        if packer is not None:
            writers[2].write(packer.finish())
            if writers[1].checksum != binding:
                raise RuntimeError(f"{work}: chunk files changed while writing the sidecars")
        elif os.path.isfile(mask_path):  # from an earlier annotation: it would not match the new token scores
            os.remove(mask_path)
            log.warning("removed %s: it was made by an earlier annotation of %s and this run writes no mask "
                        "(pass --write-mask-threshold T to write one)", mask_path, prefix)
        paths = [w.commit() for w in writers]
    except BaseException:
        for w in writers:
            with contextlib.suppress(OSError):
                w.abort()
        raise
    nt, nd = max(ds.num_tokens, 1), max(ds.num_documents, 1)
    return AnnotateSummary(
        paths=paths, num_tokens=ds.num_tokens, num_documents=ds.num_documents, thresholds=thresholds,
        token_fraction={t: tok_count[t] / nt for t in thresholds},
        doc_fraction_any={t: any_count[t] / nd for t in thresholds},
        doc_fraction_mean={t: mean_count[t] / nd for t in thresholds},
        doc_fraction_frac=frac_count / nd, doc_frac_threshold=frac_threshold, seconds=0.0, resumed_chunks=0)
