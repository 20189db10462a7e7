#!/usr/bin/env python3
"""Preprocessing throughput: tools/preprocess_data.py vs Megatron-LM's tools/preprocess_data.py, same corpus,
same tokenizer, same --workers, same machine; checks that both write byte-identical .bin/.idx.

    python benchmarks/bench_preprocess.py [--workers 1 2] [--reps 3] \
        [--megatron-repo /work/.mirror/NVIDIA+Megatron-LM/repo]

Corpus: a plain JSONL made from ../shared/data (MedQuAD, PubMed abstracts, Brown, movie reviews: ~45 MB, medical and
general English); both tools read that same uncompressed file (Megatron-LM reads only plain JSONL).
Tokenizer: the shipped data/demo/tokenizer/demo_sp.model (SentencePiece BPE, 8192). Ours runs twice: with the exact
word cache (default) and with --no-word-cache (SentencePiece called per batch, as a native-code-only baseline).

Megatron-LM is not in megatron-core's wheel. The script extracts, from a local clone of NVIDIA/Megatron-LM at the
tag matching the installed megatron-core (core_v0.16.1), tools/preprocess_data.py plus megatron/training and
megatron/legacy (which it imports) into a temporary directory, outside this repository. One edit is made there:
megatron/training/__init__.py loses its `initialize` and `training` imports, which import triton (not installed on
this CPU machine) and are not used by preprocessing; the tokenization and writing code runs unchanged.

Each run is a fresh Python process; the script times the import of the tool module and its main() separately and
reports main() (the processing) as the rate; imports are listed too (Megatron's import torch and megatron.core).
It also reports the CPU seconds main() used (user + system, the pool workers included), which a busy machine
disturbs less than wall time.
Runs are interleaved (ours, ours --no-word-cache, Megatron, repeat), and the median of --reps is reported, because
this 2-core machine is shared. Writes benchmarks/results/preprocess_<host>_<cores>cores.json with machine info.

Results (benchmarks/results/): preprocess_vm_2cores.json (this CPU machine, busy with other jobs) and
preprocess_h200host_16cores.json (the 16 idle host cores of the lent GPU machine, GPU unused: cp312 wheels of
sentencepiece, megatron-core, protobuf and tqdm were installed there with `pip install --no-index --target`, and the
four corpus files and a directory made by prepare_megatron() were carried over; run with `--shared <dir>
--megatron-tools <dir>/tools --workers 1 4 16 --reps 2`).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORPUS_FILES = ["medical/medquad_nih_qa", "medical/pubmed_abstracts_medical", "general/nltk_brown_corpus_detagged",
                "general/nltk_movie_reviews_polarity_v2"]
TOKENIZER = os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model")

DRIVER = r"""
import json, resource, sys, time
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
t0 = time.perf_counter()
sys.path.insert(0, {tools_dir!r})
sys.argv = {argv!r}
import preprocess_data as m
t1, c1 = time.perf_counter(), cpu()
rc = m.main()
t2, c2 = time.perf_counter(), cpu()
print("BENCH " + json.dumps({{"import_s": t1 - t0, "run_s": t2 - t1, "cpu_s": c2 - c1, "rc": rc}}), flush=True)
"""


def build_corpus(shared: str, out: str) -> dict:
    n_docs, n_bytes = 0, 0
    with open(out, "wb") as f:
        for name in CORPUS_FILES:
            with lzma.open(os.path.join(shared, name + ".jsonl.xz"), "rb") as src:
                data = src.read()
            f.write(data)
            n_docs += data.count(b"\n")
            n_bytes += len(data)
    return {"files": [n + ".jsonl.xz" for n in CORPUS_FILES], "documents": n_docs, "bytes": n_bytes}


def prepare_megatron(repo: str, ref: str, dest: str) -> str:
    """Extract Megatron-LM's preprocess_data.py (+ the megatron.training / megatron.legacy it imports) to dest."""
    archive = subprocess.run(["git", "-C", repo, "archive", ref, "tools/preprocess_data.py", "megatron/training",
                              "megatron/legacy"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    init = os.path.join(dest, "megatron", "training", "__init__.py")
    with open(init) as f:
        lines = f.readlines()
    with open(init, "w") as f:
        f.writelines(ln for ln in lines if "initialize" not in ln and "from .training import" not in ln)
    return os.path.join(dest, "tools")


def run_tool(tools_dir: str, argv: list[str], env: dict) -> dict:
    code = DRIVER.format(tools_dir=tools_dir, argv=["preprocess_data.py", *argv])
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tools_dir)
    wall = time.perf_counter() - t0
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")]
    if p.returncode != 0 or not line or json.loads(line[0][6:])["rc"] not in (0, None):
        raise RuntimeError(f"{argv} failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return {**json.loads(line[0][6:]), "wall_s": wall}


def same_files(a: str, b: str) -> bool:
    for ext in (".bin", ".idx"):
        with open(a + ext, "rb") as fa, open(b + ext, "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import numpy
    import sentencepiece

    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "numpy": numpy.__version__, "sentencepiece": sentencepiece.__version__}
    try:
        from importlib.metadata import version

        info["megatron_core"] = version("megatron-core")
    except Exception:  # noqa: BLE001
        info["megatron_core"] = None
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--megatron-repo", default="/work/.mirror/NVIDIA+Megatron-LM/repo")
    ap.add_argument("--megatron-ref", default="core_v0.16.1")
    ap.add_argument("--megatron-tools", default=None,
                    help="an already prepared directory holding Megatron-LM's tools/preprocess_data.py (machines "
                         "without the clone); prepare_megatron() makes one")
    ap.add_argument("--tokenizer-model", default=TOKENIZER)
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="free text stored in the result (which machine, what else ran)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_preprocess_")
    try:
        corpus_path = os.path.join(tmp, "corpus.jsonl")
        corpus = build_corpus(args.shared, corpus_path)
        print(f"corpus: {corpus['documents']:,} documents, {corpus['bytes'] / 1e6:.1f} MB "
              f"({', '.join(corpus['files'])})")
        mdir = os.path.join(tmp, "megatron")
        os.makedirs(mdir)
        try:
            mtools = os.path.abspath(args.megatron_tools) if args.megatron_tools else prepare_megatron(
                args.megatron_repo, args.megatron_ref, mdir)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            print(f"Megatron-LM not available ({e}); measuring ours only")
            mtools = None
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        common = ["--input", corpus_path, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                  args.tokenizer_model, "--json-keys", "text", "--append-eod"]
        variants = {
            "megatron_tf": (os.path.join(REPO, "tools"), ["--on-empty", "keep"]),
            "megatron_tf --no-word-cache": (os.path.join(REPO, "tools"), ["--on-empty", "keep", "--no-word-cache"]),
        }
        if mtools:
            variants["Megatron-LM " + args.megatron_ref] = (mtools, ["--log-interval", "100000"])
        results = {v: {w: [] for w in args.workers} for v in variants}
        load_before = os.getloadavg()
        identical = {}
        for rep in range(args.reps):
            for w in args.workers:
                prefixes = {}
                for i, (name, (tools, extra)) in enumerate(variants.items()):
                    prefix = os.path.join(tmp, f"out{i}_w{w}")
                    r = run_tool(tools, [*common, "--output-prefix", prefix, "--workers", str(w), *extra], env)
                    r["loadavg_1min_after"] = os.getloadavg()[0]
                    results[name][w].append(r)
                    prefixes[name] = prefix + "_text_document"
                    print(f"rep {rep} workers {w} {name:34s} run {r['run_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                          f"import {r['import_s']:5.2f} s  load {r['loadavg_1min_after']:.2f}")
                ref = prefixes["megatron_tf"]
                for name, p in prefixes.items():
                    identical[name] = identical.get(name, True) and same_files(ref, p)
        from megatron_tf.data.indexed_dataset import IndexedDataset  # noqa: E402 (repo on sys.path below)

        ds = IndexedDataset(os.path.join(tmp, f"out0_w{args.workers[0]}_text_document"))
        n_docs, n_tok = ds.num_documents, ds.num_tokens
        rows = []
        for name in variants:
            for w in args.workers:
                runs = results[name][w]
                med = statistics.median(r["run_s"] for r in runs)
                rows.append({"tool": name, "workers": w, "run_s_median": med,
                             "run_s_min": min(r["run_s"] for r in runs),
                             "import_s_median": statistics.median(r["import_s"] for r in runs),
                             "wall_s_median": statistics.median(r["wall_s"] for r in runs),
                             "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
                             "docs_per_s": n_docs / med, "tokens_per_s": n_tok / med, "runs": runs,
                             "output_identical_to_megatron_tf": identical[name]})
        base = {r["workers"]: r for r in rows if r["tool"].startswith("Megatron-LM")}
        print(f"\n{n_docs:,} documents, {n_tok:,} tokens; median of {args.reps} runs; load average before "
              f"{load_before[0]:.2f}\n")
        hdr = f"{'tool':34s} {'workers':>7s} {'run s':>7s} {'docs/s':>9s} {'tokens/s':>11s} {'vs Megatron':>11s} " \
              f"{'CPU s':>7s} {'CPU vs M.':>9s} {'import s':>8s} {'same bytes':>10s}"
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            b = base.get(r["workers"])
            sp = b["run_s_median"] / r["run_s_median"] if b else float("nan")
            cs = b["cpu_s_median"] / r["cpu_s_median"] if b else float("nan")
            r["speedup_vs_megatron"], r["cpu_speedup_vs_megatron"] = sp, cs
            print(f"{r['tool']:34s} {r['workers']:7d} {r['run_s_median']:7.2f} {r['docs_per_s']:9,.0f} "
                  f"{r['tokens_per_s']:11,.0f} {sp:10.2f}x {r['cpu_s_median']:7.2f} {cs:8.2f}x "
                  f"{r['import_s_median']:8.2f} {'yes' if r['output_identical_to_megatron_tf'] else 'NO':>10s}")
        out = args.out or os.path.join(HERE, "results",
                                       f"preprocess_{platform.node() or 'host'}_{os.cpu_count()}cores.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"benchmark": "preprocess", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "machine": machine_info(), "loadavg_before": load_before, "corpus": corpus,
                       "tokenizer": os.path.relpath(args.tokenizer_model, REPO), "documents": n_docs,
                       "tokens": n_tok, "megatron_ref": args.megatron_ref if mtools else None, "reps": args.reps,
                       "note": args.note, "results": rows}, f, indent=1)
        print(f"\nwrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
