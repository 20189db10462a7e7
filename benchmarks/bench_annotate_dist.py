#!/usr/bin/env python3
"""Annotation in one process vs N torchrun processes (labeling/annotate_dist.py): the labeler's tokens/s per process
and the merge time, as tools/annotate.py prints them, on the bundled demo corpus with the blocklist labeler.

    python benchmarks/bench_annotate_dist.py [--nproc 2] [--rounds 3] [--chunk-docs 64] \
        [--repeat 1] [--out benchmarks/results/annotate_dist_<host>.json]

Tokenizes data/demo/train/*.jsonl.xz once (tools/preprocess_data.py, demo SentencePiece tokenizer; 1,338 documents,
932,887 tokens; --repeat K uses its documents K times over), then per round runs, interleaved (the order alternates
between rounds), `python tools/annotate.py` and `python -m torch.distributed.run --standalone --nproc-per-node N
tools/annotate.py` with the same flags on fresh copies of the dataset, and checks that every run wrote byte-identical
sidecars. Per run it records the wall time of the whole command (including Python/torch start-up and, for torchrun,
its rendezvous), each rank's labeling time and tokens/s (tokens it labeled / its labeling wall time) and the merge
time (chunks -> sidecars, on rank 0).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_common import ROOT, machine_info, write_json  # noqa: E402

RANK_RE = re.compile(r"labeling, rank (\d+) \(.*?, (\d+) worker\(s\)\): (\d+) chunks, ([\d,]+) tokens in "
                     r"([\d.]+) s: ([\d,]+) tokens/s")
MERGE_RE = re.compile(r"merge \(chunks -> sidecars\): ([\d.]+) s")


def _tokenize(work: str) -> str:
    prefix = os.path.join(work, "demo_train")
    inputs = [os.path.join(ROOT, "data", "demo", "train", f"{d}.jsonl.xz") for d in ("medical", "biology", "general")]
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", *inputs,
                    "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                    os.path.join(ROOT, "data", "demo", "tokenizer", "demo_sp.model"), "--json-keys", "text",
                    "--append-eod", "--workers", "2"], check=True, capture_output=True, timeout=900)
    return prefix + "_text_document"


def _repeat(src: str, k: int) -> str:
    """The dataset's documents k times over (a larger corpus of the same text; no meta.json: annotate scans)."""
    import numpy as np

    from megatron_tf.data.indexed_dataset import IndexedDataset, write_dataset

    ds = IndexedDataset(src)
    offs = ds.document_token_offsets()
    tokens = np.asarray(ds.tokens(0, ds.num_tokens))
    docs = [tokens[offs[d]:offs[d + 1]] for d in range(ds.num_documents)]
    return write_dataset(f"{src}_x{k}", docs * k, dtype=np.uint16).path_prefix


def _run(src: str, work: str, tag: str, nproc: int, chunk_docs: int) -> dict:
    prefix = os.path.join(work, tag)
    for ext in (".bin", ".idx", ".meta.json"):
        if os.path.exists(src + ext):
            shutil.copyfile(src + ext, prefix + ext)
    args = [os.path.join(ROOT, "tools", "annotate.py"), "--data-prefix", prefix, "--labeler", "blocklist",
            "--terms", os.path.join(ROOT, "data", "demo", "medical_terms.txt"), "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", os.path.join(ROOT, "data", "demo", "tokenizer",
                                                                        "demo_sp.model"),
            "--chunk-docs", str(chunk_docs), "--write-mask-threshold", "0.5", "--no-progress"]
    cmd = [sys.executable, *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-3000:]}")
    ranks = [{"rank": int(m[0]), "workers": int(m[1]), "chunks": int(m[2]), "tokens": int(m[3].replace(",", "")),
              "label_s": float(m[4]), "tokens_per_s": int(m[5].replace(",", ""))} for m in RANK_RE.findall(p.stdout)]
    merge = MERGE_RE.search(p.stdout)
    digest = hashlib.sha256()
    for kind in ("tokscores", "docscores", "tokmask"):
        with open(f"{prefix}.forget.{kind}", "rb") as f:
            digest.update(f.read())
    for f in os.listdir(work):
        if f.startswith(tag + "."):
            os.remove(os.path.join(work, f))
    return {"nproc": nproc, "wall_s": round(wall, 3), "ranks": ranks, "merge_s": float(merge[1]),
            "sidecars_sha256": digest.hexdigest()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-docs", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="use the corpus's documents this many times over")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  f"annotate_dist_{platform.node() or 'host'}.json"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench_annotate_dist_")
    try:
        src = _tokenize(work)
        if a.repeat > 1:
            src = _repeat(src, a.repeat)
        runs = []
        load = [os.getloadavg()[0]]
        for r in range(a.rounds):
            order = (1, a.nproc) if r % 2 == 0 else (a.nproc, 1)
            for n in order:
                runs.append(_run(src, work, f"r{r}_n{n}", n, a.chunk_docs))
                print(runs[-1], flush=True)
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    identical = len({x["sidecars_sha256"] for x in runs}) == 1
    out = {"machine": machine_info("cpu"), "command": " ".join(sys.argv), "nproc": a.nproc, "rounds": a.rounds,
           "chunk_docs": a.chunk_docs, "repeat": a.repeat,
           "load_average_1min_before_after": load, "sidecars_identical": identical,
           "runs": runs}
    write_json(a.out, out)
    print(f"wrote {a.out}; sidecars identical across all runs: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
