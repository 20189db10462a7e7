"""Annotation across processes and nodes: `torchrun ... tools/annotate.py ...` (docs/annotation.md).

Every rank opens the dataset and builds the same labeler; rank 0 takes the job's lock (P.N.annotate.lock with
job = torchrun's run id), checks the tokenizer, creates or verifies the work directory and finds the chunks already
complete (a relaunch after a kill keeps them); it publishes the manifest key and the chunks still to label. Each
rank checks that its own key (dataset fingerprint, labeler, tokenizer, chunk size, columns) is rank 0's, labels its
round-robin share (utils/dist_work.partition) into the shared work directory, and reports its count and time. When
every rank has arrived, rank 0 merges the chunks into the sidecars exactly as a one-process run does (so the files
are byte-identical) and publishes the result; the others return a short summary of their own share.

Failure never hangs (utils/dist_work.WorkGroup): a rank that raises tells the others, which fail with its message;
a rank that dies (or a node lost) stops its heartbeat and the others fail within --dist-timeout seconds naming it;
a rank that never joins makes the others fail after --dist-timeout naming it. torchrun itself also stops the whole
job when one worker exits with an error. The chunk files written before the failure stay; the same command resumes.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass

from ..utils.dist_work import WorkGroup, partition
from ..utils.logging import get_logger
from ..utils.run_lock import run_lock
from . import annotate_runner as A

log = get_logger(__name__)


@dataclass
class RankSummary:
    """What a rank other than 0 prints: its own share (rank 0 prints the whole run's AnnotateSummary)."""

    rank: int
    stats: dict
    seconds: float

    def format(self) -> str:
        s = self.stats
        rate = f"{s['tokens'] / s['seconds']:,.0f} tokens/s" if s["seconds"] > 0 and s["tokens"] else "-"
        return (f"rank {self.rank}: labeled {s['chunks']} chunks, {s['tokens']:,} tokens in {s['seconds']:.2f} s "
                f"({rate}); rank 0 merged the sidecars; {self.seconds:.1f} s in all")


def _runs(xs: list[int]) -> list[list[int]]:
    """Sorted ints as [start, stop) runs: a fresh run's million chunks travel through the store as one pair."""
    out: list[list[int]] = []
    for x in xs:
        if out and out[-1][1] == x:
            out[-1][1] = x + 1
        else:
            out.append([x, x + 1])
    return out


def _expand(runs: list[list[int]]) -> list[int]:
    return [x for a, b in runs for x in range(a, b)]


def _key_diffs(mine: dict, theirs: dict) -> list[str]:
    return [f"{k}: rank 0 has {theirs.get(k)!r}, this rank has {mine.get(k)!r}"
            for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def annotate_distributed(group: WorkGroup, prefix: str, labeler, tokenizer, *, name: str = "forget",
                         write_mask_threshold: float | None = None, doc_frac_threshold: float = 0.5,
                         workers: int = 1, chunk_docs: int = 1024, restart: bool = False, progress: bool = True,
                         merge_only: bool = False):
    """One rank's part of a distributed annotation (see module doc). Rank 0 returns an AnnotateSummary of the
    whole run (with every rank's stats in .ranks); other ranks return a RankSummary."""
    env = group.env
    t_start = time.time()
    lock = (run_lock(A.lock_path_for(prefix, name), f"annotate job of {prefix} --name {name}", job=env.run_id)
            if env.rank == 0 else contextlib.nullcontext())
    with lock:
        if env.rank == 0:
            if merge_only:
                raise ValueError("--merge-only runs in one process: launch it without torchrun")
            plan = A._plan(prefix, labeler, tokenizer, name=name, doc_frac_threshold=doc_frac_threshold,
                           chunk_docs=chunk_docs, restart=restart)
            group.publish("plan", {"key": plan.key, "todo": _runs(plan.todo)})
        else:
            plan = A._plan(prefix, labeler, tokenizer, name=name, doc_frac_threshold=doc_frac_threshold,
                           chunk_docs=chunk_docs, setup=False)
            p0 = group.fetch("plan", src=0)
            diffs = _key_diffs(plan.key, p0["key"])
            if diffs:
                raise ValueError(f"rank {env.rank} was launched with other settings or sees another dataset than "
                                 f"rank 0 ({'; '.join(diffs)}): every rank must get the same arguments and files")
            plan.todo = _expand(p0["todo"])
        mine = partition(plan.todo, env.rank, env.world_size)
        log.info("rank %d of %d: labeling %d of the %d chunks still to do", env.rank, env.world_size, len(mine),
                 len(plan.todo))
        stats = A._label(plan, mine, workers, progress and env.rank == 0, desc=f" (rank {env.rank})")
        stats.update(rank=env.rank, host=socket.gethostname(), workers=workers)
        infos = group.all_arrive("labeled", stats)
        if env.rank != 0:
            group.fetch("merged", src=0)
            return RankSummary(env.rank, stats, time.time() - t_start)
        summary = A._merge(plan, name, write_mask_threshold)
        group.publish("merged", {"paths": summary.paths})
        summary.ranks = infos
        summary.seconds = time.time() - t_start
        return summary
