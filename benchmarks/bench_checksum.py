#!/usr/bin/env python3
"""What verifying a payload checksum costs per GB: XXH3-64 (the sidecars' checksum, utils/checksum.py) against
crc32 (zlib) and sha256, in memory and from a file in the page cache, plus the end-to-end sidecar check at open
(`sidecar.verify_payload` on a P.forget.tokscores) and the token-id range scan of a dataset open
(`indexed_dataset.token_id_range`). Prints a table (seconds per GB and GB/s; GB = 10^9 bytes) and writes
benchmarks/results/checksum_<host>.json with machine info.

    python benchmarks/bench_checksum.py [--mb 256] [--reps 3]

File reads are warm (the file was just written, so it is in the page cache): a cold read costs what the disk
delivers (e.g. ~0.5 s/GB at 2 GB/s NVMe, ~10 s/GB at 100 MB/s network storage) on top of the hashing; the hash is
the part this benchmark isolates. Caches are not dropped (a shared machine).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_common import machine_info, spread, write_json  # noqa: E402
from megatron_tf.data.indexed_dataset import IndexedDataset, token_id_range, write_dataset  # noqa: E402
from megatron_tf.data.sidecar import read_header, verify_payload, write_token_scores  # noqa: E402
from megatron_tf.utils.checksum import CHUNK_BYTES, digest_buffers, digest_file  # noqa: E402


def _timed(fn, reps: int) -> dict:
    fn()  # warm-up (page cache, code paths)
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return spread(ms)


def _chunks(buf: memoryview):
    for a in range(0, len(buf), CHUNK_BYTES):
        yield buf[a : a + CHUNK_BYTES]


def _crc32(buf: memoryview) -> int:
    c = 0
    for piece in _chunks(buf):
        c = zlib.crc32(piece, c)
    return c


def _sha256(buf: memoryview) -> str:
    h = hashlib.sha256()
    for piece in _chunks(buf):
        h.update(piece)
    return h.hexdigest()


def run(mb: int, reps: int) -> dict:
    nbytes = mb << 20
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, nbytes, dtype=np.uint8)
    buf = memoryview(data)
    tmp = tempfile.mkdtemp(prefix="bench_checksum_")
    rows = {}
    try:
        path = os.path.join(tmp, "payload.bin")
        data.tofile(path)
        rows["xxh3_64 in memory"] = _timed(lambda: digest_buffers(_chunks(buf)), reps)
        rows["crc32 (zlib) in memory"] = _timed(lambda: _crc32(buf), reps)
        rows["sha256 in memory"] = _timed(lambda: _sha256(buf), reps)
        rows["xxh3_64 file, page cache (digest_file)"] = _timed(lambda: digest_file(path), reps)
        # a token-scores sidecar of nbytes tokens over a uint16 dataset of as many tokens
        tokens = (data.astype(np.uint16) * 97) % 32000
        ds = write_dataset(os.path.join(tmp, "d"), [tokens], dtype=np.uint16)
        sc = write_token_scores(ds, data, {})
        h = read_header(sc)
        rows["sidecar verify_payload (tokscores)"] = _timed(lambda: verify_payload(sc, h, force=True), reps)
        ds = IndexedDataset(ds.path_prefix)
        rows["token_id_range of .bin (uint16, 2 bytes/token)"] = _timed(lambda: token_id_range(ds), reps)
        sizes = {k: nbytes for k in rows}
        sizes["token_id_range of .bin (uint16, 2 bytes/token)"] = 2 * nbytes
    finally:
        shutil.rmtree(tmp)
    out = {}
    for k, r in rows.items():
        gb = sizes[k] / 1e9
        out[k] = {**r, "bytes": sizes[k], "s_per_GB": round(r["median_ms"] / 1e3 / gb, 4),
                  "GB_per_s": round(gb / (r["median_ms"] / 1e3), 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=256, help="payload size in MiB")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = run(args.mb, args.reps)
    print(f"{'what':50s} {'median ms':>10s} {'s/GB':>8s} {'GB/s':>8s}")
    for k, r in results.items():
        print(f"{k:50s} {r['median_ms']:10.1f} {r['s_per_GB']:8.3f} {r['GB_per_s']:8.2f}")
    host = platform.node().split(".")[0] or "host"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"checksum_{host}.json")
    write_json(out, {"machine": machine_info("cpu"), "payload_MiB": args.mb, "reps": args.reps,
                     "note": "warm page cache; GB = 10^9 bytes; median of reps after one warm-up",
                     "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
