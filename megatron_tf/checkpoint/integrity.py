"""Checkpoint integrity: a checksum of every file (iter_N/checksums.json), verified on load and by tools/verify.py.

    iter_0000200/checksums.json   {"format": "megatron_tf-checksums-v1", "algorithm": "xxh3_64",
                                   "files": {"mp_rank_00_000/model.safetensors": {"xxh3_64": "<16 hex>",
                                   "bytes": 123}, "config.json": {...}, ...}}

Every file of the directory except checksums.json itself is listed (the safetensors files' checksum covers the
whole file: header and tensor data). Each rank checksums the files it wrote (re-read from the page cache right
after the fsync) into checksums/rank_NNNNN.json; rank 0 merges them into checksums.json before the directory is
renamed into place, so a checkpoint that `latest` names always carries its checksums.

Loading verifies each file against the manifest before parsing it (utils/checksum.py: XXH3-64 in 8 MiB chunks):
a flipped byte, a truncated or a replaced file is an error naming the file, the expected and the found checksum,
and the previous complete checkpoint. Checkpoints written before checksums existed (no checksums.json) load
with one warning. Cost: one extra sequential read of each file (from the page cache when it was just written).
"""

from __future__ import annotations

import json
import os
import re

from safetensors import SafetensorError, safe_open

from megatron_tf.utils.checksum import ALGORITHM, ChecksumError, digest_file, verify_file
from megatron_tf.utils.io import read_json
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)

MANIFEST = "checksums.json"
PIECES = "checksums"  # per-rank pieces, merged by rank 0 and removed before the rename
MANIFEST_FORMAT = "megatron_tf-checksums-v1"
ITER_RE = re.compile(r"^iter_(\d{7,})$")
_warned_unverified: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, another layout, corrupt)."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file differs from its checksum, is truncated, or cannot be parsed."""


def file_entry(path: str) -> dict:
    return {ALGORITHM: digest_file(path), "bytes": os.path.getsize(path)}


def write_piece(ckpt_tmp: str, rank: int, paths: list[str]) -> None:
    """Checksum `paths` (files this rank wrote under ckpt_tmp) into checksums/rank_NNNNN.json."""
    entries = {os.path.relpath(p, ckpt_tmp): file_entry(p) for p in paths}
    d = os.path.join(ckpt_tmp, PIECES)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"rank_{rank:05d}.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def merge_pieces(ckpt_tmp: str, extra_paths: list[str]) -> None:
    """Rank 0: merge every rank's piece plus `extra_paths` (config/state JSON) into checksums.json."""
    files: dict[str, dict] = {}
    d = os.path.join(ckpt_tmp, PIECES)
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        files.update(read_json(os.path.join(d, name), CheckpointCorrupt))
    for p in extra_paths:
        files[os.path.relpath(p, ckpt_tmp)] = file_entry(p)
    with open(os.path.join(ckpt_tmp, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"format": MANIFEST_FORMAT, "algorithm": ALGORITHM, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    if os.path.isdir(d):
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))
        os.rmdir(d)


def write_manifest(ckpt_dir: str) -> None:
    """checksums.json for every file of a checkpoint directory written by one process (e.g. tools/import_hf.py);
    call it on the temporary directory before renaming it into place."""
    paths = [os.path.join(r, n) for r, _, ns in os.walk(ckpt_dir) for n in ns if n != MANIFEST]
    merge_pieces(ckpt_dir, sorted(paths))


def checkpoint_root(path: str) -> str | None:
    """The iter_* directory holding `path` (a file at most two levels down), or None."""
    d = os.path.dirname(os.path.abspath(path))
    for cand in (d, os.path.dirname(d)):
        if ITER_RE.match(os.path.basename(cand)):
            return cand
    return None


