"""Preprocessing across processes and nodes (torchrun): ranks take whole input files, rank 0 merges, same bytes.

    torchrun --nnodes N --nproc-per-node G [--rdzv-backend c10d --rdzv-endpoint HOST:PORT] \\
        tools/preprocess_data.py --input shard_*.jsonl.zst --output-prefix P ... --workers W

Every rank runs `--workers` tokenizer processes of its own; the output prefix must be on a filesystem all nodes
share. Input file i becomes the part dataset `P.parts/part{i:06d}_{key}_document.{bin,idx,meta.json}`, written by
the single-process machinery (data/preprocess_run.py: atomic, resumable from its checkpoints), and then a done marker
`P.parts/part{i:06d}.done.json` (the part's settings and the input's size and mtime). Rank 0 plans: the files
without a valid marker, largest first, each to the rank with the fewest bytes so far (longest processing time
first); the plan goes to every rank through utils/dist_work.py's WorkGroup, and rank 0 writes it to P.parts/plan.json,
which every rank must see (else: the prefix is not on a shared filesystem, said by name).

When all ranks have arrived, rank 0 merges (`merge_parts`): every part must have its marker and files, else it
refuses, naming the missing parts and their inputs. The parts' .bin files are concatenated, the .idx rebuilt
(sequence lengths concatenated, document indices shifted) and the meta summed over the parts in input order, into
the work directory P.tmp-preprocess/, then renamed into place (.bin, meta, .idx) as one process does. The result
(.bin, .idx and .meta.json) is byte-identical to a one-process run over the same inputs; the parts are removed
afterwards unless --keep-parts. Disk: the merge needs room for a second copy of the output until it removes the
parts.

Failures. A rank whose part fails (a bad line under --on-bad-line fail, a bad file) tells the others, which stop
with "rank r failed: ..."; a rank that dies (killed, node lost) is noticed within --dist-timeout through its
heartbeat; a rank or node that never starts makes the join fail within --dist-timeout, naming the missing ranks.
Relaunching the same command redoes only the parts without a valid marker (an interrupted part resumes from its
checkpoint). Files are the unit of work: a corpus of a few huge files spreads over at most that many ranks (split it
into shards first; compressed streams cannot be entered in the middle).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..tokenizer.tokenizer import Tokenizer
from ..utils.dist_work import DistWorkError, RankEnv, WorkGroup
from ..utils.io import atomic_write
from ..utils.logging import get_logger
from .indexed_dataset import IndexedDataset, dataset_fingerprint, dtype_code, write_index
from .preprocess_run import (
    ISSUE_KINDS,
    META_FORMAT,
    META_VERSION,
    _file_id,
    install_outputs,
    meta_path,
    output_prefix_for,
    remove_work_dir,
    run_single,
)
from .preprocess_workers import PreprocessError

if TYPE_CHECKING:
    from .preprocess import PreprocessConfig

log = get_logger("megatron_tf.preprocess")


def part_prefix(cfg: PreprocessConfig, i: int) -> str:
    return os.path.join(cfg.parts_dir(), f"part{i:06d}")


def marker_path(cfg: PreprocessConfig, i: int) -> str:
    return part_prefix(cfg, i) + ".done.json"


def part_settings(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype) -> dict:
    """What a part's bytes depend on besides its input file."""
    return {"json_keys": list(cfg.json_keys), "append_eod": cfg.append_eod, "on_bad_line": cfg.on_bad_line,
            "on_empty": cfg.on_empty, "dtype": np.dtype(dtype).name, "tokenizer": tok.describe(),
            "max_issues_listed": cfg.max_issues_listed}


def _part_files(cfg: PreprocessConfig, i: int) -> list[str]:
    return [output_prefix_for(part_prefix(cfg, i), k) + ext for k in cfg.json_keys
            for ext in (".bin", ".idx", ".meta.json")]


