#!/usr/bin/env python3
"""GPT dataset speed vs megatron-core's GPTDataset on the same data: sample fetch (with masks), index build and
blending index, each timed --reps times with the contenders interleaved (the machine is shared: medians and spread).

Data: --data-prefix P (a preprocessed corpus; opened with the tokenizer flags it was made with, as the trainer does;
the masked fetch rows need P.forget.tokscores/.tokmask sidecars and are skipped without them), or by default a
synthetic dataset written with write_dataset: random uint16 tokens, lognormal document lengths (median e^6 ~ 400,
mean ~ 660 tokens, clipped to [8, 20000]), <|endoftext|> at the end of every document, random uint8 token scores and
a bit mask at 0.5 (NullTokenizer, vocabulary 32000). Prints a table and writes
benchmarks/results/gpt_dataset_<host>.json (or --out) with machine info.

    python benchmarks/bench_gpt_dataset.py [--tokens 40e6] [--samples 3000] [--index-samples 200000] [--reps 7]
    python benchmarks/bench_gpt_dataset.py --data-prefix P_text_document \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model data/demo/tokenizer/demo_sp.model

"before" rows: the implementations this repository had before issue 15 (the Python greedy loop for the blending
index, copied below; the vectorised NumPy sample index, still the no-compiler path; cache files fsynced one after
the other with their directory), timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.data import blend_greedy  # noqa: E402
from megatron_tf.data.blending import (  # noqa: E402
    _two_exhaustive,
    build_blending_indices,
    build_exhaustive_blending_indices,
)
from megatron_tf.data.builder import build_gpt_datasets  # noqa: E402
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig  # noqa: E402
from megatron_tf.data.gpt_dataset import build_indices  # noqa: E402
from megatron_tf.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder  # noqa: E402
from megatron_tf.data.native import load_library  # noqa: E402
from megatron_tf.data.sidecar import (  # noqa: E402
    KIND_TOKEN_MASK,
    KIND_TOKEN_SCORES,
    sidecar_path,
    write_token_mask,
    write_token_scores,
)
from megatron_tf.tokenizer.config import TokenizerConfig  # noqa: E402
from megatron_tf.tokenizer.tokenizer import NullTokenizer, build_tokenizer  # noqa: E402

VOCAB = 32000
EOD = VOCAB - 3


def make_synthetic(prefix: str, tokens: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    total = 0
    while total < tokens:
        n = int(np.clip(rng.lognormal(6.0, 1.0), 8, 20000))
        b.add_document(np.append(rng.integers(0, EOD, n - 1), EOD))
        total += n
    b.finalize(prefix + ".idx")
    ds = IndexedDataset(prefix)
    q = rng.integers(0, 256, ds.num_tokens).astype(np.uint8)
    write_token_scores(ds, q, {"labeler": "bench"})
    write_token_mask(ds, q >= 128, 0.5, {"labeler": "bench"})


def time_fetch(ds, n: int, warm: int = 200) -> float:
    for i in range(warm):
        ds[i % len(ds)]
    t = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return (time.perf_counter() - t) / n


def megatron_dataset(prefix, seq, num_samples, cache, tok, eod_mask_loss=False):
    from collections import OrderedDict

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig as MCfg

    class Tok:  # megatron-core reads these four
        vocab_size, eod, pad = tok.vocab_size, tok.eod, tok.pad
        unique_identifiers = OrderedDict(cls=type(tok).__name__, vocab_size=tok.vocab_size)

    cfg = MCfg(random_seed=1234, sequence_length=seq, blend=([prefix], None), split="1,0,0", path_to_cache=cache,
               tokenizer=Tok(), reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=eod_mask_loss,
               create_attention_mask=False)
    return BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None], lambda: True, cfg).build()[0]


def megatron_arrays(sizes, docs, seq, num_samples):
    """megatron-core's own steps (GPTDataset._build_document_sample_shuffle_indices without the caching)."""
    from megatron.core.datasets import helpers
    from megatron.core.datasets.gpt_dataset import _build_document_index, _build_shuffle_index

    from megatron_tf.data.gpt_dataset import num_epochs_for, separate_final_epoch

    tpe = int(sizes[docs].sum())
    epochs = num_epochs_for(tpe, seq, num_samples)
    sep = separate_final_epoch(tpe, seq, num_samples, epochs)
    rng = np.random.RandomState(1234)
    doc_index = _build_document_index(docs, epochs, rng, sep)
    sample_index = helpers.build_sample_idx(sizes, doc_index, seq, epochs, tpe, True, True)
    n = sample_index.shape[0] - 1
    first = ((epochs - 1) * tpe - 1) // seq if sep else n
    return _build_shuffle_index(first, n, rng)


