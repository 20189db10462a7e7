#!/usr/bin/env python3
"""Preprocessing throughput: tools/preprocess_data.py vs Megatron-LM's tools/preprocess_data.py, same corpus,
same tokenizer, same --workers, same machine, for a SentencePiece and an HF byte-level BPE tokenizer; checks that
both write byte-identical .bin/.idx. Both tokenizer kinds land in one JSON.

    python benchmarks/bench_preprocess.py [--tokenizers sp hf] [--workers 2] [--reps 3] \
        [--megatron-repo /work/.mirror/NVIDIA+Megatron-LM/repo]

Corpus: a plain JSONL made from ../shared/data (MedQuAD, PubMed abstracts, Brown, movie reviews: ~45 MB, medical and
general English); both tools read that same uncompressed file (Megatron-LM reads only plain JSONL).
Tokenizers. sp: the shipped data/demo/tokenizer/demo_sp.model (SentencePiece BPE, 8192; Megatron-LM's
SentencePieceTokenizer). hf: a byte-level BPE tokenizer.json (GPT-2 pre-tokenizer, 8192) trained here by
megatron_tf.tokenizer.train on data/demo/train (nothing is downloaded), given to ours as tokenizer.json and to
Megatron-LM's HuggingFaceTokenizer (transformers AutoTokenizer) as the HF export directory of
megatron_tf/tokenizer/hf_files.py, whose eos is the same <|endoftext|>. Ours runs twice per kind: with the exact word
cache (default; tokenizer/word_cache.py, tokenizer/bytelevel_cache.py) and with --no-word-cache (the native
tokenizer called per batch, as a native-code-only baseline).

Megatron-LM is not in megatron-core's wheel. The script extracts, from a local clone of NVIDIA/Megatron-LM at the
tag matching the installed megatron-core (core_v0.16.1), tools/preprocess_data.py plus megatron/training and
megatron/legacy (which it imports) into .megatron_lm/<ref>/ (git-ignored; never committed). One edit is made there:
megatron/training/__init__.py loses its `initialize` and `training` imports, which import triton (not installed on
this CPU machine) and are not used by preprocessing; the tokenization and writing code runs unchanged.

Each run is a fresh Python process; the script times the import of the tool module and its main() separately and
reports main() (the processing) as the rate; imports are listed too (Megatron's import torch and megatron.core).
It also reports the CPU seconds main() used (user + system, the pool workers included), which a busy machine
disturbs less than wall time.
Runs are interleaved (per repetition and worker count: for each tokenizer, ours, ours --no-word-cache, Megatron),
and the median of --reps is reported with the spread (min and max, and every run), because the development machine
has 2 cores shared with other jobs. Writes benchmarks/results/preprocess_<host>_<cores>cores.json with machine info.

Results (benchmarks/results/): preprocess_sp_hf_vm_2cores.json (both kinds, 2 workers, this CPU machine at load
6-8; numbers in docs/performance.md), preprocess_vm_2cores.json (SentencePiece only, before issue 15, workers 1 and 2)
and preprocess_h200host_16cores.json (SentencePiece only, before issue 15: the 16 idle host cores of the lent GPU
machine, GPU unused: cp312 wheels of sentencepiece, megatron-core, protobuf and tqdm were installed there with
`pip install --no-index --target`, and the four corpus files and a directory made by prepare_megatron() were
carried over; run with `--shared <dir> --megatron-tools <dir>/tools --tokenizers sp --workers 1 4 16 --reps 2`).
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
    if os.path.isfile(os.path.join(dest, "tools", "preprocess_data.py")):
        return os.path.join(dest, "tools")
    os.makedirs(dest, exist_ok=True)
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
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("megatron-core", "tokenizers", "transformers"):
        try:
            info[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            info[dist.replace("-", "_")] = None
    return info


def make_hf_tokenizer(out_dir: str) -> tuple[str, str]:
    """(tokenizer.json for ours, export directory for Megatron-LM's HuggingFaceTokenizer), trained on data/demo."""
    import glob

    from megatron_tf.tokenizer.hf_files import write_hf_tokenizer_files
    from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer

    path = os.path.join(out_dir, "hf_bpe.json")
    tok = train_tokenizer(TrainTokenizerConfig(input=sorted(glob.glob(os.path.join(REPO, "data", "demo", "train",
                                                                                   "*.jsonl.xz"))),
                                               output=path, type="hf", vocab_size=8192))
    export = os.path.join(out_dir, "hf_export")
    os.makedirs(export)
    write_hf_tokenizer_files(tok, export)
    return path, export


def summarize(runs: list[dict], n_docs: int, n_tok: int) -> dict:
    med = statistics.median(r["run_s"] for r in runs)
    return {"run_s_median": med, "run_s_min": min(r["run_s"] for r in runs), "run_s_max": max(r["run_s"] for r in runs),
            "import_s_median": statistics.median(r["import_s"] for r in runs),
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
            "docs_per_s": n_docs / med, "tokens_per_s": n_tok / med, "runs": runs}


def speedup_table(rows: list[dict], mname: str, reps: int, load_before) -> None:
    """Add speedups vs Megatron-LM (same tokenizer and workers) to `rows` and print the table."""
    base = {(r["tokenizer"], r["workers"]): r for r in rows if r["tool"] == mname}
    print(f"\nmedian of {reps} interleaved runs (spread: min-max); load average before {load_before[0]:.2f}\n")
    hdr = f"{'tok':3s} {'tool':30s} {'workers':>7s} {'run s':>7s} {'min-max s':>13s} {'docs/s':>8s} " \
          f"{'tokens/s':>10s} {'vs Megatron':>11s} {'CPU s':>7s} {'CPU vs M.':>9s} {'same bytes':>10s}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        b = base.get((r["tokenizer"], r["workers"]))
        sp = b["run_s_median"] / r["run_s_median"] if b else float("nan")
        cs = b["cpu_s_median"] / r["cpu_s_median"] if b else float("nan")
        r["speedup_vs_megatron"], r["cpu_speedup_vs_megatron"] = sp, cs
        if b:  # the spread of the ratio: slowest of ours vs fastest Megatron, and the reverse
            r["speedup_vs_megatron_range"] = [b["run_s_min"] / r["run_s_max"], b["run_s_max"] / r["run_s_min"]]
        same = {True: "yes", False: "NO", None: "-"}[r["output_identical_to_megatron"]]
        print(f"{r['tokenizer']:3s} {r['tool']:30s} {r['workers']:7d} {r['run_s_median']:7.2f} "
              f"{r['run_s_min']:6.2f}-{r['run_s_max']:<6.2f} {r['docs_per_s']:8,.0f} {r['tokens_per_s']:10,.0f} "
              f"{sp:10.2f}x {r['cpu_s_median']:7.2f} {cs:8.2f}x {same:>10s}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--tokenizers", nargs="+", default=["sp", "hf"], choices=["sp", "hf"])
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip ours --no-word-cache")
    ap.add_argument("--megatron-repo", default="/work/.mirror/NVIDIA+Megatron-LM/repo")
    ap.add_argument("--megatron-ref", default="core_v0.16.1")
    ap.add_argument("--megatron-tools", default=None,
                    help="an already prepared directory holding Megatron-LM's tools/preprocess_data.py (machines "
                         "without the clone); by default .megatron_lm/<ref>/tools, made by prepare_megatron()")
    ap.add_argument("--sp-model", default=TOKENIZER)
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="free text stored in the result (which machine, what else ran)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_preprocess_")
    try:
        corpus_path = os.path.join(tmp, "corpus.jsonl")
        corpus = build_corpus(args.shared, corpus_path)
        print(f"corpus: {corpus['documents']:,} documents, {corpus['bytes'] / 1e6:.1f} MB "
              f"({', '.join(corpus['files'])})")
        try:
            mtools = os.path.abspath(args.megatron_tools) if args.megatron_tools else prepare_megatron(
                args.megatron_repo, args.megatron_ref, os.path.join(REPO, ".megatron_lm", args.megatron_ref))
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            print(f"Megatron-LM not available ({e}); measuring ours only")
            mtools = None
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        ours = os.path.join(REPO, "tools")
        mname = "Megatron-LM " + args.megatron_ref
        variants: dict[tuple[str, str], tuple[str, list[str]]] = {}
        tokenizers = {}
        for kind in args.tokenizers:
            if kind == "sp":
                t_ours = t_meg = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", args.sp_model]
                tokenizers["sp"] = os.path.relpath(args.sp_model, REPO)
            else:
                hf_json, hf_dir = make_hf_tokenizer(tmp)
                t_ours = ["--tokenizer-type", "HFTokenizer", "--tokenizer-model", hf_json]
                t_meg = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir]
                tokenizers["hf"] = "byte-level BPE 8192 trained on data/demo/train by megatron_tf.tokenizer.train"
            variants[(kind, "megatron_tf")] = (ours, [*t_ours, "--on-empty", "keep"])
            if not args.no_baseline:
                variants[(kind, "megatron_tf --no-word-cache")] = (ours, [*t_ours, "--on-empty", "keep",
                                                                          "--no-word-cache"])
            if mtools:
                variants[(kind, mname)] = (mtools, [*t_meg, "--log-interval", "100000"])
        common = ["--input", corpus_path, "--json-keys", "text", "--append-eod"]
        results = {(v, w): [] for v in variants for w in args.workers}
        load_before = os.getloadavg()
        identical: dict[tuple, bool] = {}
        counts: dict[str, tuple[int, int]] = {}
        for rep in range(args.reps):
            for w in args.workers:
                prefixes = {}
                for i, ((kind, name), (tools, extra)) in enumerate(variants.items()):
                    prefix = os.path.join(tmp, f"out{i}_w{w}")
                    r = run_tool(tools, [*common, "--output-prefix", prefix, "--workers", str(w), *extra], env)
                    r["loadavg_1min_after"] = os.getloadavg()[0]
                    results[((kind, name), w)].append(r)
                    prefixes[(kind, name)] = prefix + "_text_document"
                    print(f"rep {rep} workers {w} {kind} {name:30s} run {r['run_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                          f"import {r['import_s']:5.2f} s  load {r['loadavg_1min_after']:.2f}", flush=True)
                for (kind, name), p in prefixes.items():
                    ref = prefixes.get((kind, mname), prefixes[(kind, "megatron_tf")])
                    key = ((kind, name), w)
                    identical[key] = identical.get(key, True) and same_files(ref, p)
        from megatron_tf.data.indexed_dataset import IndexedDataset  # noqa: E402 (repo on sys.path below)

        for i, (kind, name) in enumerate(variants):
            if name == "megatron_tf":
                ds = IndexedDataset(os.path.join(tmp, f"out{i}_w{args.workers[0]}_text_document"))
                counts[kind] = (ds.num_documents, ds.num_tokens)
        rows = []
        for (kind, name) in variants:
            for w in args.workers:
                n_docs, n_tok = counts[kind]
                rows.append({"tokenizer": kind, "tool": name, "workers": w, "documents": n_docs, "tokens": n_tok,
                             **summarize(results[((kind, name), w)], n_docs, n_tok),
                             "output_identical_to_megatron": identical[((kind, name), w)] if mtools else None})
        speedup_table(rows, mname, args.reps, load_before)
        out = args.out or os.path.join(HERE, "results",
                                       f"preprocess_{platform.node() or 'host'}_{os.cpu_count()}cores.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump({"benchmark": "preprocess", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "machine": machine_info(), "loadavg_before": load_before,
                       "loadavg_after": os.getloadavg(), "corpus": corpus, "tokenizers": tokenizers,
                       "megatron_ref": args.megatron_ref if mtools else None, "reps": args.reps,
                       "method": "fresh process per run; runs interleaved (per rep and worker count: each tokenizer, "
                                 "ours, ours --no-word-cache, Megatron-LM); run_s = main() only; medians over reps, "
                                 "spread = min/max and every run listed; speedup = Megatron median / ours median, "
                                 "speedup_vs_megatron_range = [Megatron min / ours max, Megatron max / ours min]",
                       "command": " ".join(["python", "benchmarks/bench_preprocess.py", *sys.argv[1:]]),
                       "note": args.note, "results": rows}, f, indent=1)
        os.replace(out + ".tmp", out)
        print(f"\nwrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
