"""The end-to-end demo (README main job): tokenizer -> preprocess -> annotate -> train 4 arms -> evaluate -> report.

    python tools/demo.py                      # CPU preset "tiny": about 5-8 minutes on 2 cores
    python tools/demo.py --size small         # a GPU-sized preset (same pipeline, bigger model and budget)

Every arm trains on the same number of LEARNED tokens (unmasked targets, --train-tokens), as in the paper, so a
filtered arm sees more raw tokens than the baseline. Rerunning resumes: finished steps are skipped, an interrupted
training run continues from its last checkpoint.

What it shows: per-domain held-out losses of the `none`, `mask`, `remove` and `document` arms side by side (forget =
medical, retain = biology, general = WikiText), the token-level variant (loss on blocklist-labeled tokens of the
forget set; on unlabeled tokens elsewhere), and cloze multiple-choice accuracy on small MCQ slices (tiny CPU models
score at chance there: the column is reported so a GPU-sized run shows it moving).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

from ..evaluation import EvaluationConfig, evaluate_model, write_results
from ..tokenizer.train import TrainTokenizerConfig, train_tokenizer
from ..utils.io import atomic_write, sha256_file
from ..utils.logging import get_logger
from .data_stage import (
    DEMO_DIR,
    DOMAINS,
    FILTER_MODES,
    DemoData,
    doc_score_column,
    filter_summary,
    format_filter_table,
    prepare_demo_data,
)

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


def _train_args(size: DemoSize, data: DemoData, arm: str, save: str, seed: int, document_threshold: float,
                forget_threshold: float) -> list[str]:
    train = [x for dom in DOMAINS for x in ("1", data.train[dom])]  # balanced domains (data/demo/README.md)
    args = [
        "--num-layers", str(size.num_layers), "--hidden-size", str(size.hidden_size),
        "--num-attention-heads", str(size.num_attention_heads), "--seq-length", str(size.seq_length),
        "--micro-batch-size", str(size.micro_batch_size), "--global-batch-size", str(size.global_batch_size),
        "--train-tokens", str(size.train_tokens), "--lr", str(size.lr), "--min-lr", str(size.lr / 10),
        "--lr-warmup-fraction", "0.05", "--lr-decay-style", "cosine", "--weight-decay", "0.1", "--clip-grad", "1.0",
        "--adam-beta2", "0.95", "--bf16",
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data.tokenizer_model,
        "--data-path", *train, "--split", "98,2,0", "--num-workers", "1",
        "--token-filter", arm, "--forget-threshold", str(forget_threshold), "--forget-sidecar-name", data.filter_name,
        "--eval-data-path", *(f"{role}={data.heldout[dom]}" for role, dom in
                              (("forget", "medical"), ("retain", "biology"), ("general", "general"))),
        "--save", save, "--load", save, "--save-interval", "100", "--eval-interval", "100", "--eval-iters", "4",
        "--log-interval", "20", "--seed", str(seed),
    ]
    if arm == "document":
        args += ["--document-threshold", str(document_threshold),
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


def train_arm(size: DemoSize, data: DemoData, arm: str, out_dir: str, seed: int, document_threshold: float,
              forget_threshold: float) -> str:
    from ..training import pretrain

    save = os.path.join(out_dir, "ckpt", arm)
    done = os.path.join(save, "DONE")
    if os.path.exists(done):
        log.info("arm %s: already trained (%s)", arm, save)
        return save
    t0 = time.time()
    result = pretrain(_train_args(size, data, arm, save, seed, document_threshold, forget_threshold))
    log.info("arm %s: %d iterations, %s tokens seen, %s learned, %.0f s", arm, result.iteration,
             f"{result.tokens_seen:,}", f"{result.tokens_learned:,}", time.time() - t0)
    with atomic_write(done, "w") as f:
        json.dump({"iteration": result.iteration, "tokens_seen": result.tokens_seen,
                   "tokens_learned": result.tokens_learned, "stopped_by": result.stopped_by}, f)
    return save


def evaluate_arm(save: str, arm: str, size_name: str, size: DemoSize, data: DemoData, out_dir: str) -> dict:
    from ..training import load_model_from_checkpoint

    evals = os.path.join(out_dir, "evals")
    path = os.path.join(evals, f"{size_name}-{arm}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    model, _cfgs, tok = load_model_from_checkpoint(save)
    with open(os.path.join(save, "DONE")) as f:
        trained = json.load(f)
    cfg = EvaluationConfig(
        forget_text=[data.heldout["medical"]], retain_text=[data.heldout["biology"]],
        general_text=[data.heldout["general"]],
        mmlu=os.path.join(DEMO_DIR, "eval", "mmlu.jsonl.xz"), medqa=os.path.join(DEMO_DIR, "eval", "medqa.jsonl.xz"),
        medmcqa=os.path.join(DEMO_DIR, "eval", "medmcqa.jsonl.xz"), limit=size.eval_limit)
    result = evaluate_model(model, tok, cfg, seq_length=size.seq_length,
                            run={"name": f"{size_name}-{arm}", "arm": arm, "size": size_name, **trained})
    write_results(result, evals)
    return result


ROLES = ("forget", "retain", "general")


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One row per arm: per-domain loss, token-level loss and their change vs `none`, MCQ acc_norm."""
    rows = []
    base = results.get("none")
    for arm, r in results.items():
        row = {"arm": arm, "tokens_seen": r["run"].get("tokens_seen"), "tokens_learned": r["run"].get("tokens_learned")}
        for role in ROLES:
            v = r["loss"][role]
            row[f"{role}_loss"] = v["nats_per_token"]
            row[f"{role}_token_level_loss"] = v.get("token_level", {}).get("nats_per_token")
            if base is not None:
                row[f"{role}_loss_delta"] = v["nats_per_token"] - base["loss"][role]["nats_per_token"]
                tl, btl = row[f"{role}_token_level_loss"], base["loss"][role].get("token_level", {})
                row[f"{role}_token_level_delta"] = None if tl is None or not btl else tl - btl["nats_per_token"]
        for name, m in r.get("mcq", {}).items():
            row[f"mcq_{name}_acc_norm"] = m["acc_norm"]
        rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    cols = [("forget_loss", "forget"), ("retain_loss", "retain"), ("general_loss", "general"),
            ("forget_token_level_loss", "forget tok"), ("retain_token_level_loss", "retain tok"),
            ("general_token_level_loss", "general tok")]
    w = 13
    head = f"{'arm':<9} {'seen':>9} {'learned':>9} | " + " ".join(f"{name:>{w}}" for _, name in cols)
    lines = ["held-out loss, nats/token (change vs none); 'tok' = token-level: forget-labeled tokens of the forget "
             "set, unlabeled tokens elsewhere", head, "-" * len(head)]

    def cell(row, key):
        v = row.get(key)
        d = row.get(key[: -len("_loss")] + ("_delta" if "token_level" in key else "_loss_delta"))
        if v is None:
            return f"{'n/a':>{w}}"
        s = f"{v:.3f}" if row["arm"] == "none" or d is None else f"{v:.3f} ({d:+.2f})"
        return f"{s:>{w}}"

    for r in rows:
        lines.append(f"{r['arm']:<9} {r['tokens_seen']:>9,} {r['tokens_learned']:>9,} | "
                     + " ".join(cell(r, k) for k, _ in cols))
    return "\n".join(lines)


