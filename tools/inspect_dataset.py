#!/usr/bin/env python3
"""Inspect a Megatron dataset prefix, or the train split of a --data-path blend, with its forget sidecars:
documents, tokens, filtered fractions, per-component samples and epochs; or dump one sample as JSON (format:
docs/gpt_dataset.md, megatron_tf/data/inspect.py).

    python tools/inspect_dataset.py --data-prefix data/corpus_text_document --token-filter mask \\
        --forget-threshold 0.5 --tokenizer-type NullTokenizer --vocab-size 32000 [--dump-sample 7]
    python tools/inspect_dataset.py --data-path 0.5 data/med 0.5 data/bio --split 969,30,1 --train-samples 100000 \\
        --token-filter document --document-filter-fraction 0.1 --vocab-size 32000 --json
"""

# No `from __future__ import annotations`: InspectConfig's annotations are evaluated here, so the dataclass builds
# when this file is loaded without a sys.modules entry (tests/tools/test_inspect_dataset.py, spec_from_file_location).
import argparse
import json
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig  # noqa: E402
from megatron_tf.data.inspect import dump_sample, inspect_train_split, open_inspection  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402

COMPONENT_KEYS = ("weight_given", "weight", "samples", "tokens_total", "tokens_kept", "epochs", "prefix")


@dataclass
class InspectConfig:
    """What to inspect (one prefix, or the train split of the data flags below), with which tokenizer, and how to
    print it."""

    data_prefix: str | None = field(default=None, metadata=opt(
        "One dataset prefix P (P.bin, P.idx), taken whole as one split, one epoch; or use --data-path / "
        "--train-data-path (the trainer's flags, below) for the train split of a blend."))
    train_samples: int | None = field(default=None, metadata=opt(
        "Samples the train split is built for (needed by a weighted blend); or --train-iters."))
    train_iters: int | None = field(default=None, metadata=opt("With --global-batch-size: train samples = I x G."))
    global_batch_size: int | None = field(default=None, metadata=opt("Samples per step (with --train-iters)."))
    seq_length: int = field(default=2048, metadata=opt("Tokens per sample."))
    seed: int = field(default=1234, metadata=opt("Shuffle seed."))
    tokenizer_type: str | None = field(default=None, metadata=opt(
        "Tokenizer (default NullTokenizer with --vocab-size).", choices=TOKENIZER_TYPES))
    tokenizer_model: str | None = field(default=None, metadata=opt("Tokenizer model file."))
    vocab_size: int | None = field(default=None, metadata=opt("Vocabulary size for NullTokenizer."))
    json: bool = field(default=False, metadata=opt("Print the summary as one JSON object on one line."))
    dump_sample: int | None = field(default=None, metadata=opt(
        "Print sample I as one JSON object {tokens, labels, loss_mask, forget}.", metavar="I"))

    def resolved_train_samples(self) -> int | None:
        if self.train_samples is not None and self.train_iters is not None:
            raise SystemExit("give --train-samples or --train-iters, not both")
        if self.train_iters is not None:
            if self.global_batch_size is None:
                raise SystemExit("--train-iters needs --global-batch-size")
            return self.train_iters * self.global_batch_size
        if self.train_samples is not None and self.train_samples < 1:
            raise SystemExit(f"--train-samples must be >= 1, got {self.train_samples}")
        return self.train_samples


def parse_args(argv=None) -> tuple[InspectConfig, argparse.Namespace]:
    """The tool's config, and the namespace that GPTDatasetConfig / FilterConfig are built from where main needs them
    (built lazily so bad input is reported in the same order as before: tokenizer, filter, data)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add_dataclass_args(p, InspectConfig, "inspection")
    add_dataclass_args(p, GPTDatasetConfig, "data (as pretrain_gpt.py; --data-cache-path default with "
                                            "--data-prefix: in memory)")
    add_dataclass_args(p, FilterConfig)
    ns = p.parse_args(argv)
    return dataclass_from_args(InspectConfig, ns), ns


def open_data(t: InspectConfig, ns: argparse.Namespace, tokenizer, fcfg: FilterConfig):
    blend_given = any(getattr(ns, k, None) for k in ("data_path", "train_data_path", "valid_data_path",
                                                     "test_data_path"))
    if (t.data_prefix is None) == (not blend_given):
        raise SystemExit("give --data-prefix, or --data-path / --train-data-path (not both)")
    if t.data_prefix is not None:
        return open_inspection(t.data_prefix, tokenizer, fcfg, t.seq_length, t.seed,
                               getattr(ns, "data_cache_path", None))
    cfg = dataclass_from_args(GPTDatasetConfig, ns, seq_length=t.seq_length, seed=t.seed)
    return inspect_train_split(cfg, fcfg, tokenizer, t.resolved_train_samples())


def main(argv=None) -> int:
    args, ns = parse_args(argv)
    ttype = args.tokenizer_type or "NullTokenizer"
    if ttype == "NullTokenizer" and args.vocab_size is None:
        raise SystemExit("give --tokenizer-type/--tokenizer-model, or --vocab-size for NullTokenizer")
    tokenizer = build_tokenizer(ttype, args.tokenizer_model, args.vocab_size)
    summary, ds = open_data(args, ns, tokenizer, dataclass_from_args(FilterConfig, ns))
    where = args.data_prefix or "the train split"
    if args.dump_sample is not None:
        if ds is None:
            raise SystemExit(f"{where}: fewer than {args.seq_length + 1} tokens, no sample to dump")
        if not 0 <= args.dump_sample < len(ds):
            raise SystemExit(f"--dump-sample {args.dump_sample} outside [0, {len(ds)})")
        sys.stdout.write(json.dumps(dump_sample(ds, args.dump_sample)) + "\n")
        return 0
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0
    for k, v in summary.items():  # one "key value" line each (scripts split on the first blank)
        if k != "components":
            print(f"{k:28s} {v}")
    for k, r in enumerate(summary["components"]):
        print(f"{f'component[{k}]':28s} " + " ".join(f"{c}={r[c]}" for c in COMPONENT_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