def part_is_done(cfg: PreprocessConfig, i: int, settings: dict) -> bool:
    """The part of input i exists, complete, for these settings and this version of the input file."""
    try:
        with open(marker_path(cfg, i), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    path = cfg.input[i]
    return (marker.get("settings") == settings and os.path.isfile(path) and marker.get("input") == _file_id(path)
            and all(os.path.exists(p) for p in _part_files(cfg, i)))


def run_part(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype, i: int, settings: dict) -> None:
    """Preprocess input i into its part (resuming an interrupted one), then write its done marker."""
    part_cfg = dataclasses.replace(cfg, input=[cfg.input[i]], output_prefix=part_prefix(cfg, i), work_dir=None)
    with atomic_write(marker_path(cfg, i) + ".started", "w") as f:  # for people looking at the directory
        f.write(json.dumps({"input": cfg.input[i]}) + "\n")
    run_single(part_cfg, tok, dtype)
    with atomic_write(marker_path(cfg, i), "w") as f:
        json.dump({"input": _file_id(cfg.input[i]), "settings": settings}, f, indent=1)
    os.remove(marker_path(cfg, i) + ".started")


def plan_parts(sizes: list[int], todo: list[int], world_size: int) -> list[list[int]]:
    """Longest processing time first: the largest file goes to the rank with the fewest bytes so far (ties: the
    lower rank); each rank's files in input order."""
    load = [0] * world_size
    plan: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(todo, key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        plan[r].append(i)
        load[r] += sizes[i]
    return [sorted(p) for p in plan]


def preprocess_distributed(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype, env: RankEnv) -> dict[str, dict]:
    """Every rank calls this (module doc); returns the merged meta of each key."""
    settings = part_settings(cfg, tok, dtype)
    with WorkGroup(env, timeout_s=cfg.dist_timeout, name="preprocess") as g:
        if env.rank == 0:
            os.makedirs(cfg.parts_dir(), exist_ok=True)
            todo = [i for i in range(len(cfg.input)) if not part_is_done(cfg, i, settings)]
            sizes = [os.path.getsize(p) for p in cfg.input]
            plan = {"inputs": list(cfg.input), "settings": settings, "todo": todo,
                    "ranks": plan_parts(sizes, todo, env.world_size)}
            with atomic_write(os.path.join(cfg.parts_dir(), "plan.json"), "w") as f:
                json.dump(plan, f, indent=1)
            log.info(f"{len(cfg.input)} input file(s) over {env.world_size} ranks: {len(todo)} to do, "
                     f"{len(cfg.input) - len(todo)} already done in {cfg.parts_dir()}")
            g.publish("plan", plan)
        plan = g.fetch("plan", src=0)
        _check_plan(cfg, env, plan, settings)
        mine = plan["ranks"][env.rank]
        for n, i in enumerate(mine, 1):
            log.info(f"rank {env.rank}: part {n}/{len(mine)}: {cfg.input[i]}")
            run_part(cfg, tok, dtype, i, settings)
        g.all_arrive("parts", {"done": mine})
        if env.rank == 0:
            metas = merge_parts(cfg, tok, dtype)
            g.publish("merged", {"prefixes": [output_prefix_for(cfg.output_prefix, k) for k in cfg.json_keys]})
            g.all_arrive("read", None)
            if not cfg.keep_parts:
                _remove_parts(cfg)
            return metas
        g.fetch("merged", src=0)
        metas = {}
        for k in cfg.json_keys:
            with open(meta_path(output_prefix_for(cfg.output_prefix, k)), encoding="utf-8") as f:
                metas[k] = json.load(f)
        g.all_arrive("read", None)
        return metas


def _check_plan(cfg: PreprocessConfig, env: RankEnv, plan: dict, settings: dict) -> None:
    """Every rank was launched with the same inputs and settings, and sees rank 0's files."""
    if plan["inputs"] != list(cfg.input) or plan["settings"] != settings:
        what = "--input files" if plan["inputs"] != list(cfg.input) else "settings (tokenizer, keys, policies, dtype)"
        raise DistWorkError(f"rank {env.rank}: launched with other {what} than rank 0; every rank must run the same "
                            "command")
    shared = os.path.join(cfg.parts_dir(), "plan.json")
    if not os.path.isfile(shared):
        raise DistWorkError(f"rank {env.rank}: does not see {shared}, written by rank 0: --output-prefix must be on a "
                            "filesystem every node shares")


def merge_parts(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype) -> dict[str, dict]:
    """Concatenate the parts of all inputs into the final datasets (module doc); refuses if any part is missing."""
    settings = part_settings(cfg, tok, dtype)
    missing = [i for i in range(len(cfg.input)) if not part_is_done(cfg, i, settings)]
    if missing:
        listed = ", ".join(f"{os.path.basename(part_prefix(cfg, i))} (input {cfg.input[i]})" for i in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise PreprocessError(
            f"cannot merge {cfg.output_prefix}: {len(missing)} of {len(cfg.input)} parts in {cfg.parts_dir()} are "
            f"missing, incomplete or made with other settings or another version of their input: {listed}{more}; "
            "rerun the same command to make them")
    work_dir = cfg.resolved_work_dir()
    os.makedirs(work_dir, exist_ok=True)
    metas = {}
    for k, key in enumerate(cfg.json_keys):
        parts = [output_prefix_for(part_prefix(cfg, i), key) for i in range(len(cfg.input))]
        work_prefix = os.path.join(work_dir, f"key{k}")
        final_prefix = output_prefix_for(cfg.output_prefix, key)
        metas[key] = _merge_key(cfg, tok, dtype, key, parts, work_prefix, final_prefix)
        install_outputs(work_prefix, final_prefix)
    remove_work_dir(work_dir)
    return metas


def _merge_key(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype, key: str, parts: list[str],
               work_prefix: str, final_prefix: str) -> dict:
    seq_lengths, doc_idx, part_metas = [], [np.zeros(1, dtype=np.int64)], []
    n_seq = 0
    with open(work_prefix + ".bin", "wb") as out:
        for p in parts:
            ds = IndexedDataset(p)
            with open(p + ".bin", "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
            seq_lengths.append(np.asarray(ds.sequence_lengths, dtype=np.int32))
            doc_idx.append(np.asarray(ds.document_indices[1:], dtype=np.int64) + n_seq)
            n_seq += len(ds)
            with open(meta_path(p), encoding="utf-8") as f:
                part_metas.append(json.load(f))
        out.flush()
        os.fsync(out.fileno())
    write_index(work_prefix + ".idx", dtype, np.concatenate(seq_lengths), np.concatenate(doc_idx))
    ds = IndexedDataset(work_prefix)  # validates sizes against the .bin
    meta = merged_meta(cfg, tok, dtype, key, part_metas, ds, os.path.basename(final_prefix),
                       dataset_fingerprint(work_prefix))
    with atomic_write(work_prefix + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=False)
        f.write("\n")
    return meta


def merged_meta(cfg: PreprocessConfig, tok: Tokenizer, dtype: np.dtype, key: str, parts: list[dict],
                ds: IndexedDataset, prefix_name: str, fingerprint: str) -> dict:
    """The meta record a one-process run writes (preprocess_run._Run._meta), from the parts' records in input order."""
    bad = dict.fromkeys(ISSUE_KINDS, 0)
    for m in parts:
        for kind, n in m["counts"]["bad_lines_skipped"].items():
            bad[kind] = bad.get(kind, 0) + n
    total = {c: sum(m["counts"][c] for m in parts)
             for c in ("empty_documents_skipped", "empty_documents_kept", "lines", "blank_lines")}
    listed = [s for m in parts for s in m["bad_lines_listed"]][: cfg.max_issues_listed]
    return {
        "format": META_FORMAT,
        "format_version": META_VERSION,
        "megatron_tf_version": __version__,
        "dataset": {"prefix": prefix_name, "json_key": key, "dtype": np.dtype(dtype).name,
                    "dtype_code": dtype_code(dtype), "fingerprint": fingerprint},
        "tokenizer": tok.describe(),
        "append_eod": cfg.append_eod,
        "counts": {"documents": ds.num_documents, "sequences": len(ds), "tokens": ds.num_tokens,
                   "empty_documents_skipped": total["empty_documents_skipped"],
                   "empty_documents_kept": total["empty_documents_kept"], "lines": total["lines"],
                   "blank_lines": total["blank_lines"], "bad_lines_skipped": {k: v for k, v in bad.items() if v}},
        "max_token_id": max((m["max_token_id"] for m in parts), default=-1),
        "policies": {"on_bad_line": cfg.on_bad_line, "on_empty": cfg.on_empty},
        "bad_lines_listed": listed,
        "inputs": [i for m in parts for i in m["inputs"]],
    }


def _remove_parts(cfg: PreprocessConfig) -> None:
    """Our files in the parts directory, then the directory if that left it empty."""
    d = cfg.parts_dir()
    for i in range(len(cfg.input)):
        for p in [*_part_files(cfg, i), marker_path(cfg, i)]:
            if os.path.exists(p):
                os.remove(p)
    plan = os.path.join(d, "plan.json")
    if os.path.exists(plan):
        os.remove(plan)
    try:
        os.rmdir(d)
    except OSError:
        log.info(f"kept {d}: it holds files this run did not write")
