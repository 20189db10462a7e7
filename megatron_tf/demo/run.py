"""The end-to-end demo (README main job): tokenizer -> preprocess -> annotate -> train 4 arms -> evaluate -> report.

    python tools/demo.py                      # CPU preset "tiny": about 6-8 minutes on 2 cores
    python tools/demo.py --size small         # a GPU-sized preset (same pipeline, bigger model and budget)

Every arm trains on the same number of LEARNED tokens (unmasked targets, --train-tokens-count learned), as in the
paper, so a filtered arm sees more raw tokens (and compute) than the baseline; the tables print both. The `document`
arm is matched: it drops the share of training tokens that the token filters take out of the loss
(--document-filter-fraction). Rerunning resumes: finished steps are skipped, an interrupted training run continues
from its last checkpoint.

What it shows (demo/report.py): per-domain held-out losses over all tokens (the paper's primary metric; forget =
medical, retain = biology, general = WikiText), the forget set's token-level loss on tokens labeled by the half of
the blocklist the filter never used, and cloze accuracy on the knowledge probe's invented facts, which the demo's
models can learn. The token-level loss with the filter's own labels is printed apart as privileged. Real MCQ slices
are reported too (tiny CPU models score at chance there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from ..config.cli import add_dataclass_args, dataclass_from_args, opt
from ..evaluation import EvaluationConfig, evaluate_model, write_results
from ..tokenizer.train import TrainTokenizerConfig, train_tokenizer
from ..utils.io import atomic_write, sha256_file
from ..utils.logging import get_logger
from .data_stage import (
    DEMO_DIR,
    DOMAINS,
    EVAL_TERMS,
    FILTER_MODES,
    DemoData,
    doc_score_column,
    filter_summary,
    format_filter_table,
    matched_document_filter,
    prepare_demo_data,
)
from .report import ROLES, comparison_rows, format_comparison, format_privileged, plot_demo, write_report

log = get_logger(__name__)


@dataclass(frozen=True)
class DemoSize:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    train_tokens: int
    lr: float
    eval_limit: int | None  # documents per held-out set / questions per MCQ set (None: all)


# tiny: 2 x 128, ~2.3M parameters (2.1M of them the 8192-entry embedding and output layer); measured on this 2-core
# VM at ~9k tokens/s in fp32, so 4 arms x 600k learned tokens train in about 4-5 minutes.
SIZES = {
    "tiny": DemoSize(2, 128, 4, 256, 16, 16, 600_000, 3e-3, 60),
    "small": DemoSize(8, 512, 8, 1024, 8, 64, 100_000_000, 1e-3, None),
}


SPLIT = "98,2,0"
# The probe's two components are drawn about PROBE_EPOCHS times each per arm (the three domains equally weighted,
# each well under one epoch): enough repetitions for the tiny model to learn invented facts (measured in the report).
PROBE_EPOCHS = 8
MAX_PROBE_SHARE = 0.2  # at small --train-tokens (tests) the probe keeps at most this share, at fewer epochs


def blend(size: DemoSize, data: DemoData) -> list[str]:
    """--data-path: the three domains with weight 1 each, the probe's components weighted so that each is drawn
    about PROBE_EPOCHS times: share s_p = PROBE_EPOCHS x tokens_p / train_tokens, weight s_p x 3 / (1 - sum s_p)."""
    from ..data.indexed_dataset import IndexedDataset

    items = [x for dom in DOMAINS for x in ("1", data.train[dom])]  # balanced domains (data/demo/README.md)
    shares = {p: PROBE_EPOCHS * int(IndexedDataset(p).token_offsets[-1]) / size.train_tokens
              for p in data.probe_train.values()}
    total = sum(shares.values())
    if total > MAX_PROBE_SHARE:
        log.warning("the knowledge probe would take %.0f%% of %s training tokens at %d epochs: capped at %.0f%% "
                    "(%.2g epochs)", 100 * total, f"{size.train_tokens:,}", PROBE_EPOCHS, 100 * MAX_PROBE_SHARE,
                    PROBE_EPOCHS * MAX_PROBE_SHARE / total)
        shares = {p: sp * MAX_PROBE_SHARE / total for p, sp in shares.items()}
        total = MAX_PROBE_SHARE
    for p, sp in shares.items():
        items += [f"{sp * len(DOMAINS) / (1 - total):.6g}", p]
    return items


def _train_args(size: DemoSize, data: DemoData, arm: str, save: str, seed: int, document_fraction: float,
                forget_threshold: float) -> list[str]:
    args = [
        "--num-layers", str(size.num_layers), "--hidden-size", str(size.hidden_size),
        "--num-attention-heads", str(size.num_attention_heads), "--seq-length", str(size.seq_length),
        "--micro-batch-size", str(size.micro_batch_size), "--global-batch-size", str(size.global_batch_size),
        "--train-tokens", str(size.train_tokens), "--train-tokens-count", "learned",
        "--lr", str(size.lr), "--min-lr", str(size.lr / 10),
        "--lr-warmup-fraction", "0.05", "--lr-decay-style", "cosine", "--weight-decay", "0.1", "--clip-grad", "1.0",
        "--adam-beta2", "0.95", "--bf16",
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data.tokenizer_model,
        "--data-path", *blend(size, data), "--split", SPLIT, "--num-workers", "1",
        "--token-filter", arm, "--forget-threshold", str(forget_threshold), "--forget-sidecar-name", data.filter_name,
        "--eval-data-path", *(f"{role}={data.heldout[dom]}" for role, dom in
                              (("forget", "medical"), ("retain", "biology"), ("general", "general"))),
        "--save", save, "--load", save, "--save-interval", "100", "--eval-interval", "100", "--eval-iters", "4",
        "--log-interval", "20", "--seed", str(seed),
    ]
    if arm == "document":  # matched: drops the share of training tokens the token filters take out of the loss
        args += ["--document-filter-fraction", f"{document_fraction:.6g}",
                 "--document-score-column", doc_score_column(forget_threshold)]
    return args


def _read_metrics(save: str) -> list[dict]:
    path = os.path.join(save, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec and "tokens_learned" in rec:
                rows.append(rec)
    return rows


def train_arm(size: DemoSize, data: DemoData, arm: str, out_dir: str, seed: int, document_fraction: float,
              forget_threshold: float) -> str:
    from ..training import pretrain

    save = os.path.join(out_dir, "ckpt", arm)
    done = os.path.join(save, "DONE")
    if os.path.exists(done):
        log.info("arm %s: already trained (%s)", arm, save)
        return save
    t0 = time.time()
    result = pretrain(_train_args(size, data, arm, save, seed, document_fraction, forget_threshold))
    log.info("arm %s: %d iterations, %s tokens seen, %s learned, %.0f s", arm, result.iteration,
             f"{result.tokens_seen:,}", f"{result.tokens_learned:,}", time.time() - t0)
    with atomic_write(done, "w") as f:
        json.dump({"iteration": result.iteration, "tokens_seen": result.tokens_seen,
                   "tokens_learned": result.tokens_learned, "stopped_by": result.stopped_by}, f)
    return save


def evaluate_arm(save: str, arm: str, size_name: str, size: DemoSize, data: DemoData, out_dir: str) -> dict:
    from ..checkpoint.load import load_model

    evals = os.path.join(out_dir, "evals")
    path = os.path.join(evals, f"{size_name}-{arm}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    model, _, _, tok, run_record = load_model(save)
    with open(os.path.join(save, "DONE")) as f:
        trained = json.load(f)
    texts = {"forget_text": [data.heldout["medical"]], "retain_text": [data.heldout["biology"]],
             "general_text": [data.heldout["general"]], "limit": size.eval_limit}
    # token-level metrics with the held-out half's labels (never seen by the filter) and the knowledge probe
    cfg = EvaluationConfig(
        **texts, eval_labels=data.eval_labels or data.filter_name, knowledge=data.probe_test,
        mmlu=os.path.join(DEMO_DIR, "eval", "mmlu.jsonl.xz"), medqa=os.path.join(DEMO_DIR, "eval", "medqa.jsonl.xz"),
        medmcqa=os.path.join(DEMO_DIR, "eval", "medmcqa.jsonl.xz"))
    run = {"name": f"{size_name}-{arm}", "arm": arm, "size": size_name, **trained}
    result = evaluate_model(model, tok, cfg, seq_length=size.seq_length, run=run, train_configs=run_record.configs)
    if data.eval_labels:  # the same losses with the filter's own labels: privileged, reported apart
        own = evaluate_model(model, tok, EvaluationConfig(**texts, eval_labels=data.filter_name),
                             seq_length=size.seq_length, run=run, train_configs=run_record.configs)
        result["filter_label_losses"] = {role: own["loss"][role].get("token_level") for role in ROLES}
    write_results(result, evals)
    return result


def run_demo(out_dir: str, size_name: str = "tiny", arms: tuple[str, ...] = FILTER_MODES, seed: int = 1234,
             workers: int = 1, train_tokens: int | None = None, forget_threshold: float = 0.5,
             eval_limit: int | None = None, classifier: str | None = None) -> dict:
    size = SIZES[size_name]
    if train_tokens is not None:
        size = DemoSize(**{**asdict(size), "train_tokens": train_tokens})
    if eval_limit is not None:
        size = DemoSize(**{**asdict(size), "eval_limit": eval_limit})
    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    # 1. tokenizer: retrained from the bundled corpus; it must reproduce the shipped model byte for byte
    tok_path = os.path.join(out_dir, "tokenizer", "demo_sp.model")
    shipped = os.path.join(DEMO_DIR, "tokenizer", "demo_sp.model")
    if not os.path.exists(tok_path):
        train_tokenizer(TrainTokenizerConfig(input=[os.path.join(DEMO_DIR, "train", f"{d}.jsonl.xz") for d in DOMAINS],
                                             output=tok_path, vocab_size=8192))
    if sha256_file(tok_path) != sha256_file(shipped):
        log.warning("retrained tokenizer differs from the shipped one (sentencepiece version?); using the shipped "
                    "model so results compare across machines")
        shutil.copyfile(shipped, tok_path)
    # 2-3. preprocess + annotate (blocklist halves: filter / evaluation), the knowledge probe, the classifier's labels
    data = prepare_demo_data(out_dir, workers=workers, tokenizer_model=tok_path, classifier=classifier)
    filter_labels = (f"the biLM classifier {classifier}" if classifier else
                     f"blocklist terms {data.terms_split} (annotation '{data.filter_name}')")
    eval_labels = f"blocklist terms {EVAL_TERMS} (annotation '{data.eval_labels}')"
    log.info("training filters read %s; token-level evaluation reads %s", filter_labels, eval_labels)
    matched = matched_document_filter(data, blend(size, data), SPLIT, size.seq_length, forget_threshold)
    log.info("matched document filter: the token filters take %.4f of the train split's tokens out of the loss; the "
             "document arm drops that share (threshold %.6g drops %.4f)", matched["token_share"],
             matched["document_threshold"], matched["achieved_fraction"])
    filter_table = format_filter_table(filter_summary(data, document_threshold=matched["document_threshold"],
                                                      forget_threshold=forget_threshold))
    print("\n" + filter_table + "\n", flush=True)
    # 4-5. train and evaluate every arm
    results, curves = {}, {}
    for arm in arms:
        save = train_arm(size, data, arm, out_dir, seed, matched["token_share"], forget_threshold)
        results[arm] = evaluate_arm(save, arm, size_name, size, data, out_dir)
        curves[arm] = _read_metrics(save)
        print(results[arm]["summary"], flush=True)
    # 6. report
    rows = comparison_rows(results)
    comparison = format_comparison(rows, eval_labels)
    privileged = format_privileged(rows, filter_labels)
    os.makedirs(os.path.join(out_dir, "report"), exist_ok=True)
    plots = plot_demo(results, curves, os.path.join(out_dir, "report"))
    setup = [f"Model: {size.num_layers} layers x {size.hidden_size}, seq {size.seq_length}; every arm trained on "
             f"{size.train_tokens:,} learned tokens of the bundled corpus (medical, biology, general; weight 1 each) "
             f"and the knowledge probe (~{PROBE_EPOCHS} epochs of invented medical and biology facts).",
             f"Filter labels: {filter_labels}. Token-level evaluation labels: {eval_labels}.",
             f"Matched baseline: the token filters take {matched['token_share']:.2%} of the train split's tokens out "
             f"of the loss; `document` drops documents until the same share of tokens is gone "
             f"(--document-filter-fraction {matched['token_share']:.4g}: threshold {matched['document_threshold']:.4g}"
             f" on the share of a document's tokens that are forget, {matched['achieved_fraction']:.2%} dropped)."]
    report = write_report(out_dir, f"megatron_tf demo ({size_name})", setup, filter_table, comparison, privileged,
                          rows, results, plots, {"size": size_name, **asdict(size), "matched": matched})
    print("\n" + comparison + "\n", flush=True)
    if privileged:
        print(privileged + "\n", flush=True)
    print(f"report: {report} ({time.time() - t0:.0f} s)", flush=True)
    return {"rows": rows, "report": report, "results": results, "matched": matched}


@dataclass
class DemoConfig:
    """The demo's command line (python tools/demo.py / python -m megatron_tf.demo.run): run_demo's arguments."""

    out: str = field(default="runs/demo", metadata=opt("Output directory."))
    size: str = field(default="tiny", metadata=opt("Model/budget preset (tiny: CPU).", choices=sorted(SIZES)))
    arms: list[str] = field(default_factory=lambda: list(FILTER_MODES), metadata=opt(
        "Arms to train and evaluate.", choices=FILTER_MODES))
    train_tokens: int | None = field(default=None, metadata=opt("Learned tokens per arm (overrides the preset)."))
    forget_threshold: float = field(default=0.5, metadata=opt("Forget threshold of the token filters."))
    eval_limit: int | None = field(default=None, metadata=opt("Documents / questions per eval set (preset)."))
    seed: int = field(default=1234, metadata=opt("Training seed."))
    workers: int = field(default=1, metadata=opt("Preprocessing worker processes."))
    classifier: str | None = field(default=None, metadata=opt(
        "Filter with a biLM classifier artifact (tools/train_classifier.py; e.g. the one `python -m "
        "megatron_tf.demo.classifier_run` trains) instead of the blocklist labels; the token-level evaluation keeps "
        "the blocklist labels as the reference.", metavar="DIR"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_dataclass_args(p, DemoConfig, "demo")
    a = dataclass_from_args(DemoConfig, p.parse_args(argv))
    run_demo(a.out, a.size, tuple(a.arms), a.seed, a.workers, a.train_tokens, a.forget_threshold, a.eval_limit,
             a.classifier)
    return 0
