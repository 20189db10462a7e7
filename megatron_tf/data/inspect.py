"""Library side of tools/inspect_dataset.py: summary of a dataset prefix or of a --data-path blend's train split, and
one sample as JSON.

`open_inspection` (--data-prefix P): the whole prefix is one split (documents [0, N)), one epoch, built with the
given seq_length and seed; sample I is `ds[I]` of that dataset (after the shuffle), without label noise or a start
step. `inspect_train_split` (--data-path / --train-data-path, as pretrain_gpt.py takes them): the train split built
exactly as the trainer builds it for `num_samples` samples (megatron_tf/data/builder.py), with its per-component
table; sample I is the trainer's I-th consumed sample.

`--dump-sample I` JSON (one object on one line, exactly these keys, lists of length seq_length):
    {"tokens": [int], "labels": [int], "loss_mask": [0|1], "forget": [0|1]}
`forget` holds the forget flags of the INPUT positions (tokens[i] is forget); `loss_mask` is 0 where the target
labels[i] does not count (mask/remove: labels[i] is forget).
"""

from __future__ import annotations

import numpy as np

from ..tokenizer.tokenizer import Tokenizer
from .builder import SampleFilter, _Builder, build_gpt_datasets
from .config import FilterConfig, GPTDatasetConfig
from .gpt_dataset import GPTDataset

DUMP_KEYS = ("tokens", "labels", "loss_mask", "forget")


def open_inspection(prefix: str, tokenizer: Tokenizer, fcfg: FilterConfig, seq_length: int, seed: int = 1234,
                    cache_dir: str | None = None) -> tuple[dict, GPTDataset | None]:
    """(summary dict, dataset or None when the prefix holds fewer than seq_length + 1 tokens)."""
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq_length, seed=seed,
                           data_cache_path=cache_dir)
    b = _Builder(cfg, fcfg, tokenizer, None)
    b.resolve_filter()
    fcfg = b.fcfg
    src = b.source(prefix)
    docs, st = b.documents(src, (0.0, 1.0), drop=True)
    summary = {
        "prefix": prefix,
        "documents": st["documents"],
        "tokens": st["tokens"],
        "token_filter": fcfg.token_filter,
        "forget_threshold": None if src.flags is None else src.flags.threshold,
        "forget_sidecar": None if src.flags is None else src.flags.path,
        "document_threshold": fcfg.document_threshold if fcfg.token_filter == "document" else None,
        "forget_token_fraction": st.get("forget_token_fraction"),
        "tokens_filtered_fraction": st["tokens_filtered"] / max(st["tokens"], 1),
        "documents_filtered_fraction": st["documents_filtered"] / max(st["documents"], 1),
    }
    kept_tokens = int(np.asarray(src.indexed.sequence_lengths)[docs].sum(dtype=np.int64))
    row = {"prefix": prefix, "weight": 1.0, "weight_given": None, "samples": 0, "tokens_total": st["tokens"],
           "tokens_kept": st["tokens_kept"], "epochs": 0.0}
    if kept_tokens < seq_length + 1:
        summary["components"] = [row]
        return summary, None
    mode = fcfg.token_filter if fcfg.token_filter != "document" else "none"
    filt = SampleFilter(mode, tokenizer.hidden, tokenizer.eod, pad_id=tokenizer.pad)
    ds = GPTDataset(src, docs, None, seq_length, seed, filt, cache_dir, "train")
    summary["samples"] = len(ds)
    summary["seq_length"] = seq_length
    row.update(samples=len(ds), epochs=len(ds) * seq_length / kept_tokens)
    summary["components"] = [row]
    return summary, ds


SPLIT_KEYS = ("documents", "tokens", "tokens_filtered", "documents_filtered", "tokens_filtered_fraction",
              "documents_filtered_fraction", "forget_tokens", "forget_token_fraction",
              "tokens_filtered_fraction_weighted")


def inspect_train_split(cfg: GPTDatasetConfig, fcfg: FilterConfig, tokenizer: Tokenizer, num_samples: int | None
                        ) -> tuple[dict, object]:
    """(summary, train dataset) of the train split as the trainer builds it for `num_samples` samples (None: one
    epoch of an unweighted source). Summary keys: split, seq_length, samples, filter (the builder's filter record:
    thresholds given or picked, achieved fraction), the split's totals (SPLIT_KEYS present) and components (one row
    per --data-path component: prefix, weight, weight_given, samples, tokens_total, tokens_kept, epochs)."""
    res = build_gpt_datasets(cfg, fcfg, tokenizer, [num_samples, 0, 0])
    if res.train is None:
        raise ValueError(f"--split {cfg.split} gives the train split no documents" if cfg.data_path else
                         "no train split: give --data-path or --train-data-path")
    st = res.stats["train"]
    samples = len(res.train) if num_samples is None else min(num_samples, len(res.train))
    summary = {"split": "train", "seq_length": cfg.seq_length, "samples": samples, "filter": res.stats["filter"]}
    summary.update({k: st[k] for k in SPLIT_KEYS if k in st})
    summary["components"] = st["components"]
    return summary, res.train


def dump_sample(ds, index: int) -> dict:
    s = ds.get(index, None)
    return {
        "tokens": s["tokens"].astype(np.int64).tolist(),
        "labels": s["labels"].astype(np.int64).tolist(),
        "loss_mask": (s["loss_mask"] != 0).astype(np.int64).tolist(),
        "forget": s["forget"].astype(np.int64).tolist(),
    }
