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
from dataclasses import dataclass, field
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_tf.checkpoint import CheckpointError, load_model  # noqa: E402
from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402
from megatron_tf.evaluation.lm_eval_bridge import LMEvalConfig, fold_lm_eval  # noqa: E402
from megatron_tf.evaluation.runner import (  # noqa: E402
    EvaluationConfig,
    csv_text,
    evaluate_model,
    result_rows,
    run_metadata_from_configs,
    write_results,
)
from megatron_tf.tokenizer.config import TokenizerOverride  # noqa: E402
from megatron_tf.utils.device import resolve_device  # noqa: E402
from megatron_tf.utils.io import atomic_write  # noqa: E402


@dataclass
class EvaluateToolConfig:
    """Which checkpoints to evaluate, where the results go, and what to say about each run."""

    load: list[str] = field(metadata=opt("Checkpoint directories (as written by --save)."))
    output_dir: str = field(metadata=opt("Where <run>.json / <run>.csv / summary.csv go."))
    run_name: str | None = field(default=None, metadata=opt(
        "Name of the run (one --load only; default: the directory name)."))
    arm: str | None = field(default=None, metadata=opt("Arm label (default: the checkpoint's --token-filter)."))
    size: str | None = field(default=None, metadata=opt(
        "Size label for the scaling report (default: from the parameters)."))
    tokens_seen: float | None = field(default=None, metadata=opt("Override the checkpoint's tokens seen."))
    tokens_learned: float | None = field(default=None, metadata=opt("Override the checkpoint's tokens learned."))
    seq_length: int | None = field(default=None, metadata=opt(
        "Window length (default: the checkpoint's --seq-length, else max_position_embeddings)."))
    device: str = field(default="auto", metadata=opt("Device.", choices=("auto", "cpu", "cuda")))
    overwrite: bool = field(default=False, metadata=opt("Re-evaluate checkpoints that have a result."))
    save_predictions: bool = field(default=False, metadata=opt("Keep per-question log-likelihoods in the JSON."))
    progress: bool = field(default=True, metadata=opt("Show progress bars."))


class ToolArgs(NamedTuple):
    tool: EvaluateToolConfig
    tokenizer: TokenizerOverride
    evaluation: EvaluationConfig
    lm_eval: LMEvalConfig


def parse_args(argv=None) -> ToolArgs:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sections = {"tool": EvaluateToolConfig, "tokenizer": TokenizerOverride, "evaluation": EvaluationConfig,
                "lm_eval": LMEvalConfig}
    titles = {"tool": "checkpoints and outputs", "tokenizer": "tokenizer", "lm_eval": "lm-evaluation-harness"}
    for name, cls in sections.items():
        add_dataclass_args(p, cls, titles.get(name))
    ns = p.parse_args(argv)
    args = ToolArgs(**{name: dataclass_from_args(cls, ns) for name, cls in sections.items()})
    if args.tool.run_name and len(args.tool.load) > 1:
        p.error("--run-name needs a single --load")
    return args


def load_checkpoint(path: str, device: torch.device | str = "cpu"):
    """(model, configs, tokenizer, state, dataset_stats): the whole model, the run's saved configs (a dict by
    section), its tokenizer (None when its file moved), its state.json (iteration, tokens seen / learned; {} when
    absent) and the dataset statistics the trainer saved in config.json (per split: tokens, tokens_filtered_fraction,
    ...; {} for checkpoints without them)."""
    if not os.path.isdir(path):
        raise SystemExit(f"tools/evaluate.py: checkpoint directory not found: {path}")
    try:
        m = load_model(path, device=device)
    except CheckpointError as e:
        raise SystemExit(f"tools/evaluate.py: {e}") from e
    return m.model, m.run.configs, m.tokenizer, m.run.state, m.run.config.get("dataset_stats", {})


def default_run_name(path: str) -> str:
    """The checkpoint directory's name (its parent's for Megatron-style iter_0000100 folders)."""
    p = os.path.normpath(os.path.abspath(path))
    base = os.path.basename(p)
    return os.path.basename(os.path.dirname(p)) if re.fullmatch(r"iter_\d+", base) else base


def evaluate_checkpoint(path: str, args: ToolArgs, name: str) -> dict:
    t, cfg = args.tool, args.evaluation
    device = torch.device(resolve_device(t.device))
    model, configs, tokenizer, state, dataset_stats = load_checkpoint(path, device)
    train_stats = dataset_stats.get("train") or {}
    if args.tokenizer.tokenizer_type:
        tokenizer = args.tokenizer.build()
    if tokenizer is None:
        raise SystemExit(f"tools/evaluate.py: {path}: the checkpoint's tokenizer cannot be rebuilt (moved?); pass "
                         "--tokenizer-type and --tokenizer-model")
    meta = run_metadata_from_configs({"state": state, "configs": configs})
    seq_length = t.seq_length or meta.get("seq_length") or getattr(model.config, "max_position_embeddings", None)
    if not seq_length:
        raise SystemExit(f"tools/evaluate.py: {path}: no seq_length in the checkpoint's configs; pass --seq-length")
    if cfg.forget_threshold is None and meta.get("forget_threshold") is not None:
        cfg = dataclasses.replace(cfg, forget_threshold=float(meta["forget_threshold"]))
    run = {"name": name, "arm": t.arm or meta.get("arm"), "size": t.size, "checkpoint": os.path.abspath(path),
           "iteration": meta.get("iteration"), "train_tokens_count": meta.get("train_tokens_count", "learned"),
           "tokens_seen": t.tokens_seen if t.tokens_seen is not None else meta.get("tokens_seen"),
           "tokens_learned": t.tokens_learned if t.tokens_learned is not None else meta.get("tokens_learned")}
    if train_stats.get("tokens_filtered_fraction") is not None:  # the achieved filtered share (threshold frontier)
        run["tokens_filtered_fraction"] = float(train_stats["tokens_filtered_fraction"])
    result = evaluate_model(model, tokenizer, cfg, seq_length=int(seq_length), run=run,
                            progress=t.progress, predictions=t.save_predictions, train_configs=configs)
    return fold_lm_eval(result, model, tokenizer, args.lm_eval, int(seq_length), t.output_dir, name)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as e:  # bad input (e.g. --eval-labels NAME without such an annotation)
        print(f"tools/evaluate.py: error: {e}", file=sys.stderr)
        return 2


def _run(args: ToolArgs) -> int:
    t = args.tool
    rows = []
    for path in t.load:
        name = t.run_name or default_run_name(path)
        out_json = os.path.join(t.output_dir, f"{name}.json")
        if os.path.isfile(out_json) and not t.overwrite:
            with open(out_json, encoding="utf-8") as f:
                result = json.load(f)
            print(f"(exists, skipped) {result.get('summary', name)}")
        else:
            result = evaluate_checkpoint(path, args, name)
            write_results(result, t.output_dir, name)
            print(result["summary"])
        rows.extend(result_rows(result))
    with atomic_write(os.path.join(t.output_dir, "summary.csv"), "w") as f:
        f.write(csv_text(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
