"""Library side of tools/inspect_dataset.py: summary of a dataset prefix and one sample as JSON.

The whole prefix is one split (documents [0, N)), one epoch, built with the given seq_length and seed; sample I is
`ds[I]` of that dataset (after the shuffle), without label noise or a start step.

`--dump-sample I` JSON (one object on one line, exactly these keys, lists of length seq_length):
    {"tokens": [int], "labels": [int], "loss_mask": [0|1], "forget": [0|1]}
`forget` holds the forget flags of the INPUT positions (tokens[i] is forget); `loss_mask` is 0 where the target
labels[i] does not count (mask/remove: labels[i] is forget).
"""

from __future__ import annotations

import numpy as np

from ..tokenizer.tokenizer import Tokenizer
from .builder import SampleFilter, _Builder
from .config import FilterConfig, GPTDatasetConfig
from .gpt_dataset import GPTDataset

DUMP_KEYS = ("tokens", "labels", "loss_mask", "forget")


def open_inspection(prefix: str, tokenizer: Tokenizer, fcfg: FilterConfig, seq_length: int, seed: int = 1234,
                    cache_dir: str | None = None) -> tuple[dict, GPTDataset | None]:
    """(summary dict, dataset or None when the prefix holds fewer than seq_length + 1 tokens)."""
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq_length, seed=seed,
                           data_cache_path=cache_dir)
    b = _Builder(cfg, fcfg, tokenizer, None)
    src = b.source(prefix)
    docs, st = b.documents(src, (0.0, 1.0), drop=True)
    summary = {
        "prefix": prefix,
        "documents": st["documents"],
        "tokens": st["tokens"],
        "token_filter": fcfg.token_filter,
        "forget_threshold": None if src.flags is None else src.flags.threshold,
        "forget_sidecar": None if src.flags is None else src.flags.path,
        "forget_token_fraction": st.get("forget_token_fraction"),
        "tokens_filtered_fraction": st["tokens_filtered"] / max(st["tokens"], 1),
        "documents_filtered_fraction": st["documents_filtered"] / max(st["documents"], 1),
    }
    kept_tokens = int(np.asarray(src.indexed.sequence_lengths)[docs].sum(dtype=np.int64))
    if kept_tokens < seq_length + 1:
        return summary, None
    mode = fcfg.token_filter if fcfg.token_filter != "document" else "none"
    filt = SampleFilter(mode, tokenizer.hidden, tokenizer.eod)
    ds = GPTDataset(src, docs, None, seq_length, seed, filt, cache_dir, "train")
    summary["samples"] = len(ds)
    summary["seq_length"] = seq_length
    return summary, ds


def dump_sample(ds: GPTDataset, index: int) -> dict:
    s = ds.get(index, None)
    return {
        "tokens": s["tokens"].astype(np.int64).tolist(),
        "labels": s["labels"].astype(np.int64).tolist(),
        "loss_mask": (s["loss_mask"] != 0).astype(np.int64).tolist(),
        "forget": s["forget"].astype(np.int64).tolist(),
    }