def plot_demo(results: dict[str, dict], curves: dict[str, list[dict]], out_dir: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(results)
    paths = {}
    for key, title in (("all", "held-out loss (all tokens)"), ("token_level", "token-level loss")):
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            vals = []
            for role in ROLES:
                v = results[arm]["loss"][role]
                vals.append(v["nats_per_token"] if key == "all" else v.get("token_level", {}).get("nats_per_token",
                                                                                                 np.nan))
            ax.bar(np.arange(len(ROLES)) + i * width, vals, width, label=arm)
        ax.set_xticks(np.arange(len(ROLES)) + width * (len(arms) - 1) / 2)
        ax.set_xticklabels(["forget (medical)", "retain (biology)", "general"])
        ax.set_ylabel("nats / token")
        ax.set_title(title)
        lo = min(p.get_height() for p in ax.patches if np.isfinite(p.get_height()))
        ax.set_ylim(bottom=max(0.0, lo - 0.5))
        ax.legend()
        fig.tight_layout()
        paths[key] = os.path.join(out_dir, f"losses_{key}.png")
        fig.savefig(paths[key], dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rows in curves.items():
        if rows:
            ax.plot([r["tokens_learned"] for r in rows], [r["loss"] for r in rows], label=arm)
    ax.set_xlabel("learned tokens")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("training curves")
    ax.legend()
    fig.tight_layout()
    paths["curves"] = os.path.join(out_dir, "training_curves.png")
    fig.savefig(paths["curves"], dpi=120)
    plt.close(fig)
    return paths


def write_report(out_dir: str, size_name: str, size: DemoSize, filter_table: str, comparison: str,
                 rows: list[dict], results: dict[str, dict], plots: dict[str, str]) -> str:
    report_dir = os.path.join(out_dir, "report")
    mcq = []
    for arm, r in results.items():
        for name, m in r.get("mcq", {}).items():
            mcq.append(f"| {arm} | {name} | {m['acc']:.3f} ± {m['acc_stderr']:.3f} | {m['acc_norm']:.3f} | "
                       f"{m['chance']:.3f} | {m['n']} |")
    md = [f"# megatron_tf demo ({size_name})", "",
          f"Model: {size.num_layers} layers x {size.hidden_size}, seq {size.seq_length}; every arm trained on "
          f"{size.train_tokens:,} learned tokens of the bundled corpus (medical + biology + general, balanced).", "",
          "## What the filters did to the training data", "", "```", filter_table, "```", "",
          "## Held-out losses", "", "```", comparison, "```", "",
          f"![losses]({os.path.relpath(plots['all'], report_dir)})",
          f"![token-level]({os.path.relpath(plots['token_level'], report_dir)})",
          f"![curves]({os.path.relpath(plots['curves'], report_dir)})", "",
          "## Multiple choice (cloze, acc ± stderr, acc_norm, chance)", "",
          "| arm | set | acc | acc_norm | chance | n |", "|---|---|---|---|---|---|", *mcq, ""]
    path = os.path.join(report_dir, "report.md")
    with atomic_write(path, "w") as f:
        f.write("\n".join(md))
    with atomic_write(os.path.join(report_dir, "comparison.json"), "w") as f:
        json.dump({"size": size_name, "config": asdict(size), "rows": rows}, f, indent=1)
    return path


def run_demo(out_dir: str, size_name: str = "tiny", arms: tuple[str, ...] = FILTER_MODES, seed: int = 1234,
             workers: int = 1, train_tokens: int | None = None, document_threshold: float = 0.05,
             forget_threshold: float = 0.5, eval_limit: int | None = None, classifier: str | None = None) -> dict:
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
    # 2-3. preprocess + annotate: blocklist labels, and the biLM classifier's when one is given (--classifier)
    data = prepare_demo_data(out_dir, workers=workers, tokenizer_model=tok_path, classifier=classifier)
    log.info("training filters read annotation %r (%s)", data.filter_name,
             "biLM classifier " + classifier if classifier else "medical blocklist")
    filter_table = format_filter_table(filter_summary(data, document_threshold=document_threshold,
                                                      forget_threshold=forget_threshold))
    print("\n" + filter_table + "\n", flush=True)
    # 4-5. train and evaluate every arm
    results, curves = {}, {}
    for arm in arms:
        save = train_arm(size, data, arm, out_dir, seed, document_threshold, forget_threshold)
        results[arm] = evaluate_arm(save, arm, size_name, size, data, out_dir)
        curves[arm] = _read_metrics(save)
        print(results[arm]["summary"], flush=True)
    # 6. report
    rows = comparison_rows(results)
    comparison = format_comparison(rows)
    os.makedirs(os.path.join(out_dir, "report"), exist_ok=True)
    plots = plot_demo(results, curves, os.path.join(out_dir, "report"))
    report = write_report(out_dir, size_name, size, filter_table, comparison, rows, results, plots)
    print("\n" + comparison + "\n", flush=True)
    print(f"report: {report} ({time.time() - t0:.0f} s)", flush=True)
    return {"rows": rows, "report": report, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="model/budget preset (default: tiny, CPU)")
    p.add_argument("--arms", nargs="+", default=list(FILTER_MODES), choices=FILTER_MODES)
    p.add_argument("--train-tokens", type=int, default=None, help="learned tokens per arm (overrides the preset)")
    p.add_argument("--forget-threshold", type=float, default=0.5)
    p.add_argument("--document-threshold", type=float, default=0.05,
                   help="--token-filter document drops documents whose fraction of forget tokens (score >= "
                        "--forget-threshold) is >= this (default 0.05)")
    p.add_argument("--eval-limit", type=int, default=None, help="documents / questions per eval set (preset)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--workers", type=int, default=1, help="preprocessing worker processes")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="filter with a biLM classifier artifact (tools/train_classifier.py; e.g. the one "
                        "`python -m megatron_tf.demo.classifier_run` trains) instead of the blocklist labels; the "
                        "token-level evaluation keeps the blocklist labels as the reference")
    a = p.parse_args(argv)
    run_demo(a.out, a.size, tuple(a.arms), a.seed, a.workers, a.train_tokens, a.document_threshold,
             a.forget_threshold, a.eval_limit, a.classifier)
    return 0