def ours(prefix, seq, num_samples, cache, tok, mode="none", threshold=None):
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq, seed=1234, data_cache_path=cache)
    fc = FilterConfig(token_filter=mode, forget_threshold=threshold)
    return build_gpt_datasets(cfg, fc, tok, [num_samples, None, None]).train


def greedy_before(weights, size):
    """The blending index as this repository computed it before issue 15 (Python loops; verbatim from commit
    8064c19, megatron_tf/data/blending.py build_blending_indices)."""
    w = [float(x) for x in weights]
    n = len(w)
    counts = [0] * n
    didx = np.zeros(size, dtype=np.int16)
    sidx = np.zeros(size, dtype=np.int64)
    if n == 1:
        sidx[:] = np.arange(size)
        return didx, sidx
    picks = [0] * size
    taken = [0] * size
    if n == 2:
        w0, w1 = w
        c0 = c1 = 0
        for s in range(size):
            sd = s if s > 1 else 1.0
            if w1 * sd - c1 > w0 * sd - c0:
                picks[s], taken[s] = 1, c1
                c1 += 1
            else:
                taken[s] = c0
                c0 += 1
    else:
        rng_n = range(1, n)
        for s in range(size):
            sd = s if s > 1 else 1.0
            best, best_err = 0, w[0] * sd - counts[0]
            for i in rng_n:
                e = w[i] * sd - counts[i]
                if e > best_err:
                    best, best_err = i, e
            picks[s], taken[s] = best, counts[best]
            counts[best] += 1
    didx[:] = picks
    sidx[:] = taken
    return didx, sidx


def interleaved(contenders: dict, reps: int, skip_after: dict | None = None) -> dict:
    """Time every contender `reps` times, one of each per round (shared machine: drifts hit all alike); returns
    {name: {"median_ms", "min_ms", "max_ms", "runs"}}. skip_after[name] = rounds to stop a slow contender after."""
    times = {k: [] for k in contenders}
    for r in range(reps):
        for name, fn in contenders.items():
            if skip_after and r >= skip_after.get(name, reps):
                continue
            t = time.perf_counter()
            out = fn()  # a contender may time itself (in_fresh_cache: without its setup and clean-up)
            times[name].append(out if isinstance(out, float) else (time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "min_ms": min(v), "max_ms": max(v), "runs": len(v)}
            for k, v in times.items()}


