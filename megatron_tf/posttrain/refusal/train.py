"""Refusal training (supervised finetuning in the chat format) and the refusal / false-refusal rates.

    python tools/refusal_train.py --models none=runs/demo/ckpt/none mask=runs/demo/ckpt/mask \\
        --train-set data/demo/refusal/train.jsonl.xz --eval-set data/demo/refusal/eval.jsonl.xz \\
        --output-dir runs/refusal

Per model: rates before and after SFT on the held-out set (refusal rate = share of held-out MEDICAL prompts refused;
false-refusal rate = share of held-out NORMAL prompts refused; chat.refuses: greedy decoding would start with the
refusal template), the same per prompt kind, binomial standard errors sqrt(p (1 - p) / n), the SFT loss curve and a
few greedy responses. Files: <output-dir>/<model>.json (present = skipped on rerun), results.json, results.csv,
table.md; with --save-root, the SFT checkpoint under <save-root>/<model> (derived TP = 1 checkpoint).

SFT: full finetuning, AdamW (betas 0.9 / 0.95, --weight-decay on matrices), constant LR, gradient clipping 1.0, loss =
mean cross-entropy over the response tokens (and the closing <|endoftext|>) of the batch; the training prompts are
checked against the evaluation prompts (exact and near duplicates) before training.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from megatron_tf.checkpoint.derived import load_checkpoint, save_checkpoint
from megatron_tf.config.cli import opt
from megatron_tf.posttrain.common import csv_text, job_device, lm_step, make_optimizer, parse_models
from megatron_tf.posttrain.data import RowBatches, lm_batch
from megatron_tf.utils.io import atomic_write
from megatron_tf.utils.logging import get_logger

from .build_sets import check_no_leakage, load_set
from .chat import REFUSAL, greedy_response, refuses, sft_row

log = get_logger(__name__)
FORMAT = "megatron_tf.refusal/1"


@dataclass
class RefusalConfig:
    """Refusal SFT and evaluation."""

    models: list[str] = field(default_factory=list, metadata=opt("Models as NAME=CHECKPOINT_DIR."))
    train_set: str = field(default="data/demo/refusal/train.jsonl.xz", metadata=opt("Refusal training set."))
    eval_set: str = field(default="data/demo/refusal/eval.jsonl.xz", metadata=opt("Held-out evaluation set."))
    output_dir: str = field(default="", metadata=opt("Where results go."))
    save_root: str | None = field(default=None, metadata=opt("Save each SFT model under SAVE_ROOT/NAME."))
    lr: float = field(default=1e-4, metadata=opt("Constant learning rate.", flag="--lr"))
    weight_decay: float = field(default=0.0, metadata=opt("AdamW weight decay.", flag="--weight-decay"))
    train_iters: int = field(default=200, metadata=opt("SFT steps.", flag="--train-iters"))
    micro_batch_size: int = field(default=16, metadata=opt("Conversations per step.", flag="--micro-batch-size"))
    max_length: int = field(default=128, metadata=opt("Tokens per conversation at most (prompt cut at the left)."))
    eval_limit: int | None = field(default=None, metadata=opt(
        "At most this many evaluation prompts per domain (a stable sha256-ordered sample across kinds)."))
    samples: int = field(default=3, metadata=opt("Greedy responses shown per domain (before and after)."))
    seed: int = field(default=1, metadata=opt("Seed.", flag="--seed"))
    device: str = field(default="auto", metadata=opt("Device.", choices=("auto", "cpu", "cuda")))
    bf16: bool = field(default=True, metadata=opt("bf16 autocast on CUDA.", flag="--bf16"))
    progress_bar: bool = field(default=True, metadata=opt("Show progress bars."))
    overwrite: bool = field(default=False, metadata=opt("Redo finished models."))


def _rate(x: np.ndarray) -> dict:
    n = len(x)
    p = float(x.mean()) if n else None
    return {"rate": p, "stderr": math.sqrt(p * (1 - p) / n) if n else None, "n": n}


def refusal_rates(model, tokenizer, records: list[dict], max_length: int, bf16: bool = True) -> dict:
    """{refusal: rate on medical, false_refusal: rate on normal, per_kind: {...}}."""
    flags = refuses(model, tokenizer, [r["prompt"] for r in records], max_length=max_length, bf16=bf16)
    med = np.array([r["refuse"] for r in records], dtype=bool)
    out = {"refusal": _rate(flags[med]), "false_refusal": _rate(flags[~med]), "per_kind": {}}
    for k in sorted({(r["domain"], r["kind"]) for r in records}):
        sel = np.array([(r["domain"], r["kind"]) == k for r in records])
        out["per_kind"][f"{k[0]}/{k[1]}"] = _rate(flags[sel])
    return out


def _limit(records: list[dict], n: int | None) -> list[dict]:
    """At most n prompts per domain, a stable sample mixing the kinds (sha256 of the prompt order)."""
    if n is None:
        return records
    order = sorted(records, key=lambda r: hashlib.sha256(r["prompt"].encode()).hexdigest())
    return [r for r in order if r["refuse"]][:n] + [r for r in order if not r["refuse"]][:n]


def _samples(model, tok, records, k, bf16) -> list[dict]:
    out = []
    for refuse in (True, False):
        for r in [r for r in records if r["refuse"] == refuse][:k]:
            out.append({"prompt": r["prompt"][:200], "refuse": refuse,
                        "response": greedy_response(model, tok, r["prompt"], 24, bf16)})
    return out


def sft(model, tok, train: list[dict], cfg: RefusalConfig) -> list[float]:
    device = next(model.parameters()).device
    rows = [sft_row(tok, r["prompt"], r["response"], cfg.max_length) for r in train]
    batches = RowBatches(rows, cfg.micro_batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    named = list(model.named_parameters())
    opt = make_optimizer(named, cfg.lr, cfg.weight_decay)
    params = [p for _, p in named]
    losses = []
    model.train()
    bar = tqdm(range(cfg.train_iters), desc="sft", disable=not cfg.progress_bar, dynamic_ncols=True, leave=False)
    for _ in bar:
        losses.append(lm_step(model, opt, params, lm_batch(next(batches), tok.pad), device, cfg.bf16, 1.0))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def run_refusal(cfg: RefusalConfig) -> dict:
    if not cfg.output_dir or not cfg.models:
        raise ValueError("--models and --output-dir are required")
    models = parse_models(cfg.models)
    train, ev = load_set(cfg.train_set), _limit(load_set(cfg.eval_set), cfg.eval_limit)
    check_no_leakage(train, [r["prompt"] for r in ev])
    device = job_device(cfg.device)
    os.makedirs(cfg.output_dir, exist_ok=True)
    per_model = {}
    for name, path in models.items():
        out = os.path.join(cfg.output_dir, f"{name}.json")
        if os.path.exists(out) and not cfg.overwrite:
            with open(out) as f:
                per_model[name] = json.load(f)
            log.info("%s: done already (%s)", name, out)
            continue
        t0 = time.time()
        src = load_checkpoint(path, device=device)
        tok = src.tokenizer
        before = refusal_rates(src.model, tok, ev, cfg.max_length, cfg.bf16)
        samples_before = _samples(src.model, tok, ev, cfg.samples, cfg.bf16)
        losses = sft(src.model, tok, train, cfg)
        after = refusal_rates(src.model, tok, ev, cfg.max_length, cfg.bf16)
        samples_after = _samples(src.model, tok, ev, cfg.samples, cfg.bf16)
        saved = None
        if cfg.save_root:
            saved = save_checkpoint(src.model, src, os.path.join(cfg.save_root, name),
                                    {"method": "refusal_sft", "train_set": cfg.train_set, "lr": cfg.lr,
                                     "train_iters": cfg.train_iters})
        res = {"format": FORMAT, "model": name, "checkpoint": src.path, "arm": src.arm,
               "derived_from": (src.config.get("derived_from") or {}).get("method"),
               "config": dataclasses.asdict(cfg), "refusal_template": REFUSAL, "train_records": len(train),
               "eval_records": len(ev), "before": before, "after": after, "sft_loss": losses,
               "samples_before": samples_before, "samples_after": samples_after, "saved": saved,
               "elapsed_s": round(time.time() - t0, 2)}
        with atomic_write(out, "w") as f:
            json.dump(res, f, indent=1)
        per_model[name] = res
        log.info("%s: refusal %.3f -> %.3f, false refusal %.3f -> %.3f", name, before["refusal"]["rate"],
                 after["refusal"]["rate"], before["false_refusal"]["rate"], after["false_refusal"]["rate"])
        del src
    results = {"format": FORMAT, "models": per_model, "table": table_rows(per_model)}
    _write(results, cfg.output_dir)
    return results


def table_rows(per_model: dict) -> list[dict]:
    rows = []
    for name, r in per_model.items():
        rows.append({"model": name, "arm": r.get("arm"), "derived_from": r.get("derived_from"),
                     "refusal_before": r["before"]["refusal"]["rate"], "refusal_after": r["after"]["refusal"]["rate"],
                     "refusal_after_stderr": r["after"]["refusal"]["stderr"], "n_medical": r["after"]["refusal"]["n"],
                     "false_refusal_before": r["before"]["false_refusal"]["rate"],
                     "false_refusal_after": r["after"]["false_refusal"]["rate"],
                     "false_refusal_after_stderr": r["after"]["false_refusal"]["stderr"],
                     "n_normal": r["after"]["false_refusal"]["n"], "final_sft_loss": r["sft_loss"][-1]
                     if r["sft_loss"] else None})
    return rows


def markdown_table(results: dict) -> str:
    lines = ["| model | arm | refusal rate (medical) before -> after | false refusal (normal) before -> after | "
             "final SFT loss |", "|---|---|---|---|---|"]
    for r in results["table"]:
        lines.append(f"| {r['model']} | {r['arm']} | {r['refusal_before']:.3f} -> {r['refusal_after']:.3f} "
                     f"(± {r['refusal_after_stderr']:.3f}, n {r['n_medical']}) | {r['false_refusal_before']:.3f} -> "
                     f"{r['false_refusal_after']:.3f} (± {r['false_refusal_after_stderr']:.3f}, n {r['n_normal']}) "
                     f"| {r['final_sft_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def _write(results: dict, out_dir: str) -> None:
    with atomic_write(os.path.join(out_dir, "results.csv"), "w") as f:
        f.write(csv_text(results["table"]))
    with atomic_write(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(markdown_table(results))
    _plot(results, os.path.join(out_dir, "refusal_rates.png"))
    with atomic_write(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(copy.deepcopy(results), f, indent=1)


def _plot(results: dict, path: str) -> None:
    from megatron_tf.evaluation.plots import pyplot, save_figure

    rows = results["table"]
    if not rows:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["refusal_after"] for r in rows], 0.4, yerr=[r["refusal_after_stderr"] for r in rows],
           label="refusal rate (held-out medical)", color="tab:red")
    ax.bar(x + 0.2, [r["false_refusal_after"] for r in rows], 0.4,
           yerr=[r["false_refusal_after_stderr"] for r in rows], label="false refusal (held-out normal)",
           color="tab:blue")
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set(ylim=(0, 1.05), ylabel="rate after refusal SFT")
    ax.legend(fontsize=7)
    save_figure(fig, path)
