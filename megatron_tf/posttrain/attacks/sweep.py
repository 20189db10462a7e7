"""The adversarial finetuning sweep: models x {attack, benign} data x methods x LRs x weight decays x seeds.

    python tools/finetune_attack.py --models none=runs/demo/ckpt/none mask=runs/demo/ckpt/mask rmu=runs/rmu/ckpt \\
        --baseline none --attack-text data/demo/train/medical.jsonl.xz --benign-text data/demo/train/general.jsonl.xz \\
        --eval-text data/demo/heldout/medical.jsonl.xz --output-dir runs/attack

Layout of --output-dir:

    runs/<model>/<data>/<method>_lr<lr>_wd<wd>_s<seed>.json   one finished run (curve + settings); present = skipped
    results.json        everything: settings, baseline loss, per model the aggregates and the best setting
    results.csv         one row per model (the comparison table), table.md the same in Markdown
    settings.csv        one row per (model, data, setting): tokens to baseline per seed
    curves_<model>.png  forget loss vs attack tokens, one line per setting (mean over seeds), baseline dashed
    curves_best.png     every model's best setting (attack solid, benign dotted) on one plot

Runs are independent and written atomically, so a killed sweep resumes at the first unfinished run; the summary is
recomputed from the run files each time. Metric: megatron_tf/posttrain/attacks/metric.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from megatron_tf.checkpoint.derived import load_checkpoint
from megatron_tf.checkpoint.load import read_run
from megatron_tf.config.cli import opt
from megatron_tf.posttrain.common import csv_text, job_device, parse_models
from megatron_tf.posttrain.data import PackedBatches, check_disjoint, load_documents
from megatron_tf.utils.io import atomic_write
from megatron_tf.utils.logging import get_logger

from .finetune import FinetuneSettings, finetune_run
from .metric import aggregate_seeds, best_setting, percent_of_pretraining, tokens_to_baseline

log = get_logger(__name__)
FORMAT = "megatron_tf.attack/1"


@dataclass
class AttackConfig:
    """Adversarial finetuning sweep."""

    models: list[str] = field(default_factory=list, metadata=opt(
        "Models to attack as NAME=CHECKPOINT_DIR (e.g. none=runs/demo/ckpt/none rmu=runs/rmu/ckpt)."))
    baseline: str = field(default="none", metadata=opt(
        "Name (in --models) of the unfiltered baseline: its pre-attack forget loss is the target."))
    baseline_loss: float | None = field(default=None, metadata=opt(
        "Target forget loss given directly (instead of the --baseline model's)."))
    attack_text: list[str] = field(default_factory=list, metadata=opt(
        "Forget-domain finetuning text (JSONL / indexed prefixes), disjoint from --eval-text (checked)."))
    benign_text: list[str] | None = field(default=None, metadata=opt(
        "General text for the benign-data control attack (same sweep, --benign-seeds seeds)."))
    eval_text: list[str] = field(default_factory=list, metadata=opt("Held-out forget-domain evaluation text."))
    retain_text: list[str] | None = field(default=None, metadata=opt(
        "Held-out retain text also scored at every evaluation (collateral damage of the attack)."))
    blocklist: str | None = field(default=None, metadata=opt(
        "Blocklist terms file: label forget tokens of --eval-text (as tools/evaluate.py --blocklist) so the curves "
        "also hold the token-level forget loss."))
    forget_threshold: float = field(default=0.5, metadata=opt("Threshold of the blocklist scores."))
    metric: str = field(default="loss", metadata=opt(
        "Curve the metric uses: loss (all tokens of --eval-text) or token_loss (forget-labeled tokens; needs "
        "--blocklist).", choices=("loss", "token_loss")))
    eval_docs: int = field(default=20, metadata=opt("Evaluation documents per text set (the first ones)."))
    attack_docs: int | None = field(default=None, metadata=opt("At most this many finetuning documents per set."))
    methods: list[str] = field(default_factory=lambda: ["full", "lora"], metadata=opt(
        "Attack methods: full (all parameters) and/or lora."))
    lrs: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3], metadata=opt(
        "Constant learning rates to sweep.", flag="--attack-lrs"))
    weight_decays: list[float] = field(default_factory=lambda: [0.0], metadata=opt(
        "AdamW weight decays to sweep.", flag="--attack-weight-decays"))
    seeds: list[int] = field(default_factory=lambda: [1, 2], metadata=opt(
        "Seeds (data order, LoRA init) per setting.", flag="--attack-seeds"))
    benign_seeds: int = field(default=1, metadata=opt("Seeds of the benign control per setting (the first ones)."))
    train_iters: int = field(default=100, metadata=opt("Finetuning steps per run.", flag="--train-iters"))
    eval_interval: int = field(default=10, metadata=opt("Evaluate the forget loss every k steps.",
                                                        flag="--eval-interval"))
    micro_batch_size: int = field(default=8, metadata=opt("Sequences per step.", flag="--micro-batch-size"))
    seq_length: int | None = field(default=None, metadata=opt(
        "Finetuning and evaluation window (default: each checkpoint's --seq-length).", flag="--seq-length"))
    lora_rank: int = field(default=8, metadata=opt("LoRA rank r."))
    lora_alpha: float = field(default=16.0, metadata=opt("LoRA alpha (scale alpha / r)."))
    output_dir: str = field(default="", metadata=opt("Where run files, tables and plots go."))
    device: str = field(default="auto", metadata=opt("Device.", choices=("auto", "cpu", "cuda")))
    bf16: bool = field(default=True, metadata=opt("bf16 autocast on CUDA (CPU: fp32).", flag="--bf16"))
    progress_bar: bool = field(default=True, metadata=opt("Show progress bars."))

    def __post_init__(self):
        bad = [m for m in self.methods if m not in ("full", "lora")]
        if bad:
            raise ValueError(f"--methods: unknown {bad} (full, lora)")
        if self.metric == "token_loss" and not self.blocklist:
            raise ValueError("--metric token_loss needs --blocklist (the forget labels of --eval-text)")
        if self.train_iters < 1 or self.eval_interval < 1 or self.micro_batch_size < 1:
            raise ValueError("--train-iters, --eval-interval and --micro-batch-size must be >= 1")

    def model_map(self) -> dict[str, str]:
        return parse_models(self.models)

    def settings(self, seeds) -> list[FinetuneSettings]:
        return [FinetuneSettings(m, lr, wd, sd, self.train_iters, self.eval_interval, self.lora_rank,
                                 self.lora_alpha, bf16=self.bf16)
                for m in self.methods for lr in self.lrs for wd in self.weight_decays for sd in seeds]


def _eval_documents(cfg: AttackConfig, tok) -> list:
    """The first --eval-docs documents of --eval-text, with forget flags from --blocklist when given."""
    from megatron_tf.evaluation.text_sets import TextSetSpec, iter_set_documents, open_text_set

    labeler = None
    if cfg.blocklist:
        from megatron_tf.labeling.blocklist import BlocklistLabeler

        labeler = BlocklistLabeler.from_file(cfg.blocklist, tok)
    sources = open_text_set(TextSetSpec("eval", "forget", list(cfg.eval_text)), tok, labeler=labeler,
                            threshold=cfg.forget_threshold, use_sidecar=labeler is None)
    return list(iter_set_documents(sources, cfg.eval_docs))


def checkpoint_meta(path: str) -> dict:
    """Arm, pretraining tokens (state.json tokens_seen) and provenance of a checkpoint, without loading weights."""
    run = read_run(path)
    return {"checkpoint": run.path, "arm": run.arm, "pretrain_tokens": run.state.get("tokens_seen"),
            "derived_from": (run.config.get("derived_from") or {}).get("method")}


def run_path(out: str, model: str, data: str, s: FinetuneSettings) -> str:
    return os.path.join(out, "runs", model, data, f"{s.key()}_s{s.seed}.json")


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def run_sweep(cfg: AttackConfig) -> dict:
    """Run every missing run, then summarise (the returned dict is results.json)."""
    if not cfg.output_dir:
        raise ValueError("--output-dir is required")
    models = cfg.model_map()
    if not models:
        raise ValueError("--models: give at least one NAME=CHECKPOINT_DIR")
    if not cfg.attack_text or not cfg.eval_text:
        raise ValueError("--attack-text and --eval-text are required")
    if cfg.baseline_loss is None and cfg.baseline not in models:
        raise ValueError(f"--baseline {cfg.baseline!r} is not one of --models {list(models)} (or give "
                         "--baseline-loss)")
    device = job_device(cfg.device)
    data_sets = {"attack": cfg.attack_text, **({"benign": cfg.benign_text} if cfg.benign_text else {})}
    meta = {}
    for name, path in models.items():
        plan = [("attack", s) for s in cfg.settings(cfg.seeds)]
        if cfg.benign_text:
            plan += [("benign", s) for s in cfg.settings(cfg.seeds[: cfg.benign_seeds])]
        todo = [(d, s) for d, s in plan if not os.path.exists(run_path(cfg.output_dir, name, d, s))]
        meta[name] = checkpoint_meta(path)
        log.info("model %s (%s): %d of %d runs to do", name, meta[name]["checkpoint"], len(todo), len(plan))
        if not todo:
            continue
        src = load_checkpoint(path, device=device)
        tok = src.tokenizer
        seq = cfg.seq_length or src.seq_length
        docs = {d: load_documents(p, tok, limit=cfg.attack_docs) for d, p in data_sets.items()}
        eval_docs = _eval_documents(cfg, tok)
        check_disjoint(docs["attack"], load_documents(cfg.eval_text, tok), "attack text", "evaluation text",
                       eod=tok.eod)
        extra = {"retain": load_documents(cfg.retain_text, tok, limit=cfg.eval_docs)} if cfg.retain_text else None
        base_state = copy.deepcopy(src.model.state_dict())
        for i, (d, s) in enumerate(todo):
            src.model.load_state_dict(base_state)
            batches = PackedBatches(docs[d], seq, cfg.micro_batch_size, seed=s.seed)
            curve = finetune_run(src.model, batches, eval_docs, s, tok, seq, extra_eval=extra,
                                 progress=cfg.progress_bar,
                                 desc=f"{name} {d} {s.key()} s{s.seed} [{i + 1}/{len(todo)}]")
            _write_json(run_path(cfg.output_dir, name, d, s),
                        {"format": FORMAT, "model": name, "data": d, "checkpoint": src.path,
                         "settings": dataclasses.asdict(s), "seq_length": seq,
                         "tokens_per_step": cfg.micro_batch_size * seq, "curve": curve})
            log.info("%s %s %s seed %d: forget loss %.3f -> %.3f (%.0f s)", name, d, s.key(), s.seed,
                     curve["forget_loss"][0], curve["forget_loss"][-1], curve["elapsed_s"])
        del src, base_state
    results = summarize(cfg, meta)
    write_outputs(results, cfg.output_dir)
    return results


def _load_runs(cfg: AttackConfig, model: str, data: str, seeds) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in cfg.settings(seeds):
        p = run_path(cfg.output_dir, model, data, s)
        if os.path.exists(p):
            with open(p) as f:
                out.setdefault(s.key(), []).append(json.load(f))
    return out


def _mean_curve(runs: list[dict], key: str = "forget_loss") -> tuple[list[float], list[float]]:
    t = runs[0]["curve"]["tokens"]
    return t, np.mean([r["curve"][key] for r in runs], axis=0).tolist()


def summarize(cfg: AttackConfig, meta: dict) -> dict:
    models = list(cfg.model_map())
    key = "forget_loss" if cfg.metric == "loss" else "forget_token_loss"
    runs = {m: {"attack": _load_runs(cfg, m, "attack", cfg.seeds),
                "benign": _load_runs(cfg, m, "benign", cfg.seeds[: cfg.benign_seeds]) if cfg.benign_text else {}}
            for m in models}

    def before(m):
        for d in ("attack", "benign"):
            for rs in runs[m][d].values():
                return rs[0]["curve"][key][0]
        return None

    baseline = cfg.baseline_loss if cfg.baseline_loss is not None else before(cfg.baseline)
    if baseline is None:
        raise ValueError(f"no finished run of the baseline model {cfg.baseline!r}: cannot set the target loss")
    out = {"format": FORMAT, "config": dataclasses.asdict(cfg), "baseline": cfg.baseline, "metric": key,
           "baseline_loss": baseline, "models": {}}
    for m in models:
        entry = {**meta.get(m, {}), "forget_loss_before": before(m), "data": {}}
        for d in ("attack", "benign"):
            settings = {}
            for k, rs in runs[m][d].items():
                if any(key not in r["curve"] for r in rs):
                    raise ValueError(f"{m} {d} {k}: a run file has no {key!r} curve (rerun with --blocklist)")
                cross = [tokens_to_baseline(r["curve"]["tokens"], r["curve"][key], baseline) for r in rs]
                agg = aggregate_seeds(cross)
                t, L = _mean_curve(rs, key)
                agg.update({"status": [c.status for c in cross], "mean_curve": {"tokens": t, "forget_loss": L},
                            "final_forget_loss": L[-1], "min_forget_loss": float(np.nanmin(L))})
                if rs[0]["curve"].get("retain_loss"):
                    agg["retain_curve"] = _mean_curve(rs, "retain_loss")[1]
                settings[k] = agg
            bkey, best = best_setting(settings)
            if best is None and settings:  # none reached: report the setting that got closest
                bkey = min(settings, key=lambda k: settings[k]["min_forget_loss"])
            entry["data"][d] = {"settings": settings, "best": bkey, "tokens_to_baseline": best and best["tokens"],
                                "percent_of_pretraining": percent_of_pretraining(best and best["tokens"],
                                                                                 entry.get("pretrain_tokens")),
                                "max_tokens": max((v["max_tokens"] for v in settings.values()), default=None)}
        out["models"][m] = entry
    out["table"] = comparison_rows(out)
    return out


def _fmt_tokens(d: dict) -> str:
    if d.get("best") is None:
        return "n/a"
    if d["tokens_to_baseline"] is None:
        return f"> {d['max_tokens']:,.0f}"
    return f"{d['tokens_to_baseline']:,.0f}"


def comparison_rows(res: dict) -> list[dict]:
    rows = []
    for m, e in res["models"].items():
        a = e["data"]["attack"]
        b = e["data"].get("benign", {})
        best = a["settings"].get(a["best"]) if a.get("best") else None
        rows.append({
            "model": m, "arm": e.get("arm"), "derived_from": e.get("derived_from"),
            "pretrain_tokens": e.get("pretrain_tokens"), "forget_loss_before": e.get("forget_loss_before"),
            "baseline_loss": res["baseline_loss"], "best_setting": a.get("best"),
            "tokens_to_baseline": a.get("tokens_to_baseline"), "tokens_to_baseline_text": _fmt_tokens(a),
            "tokens_std": best and best.get("tokens_std"),
            "seeds_reached": f"{best['n_reached']}/{best['n_seeds']}" if best else None,
            "percent_of_pretraining": a.get("percent_of_pretraining"),
            "final_forget_loss_best": best and best["final_forget_loss"],
            "attack_min_forget_loss": (a["settings"][a["best"]]["min_forget_loss"] if a.get("best") else None),
            "benign_best_setting": b.get("best"), "benign_tokens_to_baseline": b.get("tokens_to_baseline"),
            "benign_tokens_to_baseline_text": _fmt_tokens(b) if b else "n/a",
            "benign_min_forget_loss": (b["settings"][b["best"]]["min_forget_loss"]
                                       if b and b.get("best") else None)})
    return rows


def _f(v, spec=".3f"):
    return "" if v is None else format(v, spec)


def markdown_table(res: dict) -> str:
    what = "token-level forget loss (forget-labeled tokens)" if res.get("metric") == "forget_token_loss" else \
        "forget loss (all tokens)"
    lines = [f"Target: {what} of `{res['baseline']}` before any attack = {res['baseline_loss']:.3f} nats/token.",
             "",
             "| model | arm | pretrain tokens | forget loss before | best setting | tokens to baseline | seeds | "
             "% of pretraining | attack: lowest forget loss | benign control: tokens to baseline | "
             "benign: lowest forget loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["table"]:
        arm = r["arm"] if not r["derived_from"] else f"{r['arm']} + {r['derived_from']}"
        lines.append(f"| {r['model']} | {arm} | {_f(r['pretrain_tokens'], ',.0f')} | {_f(r['forget_loss_before'])} | "
                     f"{r['best_setting'] or ''} | {r['tokens_to_baseline_text']} | {r['seeds_reached'] or ''} | "
                     f"{_f(r['percent_of_pretraining'], '.2f')} | {_f(r['attack_min_forget_loss'])} | "
                     f"{r['benign_tokens_to_baseline_text']} | "
                     f"{_f(r['benign_min_forget_loss'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(res: dict, out_dir: str) -> None:
    from .plots import plot_best_curves, plot_model_curves

    os.makedirs(out_dir, exist_ok=True)
    setting_rows = []
    for m, e in res["models"].items():
        for d, dd in e["data"].items():
            for k, v in dd["settings"].items():
                setting_rows.append({"model": m, "data": d, "setting": k, "tokens_to_baseline": v["tokens"],
                                     "per_seed": json.dumps(v["per_seed"]), "status": json.dumps(v["status"]),
                                     "final_forget_loss": v["final_forget_loss"],
                                     "min_forget_loss": v["min_forget_loss"], "max_tokens": v["max_tokens"]})
        plot_model_curves(res, m, os.path.join(out_dir, f"curves_{m}.png"))
    plot_best_curves(res, os.path.join(out_dir, "curves_best.png"))
    with atomic_write(os.path.join(out_dir, "settings.csv"), "w") as f:
        f.write(csv_text(setting_rows))
    with atomic_write(os.path.join(out_dir, "results.csv"), "w") as f:
        f.write(csv_text(res["table"]))
    with atomic_write(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(markdown_table(res))
    res["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_json(os.path.join(out_dir, "results.json"), res)