def in_fresh_cache(fn, seed_dir: str | None = None, durable: bool = False):
    """Run fn(cache_dir) in a new cache directory, optionally holding the files of seed_dir first; returns the ms of
    fn alone (until the indices are usable), or with durable=True until this process's background cache writes
    (index_cache.py) are on disk too."""
    from megatron_tf.data.index_cache import wait_for_cache_writes

    def run() -> float:
        cache = tempfile.mkdtemp(prefix="bench_cache_")
        if seed_dir:
            for name in os.listdir(seed_dir):
                shutil.copy(os.path.join(seed_dir, name), cache)
        try:
            t = time.perf_counter()
            fn(cache)
            if durable:
                wait_for_cache_writes()
            return (time.perf_counter() - t) * 1e3
        finally:
            wait_for_cache_writes()
            shutil.rmtree(cache)
    return run


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform()}
    try:
        info["load_average_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        from megatron.core import package_info

        info["megatron_core"] = package_info.__version__
    except Exception:  # noqa: BLE001 - optional
        pass
    return info


def open_tokenizer(args):
    if args.data_prefix is None:
        return NullTokenizer(VOCAB)
    tc = dataclass_from_args(TokenizerConfig, args)
    return build_tokenizer(tc.tokenizer_type, tc.tokenizer_model, tc.vocab_size)


def bench_fetch(prefix, tok, args, have_mc, tmp) -> tuple[dict, list]:
    fetch, rows = {}, []
    masks = all(os.path.exists(sidecar_path(prefix, k)) for k in (KIND_TOKEN_SCORES, KIND_TOKEN_MASK))
    if not masks:
        print(f"{prefix}: no forget sidecars, fetch rows with masks skipped")
    for seq in (2048, 4096):
        n_samples = 20000
        cache = os.path.join(tmp, "cache")
        entries = {}
        if have_mc:
            entries["megatron-core GPTDataset (loss_mask, position_ids)"] = megatron_dataset(
                prefix, seq, n_samples, cache + "_mc", tok)
            entries["megatron-core GPTDataset --eod-mask-loss"] = megatron_dataset(prefix, seq, n_samples,
                                                                                 cache + "_mc", tok, True)
        entries["megatron_tf none (+ forget flags from bit mask)"] = ours(prefix, seq, n_samples, cache, tok)
        if masks:
            entries["megatron_tf mask, token scores (T=0.6)"] = ours(prefix, seq, n_samples, cache, tok, "mask", 0.6)
            entries["megatron_tf mask, bit mask (T=0.5)"] = ours(prefix, seq, n_samples, cache, tok, "mask", 0.5)
            entries["megatron_tf remove, bit mask (T=0.5)"] = ours(prefix, seq, n_samples, cache, tok, "remove", 0.5)
        for name, d in entries.items():
            us = time_fetch(d, args.samples) * 1e6
            fetch[f"{seq}/{name}"] = us
            rows.append((f"fetch seq {seq}", name, f"{us:8.1f} us/sample"))
    return fetch, rows


def bench_index(prefix, ds, tok, args, have_mc, tmp) -> tuple[dict, dict, list]:
    """Full build (open + indices + cache files) and the index arrays alone."""
    rows, build, arrays = [], {}, {}
    seed = os.path.join(tmp, "scanned")  # the once-per-dataset token-id range scan, done
    ours(prefix, 2048, 10, seed, tok)
    from megatron_tf.data.index_cache import wait_for_cache_writes

    wait_for_cache_writes()
    for name in os.listdir(seed):
        if "-tokrange-" not in name:
            os.remove(os.path.join(seed, name))
    sizes = np.asarray(ds.sequence_lengths)
    docs = np.arange(len(sizes), dtype=np.int32)
    for seq in (2048, 4096):
        n = args.index_samples * 2048 // seq
        c = {}
        if have_mc:
            c["megatron-core"] = in_fresh_cache(lambda d: megatron_dataset(prefix, seq, n, d, tok))  # noqa: B023
        c["megatron_tf (dataset already scanned)"] = in_fresh_cache(lambda d: ours(prefix, seq, n, d, tok),  # noqa: B023
                                                                    seed)
        c["megatron_tf (dataset already scanned), until the cache files are durable"] = in_fresh_cache(
            lambda d: ours(prefix, seq, n, d, tok), seed, durable=True)  # noqa: B023
        c["megatron_tf (first open: + token-id scan)"] = in_fresh_cache(lambda d: ours(prefix, seq, n, d, tok))  # noqa: B023
        c["megatron_tf before (dataset already scanned)"] = in_fresh_cache(
            lambda d: as_before(ours, prefix, seq, n, d, tok), seed)  # noqa: B023
        res = interleaved(c, args.reps)
        build[str(seq)] = res
        rows += [(f"index build seq {seq}, {n} samples", k, fmt(v)) for k, v in res.items()]
        c = {"megatron_tf": lambda: build_indices(sizes, docs, seq, n, 1234)}  # noqa: B023
        c["megatron_tf before (NumPy sample index)"] = lambda: without_native(build_indices, sizes, docs, seq, n,  # noqa: B023
                                                                              1234)
        if have_mc:
            c["megatron-core"] = lambda: megatron_arrays(sizes, docs, seq, n)  # noqa: B023
        res = interleaved(c, args.reps)
        arrays[str(seq)] = res
        rows += [(f"index arrays only seq {seq}, {n} samples", k, fmt(v)) for k, v in res.items()]
    return build, arrays, rows


def as_before(fn, *a):
    """fn(*a) with the index code as it was before issue 15: NumPy sample index, and every cache file written with
    utils.io.atomic_write (fsync of the file and of the directory, one file after the other) before returning."""
    from megatron_tf.data import gpt_dataset, index_cache
    from megatron_tf.utils.io import atomic_write

    def sequential(writers):
        for path, write in writers:
            with atomic_write(path) as f:
                write(f)

    real, real_load = index_cache._write_all_synced, gpt_dataset.load_or_build
    index_cache._write_all_synced = sequential
    gpt_dataset.load_or_build = lambda *x, background=False: real_load(*x, background=False)
    try:
        return without_native(fn, *a)
    finally:
        index_cache._write_all_synced, gpt_dataset.load_or_build = real, real_load


def without_native(fn, *a):
    from megatron_tf.data import gpt_dataset

    real = gpt_dataset.load_library
    gpt_dataset.load_library = lambda: None
    try:
        return fn(*a)
    finally:
        gpt_dataset.load_library = real


def bench_blending(args, have_mc) -> tuple[dict, list]:
    rng = np.random.default_rng(0)
    size = args.blend_samples
    cases = [("2 datasets (0.3, 0.7)", [0.3, 0.7]), ("3 datasets", (rng.random(3) + 0.1).tolist()),
             ("10 datasets", (rng.random(10) + 0.1).tolist())]
    out, rows = {}, []
    for label, w in cases:
        w = (np.asarray(w) / np.sum(w)).tolist()
        c = {}
        if have_mc:
            from megatron.core.datasets import helpers

            def mc(w=w):  # as megatron-core's BlendedDataset: allocate, then the C++ loop
                d, s = np.zeros(size, np.int16), np.zeros(size, np.int64)
                helpers.build_blending_indices(d, s, np.array(w), len(w), size, False)
            c["megatron-core (C++)"] = mc
        c["megatron_tf (compiled loop)"] = lambda w=w: build_blending_indices(w, size)
        if len(w) == 2:
            c["megatron_tf NumPy, no compiler"] = lambda w=w: blend_greedy.two_dataset_indices(w[0], w[1], size)
        c["megatron_tf before (Python loop)"] = lambda w=w: greedy_before(w, size)
        res = interleaved(c, args.reps, {"megatron_tf before (Python loop)": 3})
        out[label] = res
        rows += [(f"blending index, {label}, {size} samples", k, fmt(v)) for k, v in res.items()]
    sizes = [size * 3 // 10, size - size * 3 // 10]
    c = {}
    if have_mc:
        from megatron.core.datasets import helpers

        def mc_ex():
            d, s = np.zeros(size, np.int16), np.zeros(size, np.int64)
            helpers.build_exhaustive_blending_indices(d, s, np.array(sizes, dtype=np.int64), 2)
        c["megatron-core (C++)"] = mc_ex
    c["megatron_tf (compiled loop)"] = lambda: build_exhaustive_blending_indices(sizes)
    c["megatron_tf NumPy, no compiler"] = lambda: _two_exhaustive(sizes, [0, 1], size)
    res = interleaved(c, args.reps)
    out["exhaustive, 2 datasets"] = res
    rows += [(f"exhaustive blending index, 2 datasets, {size} samples", k, fmt(v)) for k, v in res.items()]
    return out, rows


def fmt(v: dict) -> str:
    return f"{v['median_ms']:8.1f} ms  ({v['min_ms']:.1f}-{v['max_ms']:.1f}, {v['runs']} runs)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-prefix", default=None, help="a preprocessed dataset (default: a synthetic one)")
    add_dataclass_args(p, TokenizerConfig, "tokenizer of --data-prefix (as the trainer's flags)")
    p.add_argument("--tokens", type=float, default=40e6, help="synthetic dataset size in tokens")
    p.add_argument("--samples", type=int, default=3000, help="samples fetched per measurement")
    p.add_argument("--index-samples", type=int, default=200000, help="num_samples for the index build timing")
    p.add_argument("--blend-samples", type=int, default=1_000_000, help="blend size for the blending index timing")
    p.add_argument("--reps", type=int, default=7, help="interleaved timing rounds (median and min-max reported)")
    p.add_argument("--skip-fetch", action="store_true", help="time the indices only")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("megatron_tf").setLevel(logging.WARNING)
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    try:
        import megatron.core  # noqa: F401

        have_mc = True
    except ImportError:
        have_mc = False
        print("megatron-core not importable: timing megatron_tf only")
    try:
        tok = open_tokenizer(args)
    except Exception as e:  # noqa: BLE001 - a clear message for a wrong flag
        p.error(f"--data-prefix {args.data_prefix}: cannot open the tokenizer ({e}); pass the --tokenizer-type / "
                "--tokenizer-model (or --vocab-size) the dataset was made with")
    if load_library() is None:
        print("native index helpers unavailable: the compiled-loop rows run the no-compiler paths")

    tmp = tempfile.mkdtemp(prefix="bench_gpt_")
    try:
        prefix = args.data_prefix
        if prefix is None:
            prefix = os.path.join(tmp, "synthetic")
            t = time.perf_counter()
            make_synthetic(prefix, int(args.tokens))
            print(f"synthetic dataset: {IndexedDataset(prefix).num_tokens} tokens in {time.perf_counter() - t:.1f} s")
        ds = IndexedDataset(prefix)
        rows, results = [], {"machine": machine_info(), "command": " ".join([os.path.basename(sys.argv[0])] +
                                                                            sys.argv[1:]),
                             "data": {"prefix": args.data_prefix or "synthetic", "tokens": ds.num_tokens,
                                      "documents": ds.num_documents, "tokenizer": type(tok).__name__,
                                      "tokenizer_model": getattr(tok, "path", None)},
                             "reps": args.reps}
        if not args.skip_fetch:
            results["fetch_us_per_sample"], r = bench_fetch(prefix, tok, args, have_mc, tmp)
            rows += r
        results["index_build_ms"], results["index_arrays_ms"], r = bench_index(prefix, ds, tok, args, have_mc, tmp)
        rows += r
        results["blending_index_ms"], r = bench_blending(args, have_mc)
        rows += r

        w = max(len(r[0]) for r in rows)
        w2 = max(len(r[1]) for r in rows)
        for r in rows:
            print(f"{r[0]:{w}s}  {r[1]:{w2}s}  {r[2]}")
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"gpt_dataset_{platform.node() or 'host'}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(out + ".tmp", out)
        print(f"wrote {out}")
    finally:
        from megatron_tf.data.index_cache import wait_for_cache_writes

        wait_for_cache_writes()  # background index-cache writes into tmp must not recreate it after the removal
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
