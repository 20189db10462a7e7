#!/usr/bin/env python3
"""GPT dataset speed vs megatron-core's GPTDataset on the same data: sample fetch (with masks) and index build.

Data: --data-prefix P (a preprocessed corpus with P.forget.tokscores/.tokmask sidecars), or by default a synthetic
dataset written with write_dataset: random uint16 tokens, lognormal document lengths (median e^6 ~ 400, mean ~ 660
tokens, clipped to [8, 20000]), <|endoftext|> at the end of every document, random uint8 token scores and a bit
mask at 0.5. Prints a table and writes benchmarks/results/gpt_dataset_<host>.json with machine info.

    python benchmarks/bench_gpt_dataset.py [--tokens 40e6] [--samples 3000] [--index-samples 200000]
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

from megatron_tf.data.builder import build_gpt_datasets  # noqa: E402
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig  # noqa: E402
from megatron_tf.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder  # noqa: E402
from megatron_tf.data.sidecar import write_token_mask, write_token_scores  # noqa: E402
from megatron_tf.tokenizer.tokenizer import NullTokenizer  # noqa: E402

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


def megatron_dataset(prefix, seq, num_samples, cache, eod_mask_loss=False):
    from collections import OrderedDict

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig as MCfg

    class Tok:
        vocab_size, eod, pad = VOCAB, EOD, VOCAB - 1
        unique_identifiers = OrderedDict(cls="bench", vocab_size=VOCAB)

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


def ours(prefix, seq, num_samples, cache, mode="none", threshold=None):
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq, seed=1234, data_cache_path=cache)
    fc = FilterConfig(token_filter=mode, forget_threshold=threshold)
    return build_gpt_datasets(cfg, fc, NullTokenizer(VOCAB), [num_samples, None, None]).train


def timed_build(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        cache = tempfile.mkdtemp(prefix="bench_cache_")
        t = time.perf_counter()
        fn(cache)
        best = min(best, time.perf_counter() - t)
        shutil.rmtree(cache)
    return best


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
        import torch

        info["torch"] = torch.__version__
        from megatron.core import package_info

        info["megatron_core"] = package_info.__version__
    except Exception:  # noqa: BLE001 - optional
        pass
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-prefix", default=None)
    p.add_argument("--tokens", type=float, default=40e6, help="synthetic dataset size in tokens")
    p.add_argument("--samples", type=int, default=3000, help="samples fetched per measurement")
    p.add_argument("--index-samples", type=int, default=200000, help="num_samples for the index build timing")
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

    tmp = tempfile.mkdtemp(prefix="bench_gpt_")
    prefix = args.data_prefix
    if prefix is None:
        prefix = os.path.join(tmp, "synthetic")
        t = time.perf_counter()
        make_synthetic(prefix, int(args.tokens))
        print(f"synthetic dataset: {IndexedDataset(prefix).num_tokens} tokens in {time.perf_counter() - t:.1f} s")
    ds = IndexedDataset(prefix)
    rows, results = [], {"machine": machine_info(), "data": {"prefix": args.data_prefix or "synthetic",
                                                             "tokens": ds.num_tokens, "documents": ds.num_documents}}
    fetch = {}
    for seq in (2048, 4096):
        n_samples = 20000
        cache = os.path.join(tmp, "cache")
        entries = {}
        if have_mc:
            entries["megatron-core GPTDataset (loss_mask, position_ids)"] = megatron_dataset(prefix, seq, n_samples,
                                                                                           cache + "_mc")
            entries["megatron-core GPTDataset --eod-mask-loss"] = megatron_dataset(prefix, seq, n_samples,
                                                                                 cache + "_mc", eod_mask_loss=True)
        entries["megatron_tf none (+ forget flags from bit mask)"] = ours(prefix, seq, n_samples, cache)
        entries["megatron_tf mask, token scores (T=0.6)"] = ours(prefix, seq, n_samples, cache, "mask", 0.6)
        entries["megatron_tf mask, bit mask (T=0.5)"] = ours(prefix, seq, n_samples, cache, "mask", 0.5)
        entries["megatron_tf remove, bit mask (T=0.5)"] = ours(prefix, seq, n_samples, cache, "remove", 0.5)
        for name, d in entries.items():
            us = time_fetch(d, args.samples) * 1e6
            fetch[f"{seq}/{name}"] = us
            rows.append((f"fetch seq {seq}", name, f"{us:8.1f} us/sample"))
    results["fetch_us_per_sample"] = fetch

    index = {}
    for seq in (2048, 4096):
        n = args.index_samples * 2048 // seq
        if have_mc:
            index[f"{seq}/megatron-core"] = timed_build(lambda c: megatron_dataset(prefix, seq, n, c))  # noqa: B023
        index[f"{seq}/megatron_tf"] = timed_build(lambda c: ours(prefix, seq, n, c))  # noqa: B023
        for k, v in index.items():
            if k.startswith(f"{seq}/"):
                rows.append((f"index build seq {seq}, {n} samples", k.split("/", 1)[1], f"{v * 1e3:8.1f} ms"))
    results["index_build_s"] = index

    # the index arrays alone (no file I/O, no dataset opening): document + sample + shuffle index
    arrays = {}
    sizes = np.asarray(ds.sequence_lengths)
    docs = np.arange(len(sizes), dtype=np.int32)
    for seq in (2048, 4096):
        n = args.index_samples * 2048 // seq
        from megatron_tf.data.gpt_dataset import build_indices

        arrays[f"{seq}/megatron_tf"] = timed_build(lambda c: build_indices(sizes, docs, seq, n, 1234))  # noqa: B023
        if have_mc:
            arrays[f"{seq}/megatron-core"] = timed_build(lambda c: megatron_arrays(sizes, docs, seq, n))  # noqa: B023
        for k, v in arrays.items():
            if k.startswith(f"{seq}/"):
                rows.append((f"index arrays only seq {seq}, {n} samples", k.split("/", 1)[1], f"{v * 1e3:8.1f} ms"))
    results["index_arrays_s"] = arrays

    from megatron_tf.data.blending import build_blending_indices

    size = 1_000_000
    t = time.perf_counter()
    build_blending_indices([0.3, 0.7], size)
    blend = {"megatron_tf (python greedy)": time.perf_counter() - t}
    if have_mc:
        from megatron.core.datasets import helpers

        d, s = np.zeros(size, np.int16), np.zeros(size, np.int64)
        t = time.perf_counter()
        helpers.build_blending_indices(d, s, np.array([0.3, 0.7]), 2, size, False)
        blend["megatron-core (C++)"] = time.perf_counter() - t
    for k, v in blend.items():
        rows.append((f"blending index, 2 datasets, {size} samples", k, f"{v * 1e3:8.1f} ms"))
    results["blending_index_s"] = blend

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
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
