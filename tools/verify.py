#!/usr/bin/env python3
"""Verify checkpoints and dataset sidecars against their checksums (XXH3-64, megatron_tf/utils/checksum.py).

    python tools/verify.py runs/x                  # the checkpoint `latest` names (--all: every iter_* in runs/x)
    python tools/verify.py runs/x/iter_0000200     # one checkpoint directory
    python tools/verify.py data/corpus_text_document   # a dataset prefix P: every sidecar P.<name>.{tokscores,
                                                       # tokmask,docscores} (payload checksum, mask binding)

A checkpoint directory is checked file by file against its checksums.json (every listed file present, same size
and checksum; no unlisted file); a checkpoint written before checksums can only have its JSON and safetensors
headers parsed (reported). A dataset prefix is checked with megatron_tf.data.sidecar.verify_sidecars; the .bin/.idx
pair carries no checksum (its header is validated whenever it is opened). Prints one line per target with the
bytes read and the rate; exit status 0 when everything verifies, 1 when something does not, 2 for a path that is
neither a checkpoint nor a dataset prefix.

Cost: one sequential read of every byte. On this 2-core VM, benchmarks/bench_checksum.py measured 0.24 s per GB
(GB = 1e9 bytes) for digest_file from the page cache and 0.06 s per GB for XXH3-64 in memory (median of 7, 256 MiB;
benchmarks/results/checksum_vm_2cores.json), so reading from disk is the bound on real storage.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.checkpoint.format import LATEST, CheckpointError, resolve_checkpoint_dir  # noqa: E402
from megatron_tf.checkpoint.integrity import checkpoint_dirs, verify_checkpoint  # noqa: E402
from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e9:.3f} GB in {seconds:.2f} s" + (f" ({nbytes / 1e9 / seconds:.2f} GB/s)" if seconds > 0
                                                         else "")


def verify_checkpoint_dir(path: str) -> bool:
    t0 = time.perf_counter()
    n, nbytes, problems = verify_checkpoint(path)
    dt = time.perf_counter() - t0
    old_format = [p for p in problems if "no checksums.json" in p]
    failed = [p for p in problems if p not in old_format]
    status = "FAILED" if failed else ("UNVERIFIED" if old_format else "OK")
    print(f"{status} checkpoint {path}: {n} files, {_rate(nbytes, dt)}")
    for p in problems:
        print(f"  {p}")
    return not failed


def checkpoint_targets(path: str, every: bool) -> list[str]:
    """The iter_* directories to verify for a checkpoint path (raises CheckpointError for a bad `latest`)."""
    if every and not os.path.basename(os.path.normpath(path)).startswith("iter_"):
        found = [d for _, d in checkpoint_dirs(path)]
        if not found:
            raise CheckpointError(f"{path}: no iter_* checkpoint directories")
        return found
    d = resolve_checkpoint_dir(path)
    if d is None:
        raise CheckpointError(f"{path}: no `{LATEST}` file and no iter_* directory: not a checkpoint")
    return [d]


def verify_prefix(prefix: str) -> bool:
    from megatron_tf.data.sidecar import verify_sidecars

    paths = sorted(glob.glob(glob.escape(prefix) + ".*.tok*") + glob.glob(glob.escape(prefix) + ".*.docscores"))
    nbytes = sum(os.path.getsize(p) for p in paths)
    t0 = time.perf_counter()
    try:
        checked = verify_sidecars(prefix)
    except (ValueError, OSError) as e:  # ChecksumError and SidecarError are ValueErrors naming the file
        print(f"FAILED dataset {prefix}: {e}")
        return False
    dt = time.perf_counter() - t0
    unchecked = sorted(set(paths) - set(checked))
    status = "UNVERIFIED" if unchecked else "OK"
    print(f"{status} dataset {prefix}: {len(checked)} sidecar files verified, {_rate(nbytes, dt)}")
    for p in unchecked:
        print(f"  {p}: no payload checksum (sidecar format version 1): not verified")
    if not paths:
        print("  no sidecar files (the .bin/.idx pair has no checksum)")
    return True


@dataclass
class VerifyConfig:
    """What to verify."""

    paths: list[str] = field(metadata=opt("Dataset prefix, checkpoint directory or --save dir.", positional=True,
                                          metavar="P|CKPT"))
    all: bool = field(default=False, metadata=opt("For a --save directory: every iter_* checkpoint in it."))


def parse_args(argv: list[str] | None = None) -> VerifyConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_dataclass_args(p, VerifyConfig, "verify")
    return dataclass_from_args(VerifyConfig, p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, usage_error = True, False
    for path in args.paths:
        if os.path.isdir(path):
            try:
                targets = checkpoint_targets(path, args.all)
            except CheckpointError as e:
                print(f"FAILED checkpoint {path}: {e}")
                ok = False
                continue
            for d in targets:
                ok = verify_checkpoint_dir(d) and ok
        elif os.path.isfile(path + ".idx") or glob.glob(glob.escape(path) + ".*.tok*") or glob.glob(
                glob.escape(path) + ".*.docscores"):
            ok = verify_prefix(path) and ok
        else:
            print(f"error: {path}: neither a checkpoint directory nor a dataset prefix (no {path}.idx, no sidecars)",
                  file=sys.stderr)
            usage_error = True
    return 2 if usage_error else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
