"""RMU job: load a checkpoint (TP/PP merged), evaluate, unlearn, evaluate again, save a derived checkpoint.

    python tools/rmu.py --load runs/demo/ckpt/none --save runs/rmu/ckpt --output-dir runs/rmu \\
        --forget-corpus data/demo/train/medical.jsonl.xz --retain-corpus data/demo/train/general.jsonl.xz \\
        --forget-text data/demo/heldout/medical.jsonl.xz --retain-text data/demo/heldout/biology.jsonl.xz \\
        --mmlu data/demo/eval/mmlu.jsonl.xz --medqa data/demo/eval/medqa.jsonl.xz --limit 40

Writes <output-dir>/rmu.json (config, c, measured activation norm, updated tensors, per-step losses, the evaluation
before and after), rmu_steps.csv, rmu_summary.csv (metric, before, after, change), rmu_losses.png, and the
checkpoint under --save (TP = 1; config.json records `derived_from` with the RMU settings; state.json keeps the
source's pretraining token counts). A finished job (rmu.json present) is skipped unless --overwrite: RMU takes
minutes, so it restarts from the beginning after a kill rather than resuming mid-way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from megatron_tf.checkpoint.derived import load_checkpoint, save_checkpoint
from megatron_tf.config.cli import opt
from megatron_tf.evaluation.runner import EvaluationConfig, evaluate_model
from megatron_tf.posttrain.common import csv_text, job_device
from megatron_tf.posttrain.data import check_disjoint, document_rows, load_documents
from megatron_tf.utils.io import atomic_write
from megatron_tf.utils.logging import get_logger

from .rmu import RMUConfig, run_rmu

log = get_logger(__name__)


@dataclass
class RMUJobConfig:
    """Inputs and outputs of an RMU run."""

    load: str = field(default="", metadata=opt("Checkpoint to unlearn (a --save directory or an iter_* directory)."))
    save: str = field(default="", metadata=opt("Where the unlearned checkpoint is written."))
    output_dir: str = field(default="", metadata=opt("Where rmu.json, CSVs and the plot go."))
    forget_corpus: list[str] = field(default_factory=list, metadata=opt(
        "Forget-domain texts RMU trains on (JSONL or indexed prefixes), kept apart from --forget-text."))
    retain_corpus: list[str] = field(default_factory=list, metadata=opt(
        "Retain texts (the reference uses general text, WikiText)."))
    corpus_limit: int | None = field(default=None, metadata=opt("At most this many documents per corpus."))
    device: str = field(default="auto", metadata=opt("Device.", choices=("auto", "cpu", "cuda")))
    overwrite: bool = field(default=False, metadata=opt("Redo a finished job."))
    progress_bar: bool = field(default=True, metadata=opt("Show progress bars."))


def _flat_metrics(ev: dict) -> dict[str, float]:
    out = {}
    for name, v in ev.get("loss", {}).items():
        out[f"loss/{name}"] = v["nats_per_token"]
        if "token_level" in v:
            out[f"token_loss/{name}"] = v["token_level"]["nats_per_token"]
    for name, v in ev.get("mcq", {}).items():
        out[f"acc/{name}"] = v["acc"]
        out[f"acc_norm/{name}"] = v["acc_norm"]
    return out


def summary_rows(before: dict, after: dict) -> list[dict]:
    a, b = _flat_metrics(before), _flat_metrics(after)
    return [{"metric": k, "before": a[k], "after": b.get(k), "change": None if b.get(k) is None else b[k] - a[k]}
            for k in a]


def plot_history(history: list[dict], path: str) -> str:
    from megatron_tf.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h["forget_loss"] for h in history], color="tab:red")
    ax[0].set(title="forget: MSE(h_l, c u)", xlabel="step", yscale="log")
    ax[1].plot(steps, [h["retain_loss"] for h in history], color="tab:blue")
    ax[1].set(title="retain: MSE(h_l, frozen h_l)", xlabel="step")
    return save_figure(fig, path)


def run_job(job: RMUJobConfig, rmu: RMUConfig, ev: EvaluationConfig) -> dict:
    if not (job.load and job.save and job.output_dir):
        raise ValueError("--load, --save and --output-dir are required")
    if not job.forget_corpus or not job.retain_corpus:
        raise ValueError("--forget-corpus and --retain-corpus are required")
    out_json = os.path.join(job.output_dir, "rmu.json")
    if os.path.exists(out_json) and not job.overwrite:
        log.info("%s exists: RMU already done (use --overwrite to redo)", out_json)
        with open(out_json) as f:
            return json.load(f)
    os.makedirs(job.output_dir, exist_ok=True)
    t0 = time.time()
    device = job_device(job.device)
    src = load_checkpoint(job.load, device=device)
    tok, seq = src.tokenizer, src.seq_length
    forget_docs = load_documents(job.forget_corpus, tok, limit=job.corpus_limit)
    retain_docs = load_documents(job.retain_corpus, tok, limit=job.corpus_limit)
    if ev.forget_text:
        check_disjoint(forget_docs, load_documents(ev.forget_text, tok), "RMU forget corpus", "forget evaluation "
                       "text", eod=tok.eod)
    max_len = min(rmu.max_length, seq)
    forget_rows = document_rows(forget_docs, max_len, tok.eod, min_tokens=8)
    retain_rows = document_rows(retain_docs, max_len, tok.eod, min_tokens=8)
    log.info("RMU: %d forget rows, %d retain rows of <= %d tokens", len(forget_rows), len(retain_rows), max_len)
    run_meta = {"arm": src.arm, "checkpoint": src.path, "tokens_seen": src.state.get("tokens_seen"),
                "tokens_learned": src.state.get("tokens_learned"), "iteration": src.state.get("iteration")}
    before = evaluate_model(src.model, tok, ev, seq_length=seq, run={"name": "before", **run_meta},
                            progress=job.progress_bar)
    res = run_rmu(src.model, forget_rows, retain_rows, rmu, tok.pad, progress=job.progress_bar)
    after = evaluate_model(src.model, tok, ev, seq_length=seq, run={"name": "after", **run_meta},
                           progress=job.progress_bar)
    provenance = {"method": "rmu", "rmu": dataclasses.asdict(rmu), "steering_coeff": res.steering_coeff,
                  "activation_norm": res.activation_norm, "updated": res.updated,
                  "forget_corpus": job.forget_corpus, "retain_corpus": job.retain_corpus}
    ckpt_dir = save_checkpoint(src.model, src, job.save, provenance)
    result = {"format": "megatron_tf.rmu/1", "source": src.path, "checkpoint": ckpt_dir, "arm": src.arm,
              "config": dataclasses.asdict(rmu), "job": dataclasses.asdict(job), "layer_id": res.layer_id,
              "layer_ids": res.layer_ids, "updated": res.updated, "steering_coeff": res.steering_coeff,
              "activation_norm": res.activation_norm, "history": res.history, "before": before, "after": after,
              "summary": summary_rows(before, after), "elapsed_s": round(time.time() - t0, 2)}
    _write_outputs(result, job.output_dir)
    return result


def _write_outputs(result: dict, out_dir: str) -> None:
    with atomic_write(os.path.join(out_dir, "rmu_steps.csv"), "w") as f:
        f.write(csv_text(result["history"], empty_header=["empty"]))
    with atomic_write(os.path.join(out_dir, "rmu_summary.csv"), "w") as f:
        f.write(csv_text(result["summary"], empty_header=["empty"]))
    if result["history"]:
        plot_history(result["history"], os.path.join(out_dir, "rmu_losses.png"))
    with atomic_write(os.path.join(out_dir, "rmu.json"), "w") as f:  # last: marks the job finished
        json.dump(result, f, indent=1)
        f.write("\n")


def format_summary(result: dict) -> str:
    lines = [f"RMU on {result['source']} (layer {result['layer_id']}, c = {result['steering_coeff']:.4g}, "
             f"updated {len(result['updated'])} tensors) -> {result['checkpoint']}",
             f"{'metric':28s} {'before':>9s} {'after':>9s} {'change':>9s}"]
    for r in result["summary"]:
        ch = "" if r["change"] is None else f"{r['change']:+9.3f}"
        lines.append(f"{r['metric']:28s} {r['before']:9.3f} {r['after']:9.3f} {ch}")
    return "\n".join(lines)