def read_manifest(ckpt_dir: str) -> dict | None:
    """{relpath: entry} of checksums.json, or None for a checkpoint written before checksums."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    m = read_json(path, CheckpointCorrupt)
    if m.get("format") != MANIFEST_FORMAT or m.get("algorithm") != ALGORITHM:
        raise CheckpointCorrupt(f"{path}: format {m.get('format')!r} / algorithm {m.get('algorithm')!r}, expected "
                                f"{MANIFEST_FORMAT!r} / {ALGORITHM!r}")
    return m["files"]


def verify_one(path: str) -> None:
    """Check one checkpoint file against its directory's checksums.json (CheckpointCorrupt naming the file).
    Files outside an iter_* directory, or in one without checksums.json, are not checked (warned once)."""
    root = checkpoint_root(path)
    if root is None:
        return
    files = read_manifest(root)
    if files is None:
        if root not in _warned_unverified:
            _warned_unverified.add(root)
            log.warning("%s has no %s (written before checkpoint checksums, or by a writer that records none): its "
                        "files are not verified", root, MANIFEST)
        return
    rel = os.path.relpath(os.path.abspath(path), root)
    entry = files.get(rel)
    if entry is None:
        raise CheckpointCorrupt(f"{path}: not listed in {os.path.join(root, MANIFEST)} (a file added after the "
                                "checkpoint was written?)")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise CheckpointCorrupt(f"{path}: {size} bytes, {entry['bytes']} when written (truncated or partly "
                                "written/copied file)")
    try:
        verify_file(path, entry[ALGORITHM], what="file")
    except ChecksumError as e:
        raise CheckpointCorrupt(str(e)) from e


def iteration_of(ckpt_dir: str) -> int | None:
    m = ITER_RE.match(os.path.basename(os.path.normpath(ckpt_dir)))
    return int(m.group(1)) if m else None


def checkpoint_dirs(save_dir: str) -> list[tuple[int, str]]:
    """(iteration, path) of the iter_* directories in `save_dir`, newest first."""
    if not os.path.isdir(save_dir):
        return []
    out = []
    for name in os.listdir(save_dir):
        m = ITER_RE.match(name)
        if m and os.path.isdir(os.path.join(save_dir, name)):
            out.append((int(m.group(1)), os.path.join(save_dir, name)))
    return sorted(out, reverse=True)


def verify_checkpoint(ckpt_dir: str) -> tuple[int, int, list[str]]:
    """(files checked, bytes checked, problems) of a whole iter_* directory: every file of checksums.json is
    verified, files on disk that it does not list are problems too. Without checksums.json (an older checkpoint)
    the JSON files must parse and the safetensors headers must read; that is all that can be checked."""
    files = read_manifest(ckpt_dir)
    problems: list[str] = []
    n = nbytes = 0
    on_disk = set()
    for root, _, names in os.walk(ckpt_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), ckpt_dir)
            if rel != MANIFEST:
                on_disk.add(rel)
    if files is None:
        problems.append(f"{ckpt_dir}: no {MANIFEST} (written before checkpoint checksums): only the file formats "
                        "were checked")
        for rel in sorted(on_disk):
            p = os.path.join(ckpt_dir, rel)
            try:
                if rel.endswith(".safetensors"):
                    with safe_open(p, "pt") as f:
                        f.keys()
                elif rel.endswith(".json"):
                    read_json(p)
            except (SafetensorError, ValueError, OSError) as e:
                problems.append(f"{p}: {e}")
            n, nbytes = n + 1, nbytes + os.path.getsize(p)
        return n, nbytes, problems
    for rel in sorted(files):
        p = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(p):
            problems.append(f"{p}: missing (listed in {MANIFEST})")
            continue
        try:
            verify_one(p)
        except CheckpointCorrupt as e:
            problems.append(str(e))
        n, nbytes = n + 1, nbytes + os.path.getsize(p)
    problems += [f"{os.path.join(ckpt_dir, rel)}: not listed in {MANIFEST}" for rel in sorted(on_disk - set(files))]
    return n, nbytes, problems


def previous_complete(ckpt_dir: str) -> str | None:
    """The newest iter_* directory beside `ckpt_dir` older than it whose files all verify, or None."""
    it = iteration_of(ckpt_dir)
    save_dir = os.path.dirname(os.path.abspath(ckpt_dir))
    for i, d in checkpoint_dirs(save_dir):
        if it is not None and i >= it:
            continue
        _, _, problems = verify_checkpoint(d)
        if not [p for p in problems if f"no {MANIFEST}" not in p]:
            return d
    return None


def pointer_to_previous(ckpt_dir: str) -> str:
    """A sentence naming the previous complete checkpoint and how to load it."""
    prev = previous_complete(ckpt_dir)
    if prev is None:
        return f"no earlier complete checkpoint in {os.path.dirname(os.path.abspath(ckpt_dir))}"
    return (f"the previous complete checkpoint is {prev}: load it with --ckpt-step {iteration_of(prev)} "
            f"(or --load {prev})")
