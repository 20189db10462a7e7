#!/usr/bin/env python3
"""Evaluate trained checkpoints: held-out loss per domain (and its token-level variant) and cloze multiple choice.

    python tools/evaluate.py --load checkpoints/tiny-none [checkpoints/tiny-mask ...] --output-dir evals \\
        --forget-text data/demo/heldout/medical.jsonl.xz --retain-text data/demo/heldout/biology.jsonl.xz \\
        --general-text data/demo/heldout/general.jsonl.xz --blocklist data/demo/medical_terms.txt \\
        --mmlu data/demo/eval/mmlu.jsonl.xz --medqa data/demo/eval/medqa.jsonl.xz \\
        --medmcqa data/demo/eval/medmcqa.jsonl.xz [--limit 50]

Per checkpoint: <output-dir>/<run>.json (everything) and <run>.csv (long format), and a one-line summary on stdout;
<output-dir>/summary.csv concatenates the rows of the checkpoints of this call. A checkpoint whose JSON exists is
skipped (resume) unless --overwrite. The checkpoint is loaded in this process with
megatron_tf.checkpoint.load_model(dir) (TP/PP shards merged; the run's saved configs and state.json beside it);
--seq-length, the arm (--token-filter) and the forget threshold come from its configs, the iteration and the tokens
seen / learned from its state.json, unless given here. The filter's labels (annotation, labeler, spec) are read from
the run's configs and its training prefixes' sidecars; --eval-labels NAME picks the annotation the token-level
metrics use, and every token-level metric says whether it is "privileged" (its labels are the filter's).
--knowledge DIR/test.jsonl adds the knowledge probe's cloze accuracy (tools/make_knowledge_probe.py).
Metrics, prompt format and files: docs/evaluation.md.
Logic: megatron_tf/evaluation/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_tf.checkpoint import CheckpointError, load_model  # noqa: E402
from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.evaluation.lm_eval_bridge import add_lm_eval_args, fold_lm_eval  # noqa: E402
from megatron_tf.evaluation.runner import (  # noqa: E402
    EvaluationConfig,
    csv_text,
    evaluate_model,
    result_rows,
    run_metadata_from_configs,
    write_results,
)
from megatron_tf.tokenizer.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402
from megatron_tf.utils.io import atomic_write  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--load", required=True, nargs="+", help="checkpoint directories (as written by --save)")
    p.add_argument("--output-dir", required=True, help="where <run>.json / <run>.csv / summary.csv go")
    p.add_argument("--run-name", default=None, help="name of the run (one --load only; default: the directory name)")
    p.add_argument("--arm", default=None, help="arm label (default: the checkpoint's --token-filter)")
    p.add_argument("--size", default=None, help="size label for the scaling report (default: from the parameters)")
    p.add_argument("--tokens-seen", type=float, default=None, help="override the checkpoint's tokens seen")
    p.add_argument("--tokens-learned", type=float, default=None, help="override the checkpoint's tokens learned")
    p.add_argument("--seq-length", type=int, default=None,
                   help="window length (default: the checkpoint's --seq-length, else max_position_embeddings)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tokenizer-type", default=None, choices=TOKENIZER_TYPES,
                   help="rebuild the tokenizer from these flags instead of the checkpoint's")
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only")
    p.add_argument("--overwrite", action="store_true", help="re-evaluate checkpoints that have a result")
    p.add_argument("--save-predictions", action="store_true", help="keep per-question log-likelihoods in the JSON")
    p.add_argument("--no-progress", action="store_true")
    add_dataclass_args(p, EvaluationConfig)
    add_lm_eval_args(p)
    args = p.parse_args(argv)
    if args.run_name and len(args.load) > 1:
        p.error("--run-name needs a single --load")
    return args


def load_checkpoint(path: str, device: torch.device | str = "cpu"):
    """(model, configs, tokenizer, state): the whole model, the run's saved configs (a dict by section), its
    tokenizer (None when its file moved) and its state.json (iteration, tokens seen / learned; {} when absent)."""
    if not os.path.isdir(path):
        raise SystemExit(f"tools/evaluate.py: checkpoint directory not found: {path}")
    try:
        m = load_model(path, device=device)
    except CheckpointError as e:
        raise SystemExit(f"tools/evaluate.py: {e}") from e
    return m.model, m.run.configs, m.tokenizer, m.run.state


def default_run_name(path: str) -> str:
    """The checkpoint directory's name (its parent's for Megatron-style iter_0000100 folders)."""
    p = os.path.normpath(os.path.abspath(path))
    base = os.path.basename(p)
    return os.path.basename(os.path.dirname(p)) if re.fullmatch(r"iter_\d+", base) else base


def evaluate_checkpoint(path: str, args, cfg: EvaluationConfig, name: str) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model, configs, tokenizer, state = load_checkpoint(path, device)
    if args.tokenizer_type:
        tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
    if tokenizer is None:
        raise SystemExit(f"tools/evaluate.py: {path}: the checkpoint's tokenizer cannot be rebuilt (moved?); pass "
                         "--tokenizer-type and --tokenizer-model")
    meta = run_metadata_from_configs({"state": state, "configs": configs})
    seq_length = args.seq_length or meta.get("seq_length") or getattr(model.config, "max_position_embeddings", None)
    if not seq_length:
        raise SystemExit(f"tools/evaluate.py: {path}: no seq_length in the checkpoint's configs; pass --seq-length")
    if cfg.forget_threshold is None and meta.get("forget_threshold") is not None:
        cfg = dataclasses.replace(cfg, forget_threshold=float(meta["forget_threshold"]))
    run = {"name": name, "arm": args.arm or meta.get("arm"), "size": args.size, "checkpoint": os.path.abspath(path),
           "iteration": meta.get("iteration"), "train_tokens_count": meta.get("train_tokens_count", "learned"),
           "tokens_seen": args.tokens_seen if args.tokens_seen is not None else meta.get("tokens_seen"),
           "tokens_learned": args.tokens_learned if args.tokens_learned is not None else meta.get("tokens_learned")}
    result = evaluate_model(model, tokenizer, cfg, seq_length=int(seq_length), run=run,
                            progress=not args.no_progress, predictions=args.save_predictions, train_configs=configs)
    return fold_lm_eval(result, model, tokenizer, args, int(seq_length), args.output_dir, name)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as e:  # bad input (e.g. --eval-labels NAME without such an annotation)
        print(f"tools/evaluate.py: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    cfg = dataclass_from_args(EvaluationConfig, args)
    rows = []
    for path in args.load:
        name = args.run_name or default_run_name(path)
        out_json = os.path.join(args.output_dir, f"{name}.json")
        if os.path.isfile(out_json) and not args.overwrite:
            with open(out_json, encoding="utf-8") as f:
                result = json.load(f)
            print(f"(exists, skipped) {result.get('summary', name)}")
        else:
            result = evaluate_checkpoint(path, args, cfg, name)
            write_results(result, args.output_dir, name)
            print(result["summary"])
        rows.extend(result_rows(result))
    with atomic_write(os.path.join(args.output_dir, "summary.csv"), "w") as f:
        f.write(csv_text(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
