"""Evaluate token classifiers against sidecar labels (tools/eval_classifier.py).

Scorers, on the same documents and labels:
- classifier artifacts (--classifier DIR [DIR ...]; the first is the main one, e.g. the biLM, then baselines such as
  the forward-only artifact): every token of the documents is scored by `ClassifierLabeler.score_documents`, the
  exact code path of corpus annotation (float scores, before the sidecars' uint8 quantization);
- lexical baselines (--sidecar-baseline NAME [NAME ...]): the stored scores q / 255 of another annotation of the
  same prefixes, e.g. the blocklist's.

Reported per scorer (metrics.py), pooled over the --data prefixes: AUROC, F1-optimal precision/recall/F1 on
class-balanced weights (as the paper) and at the natural base rate, natural-rate metrics at the balanced threshold,
calibration tables; per prefix, the fraction of tokens flagged at the balanced threshold (e.g. how much of a
retain domain would be filtered). With --novel-from NAME, also the recall (at both thresholds) and the AUROC of
tokens that are forget under the evaluation labels but not under annotation NAME (e.g. the classifier's training
teacher) against all non-forget tokens: what the scorer finds beyond its teacher.
Outputs: report.json, pr_balanced.png, pr_natural.png in --output.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ...config.cli import opt
from ...utils.io import atomic_write


@dataclass
class EvalClassifierConfig:
    """Evaluate token classifiers and baselines against sidecar labels."""

    classifier: list[str] = field(default_factory=list, metadata=opt(
        "Classifier artifact directories (the first is the main one; the others are baselines).", metavar="DIR"))
    data: list[str] = field(default_factory=list, metadata=opt("Held-out dataset prefixes.", metavar="PREFIX"))
    label_name: str = field(default="forget", metadata=opt("Annotation name of the label sidecars."))
    label_threshold: float = field(default=0.5, metadata=opt("A token is forget iff q >= ceil(255 T).",
                                                             metavar="T"))
    sidecar_baseline: list[str] | None = field(default=None, metadata=opt(
        "Annotation names whose stored scores are evaluated as lexical baselines (e.g. the blocklist's).",
        metavar="NAME"))
    novel_from: str | None = field(default=None, metadata=opt(
        "Also report recall on forget tokens that annotation NAME (e.g. the training teacher) does not flag.",
        metavar="NAME"))
    max_documents: int | None = field(default=None, metadata=opt(
        "Evaluate at most this many documents per prefix (a seeded sample)."))
    device: str = field(default="auto", metadata=opt("cpu, cuda, cuda:N or auto."))
    batch_tokens: int = field(default=16384, metadata=opt("Padded positions per LM forward batch."))
    seed: int = field(default=1234, metadata=opt("Seed of the document sample."))
    output: str = field(default="", metadata=opt("Report directory.", metavar="DIR"))


def _select(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def evaluate_classifiers(cfg: EvalClassifierConfig) -> dict:
    from ...data.indexed_dataset import IndexedDataset
    from ...data.sidecar import quantize_threshold
    from .corpus import load_docset, sidecar_scores
    from .labeler import ClassifierLabeler
    from .metrics import balanced_weights, evaluate_scores, plot_pr_curves, pr_curve, roc_auc

    if not cfg.data:
        raise ValueError("--data PREFIX [PREFIX ...] is required")
    if not cfg.classifier and not cfg.sidecar_baseline:
        raise ValueError("nothing to evaluate: give --classifier DIR and/or --sidecar-baseline NAME")
    sets = [load_docset(p, _select(IndexedDataset(p).num_documents, cfg.max_documents, cfg.seed + k),
                        cfg.label_name, cfg.label_threshold) for k, p in enumerate(cfg.data)]
    labels = np.concatenate([lab for s in sets for lab in s.labels])
    prefix_of = np.concatenate([np.full(s.num_tokens, k) for k, s in enumerate(sets)])
    novel = None
    if cfg.novel_from:
        qt = quantize_threshold(cfg.label_threshold)
        teacher = np.concatenate([np.concatenate(sidecar_scores(s, cfg.novel_from)) for s in sets])
        novel = labels & (np.rint(teacher * 255) < qt)

    scorers: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for path in cfg.classifier:
        lab = ClassifierLabeler(path, device=cfg.device, batch_tokens=cfg.batch_tokens)
        name = os.path.basename(os.path.normpath(path))
        names[name] = f"{lab.config['features']} layer {lab.config['layer']} ({lab.config['probe']['kind']})"
        scorers[name] = np.concatenate([np.concatenate(lab.score_documents(s.docs)) if s.docs else np.zeros(0)
                                        for s in sets])
    for nm in cfg.sidecar_baseline or []:
        scorers[f"sidecar:{nm}"] = np.concatenate([np.concatenate(sidecar_scores(s, nm)) for s in sets])
        names[f"sidecar:{nm}"] = f"stored scores of annotation {nm!r}"

    report = {"config": asdict(cfg), "tokens": int(labels.size), "positives": int(labels.sum()),
              "base_rate": float(labels.mean()),
              "prefixes": [{"prefix": s.prefix, "documents": len(s.docs), "tokens": s.num_tokens,
                            "positives": int(sum(int(lab.sum()) for lab in s.labels))} for s in sets],
              "scorers": {}}
    curves_b, curves_n = {}, {}
    wb = balanced_weights(labels)
    for name, s in scorers.items():
        m = evaluate_scores(s, labels)
        m["description"] = names[name]
        per = []
        for k, st in enumerate(sets):
            sel = prefix_of == k
            per.append({"prefix": st.prefix,
                        "flagged_at_balanced_threshold": float((s[sel] >= m["balanced"]["threshold"]).mean())
                        if sel.any() else 0.0,
                        "flagged_at_natural_threshold": float((s[sel] >= m["natural"]["threshold"]).mean())
                        if sel.any() else 0.0})
        m["per_prefix"] = per
        if novel is not None:
            sub = novel | ~labels  # novel positives against every negative
            m["novel"] = {"tokens": int(novel.sum()),
                          "auroc": roc_auc(s[sub], labels[sub]) if novel.any() else None,
                          "recall_at_balanced_threshold": float((s[novel] >= m["balanced"]["threshold"]).mean())
                          if novel.any() else None,
                          "recall_at_natural_threshold": float((s[novel] >= m["natural"]["threshold"]).mean())
                          if novel.any() else None}
        report["scorers"][name] = m
        curves_b[name] = pr_curve(s, labels, wb)
        curves_n[name] = pr_curve(s, labels)
    if cfg.output:
        os.makedirs(cfg.output, exist_ok=True)
        report["plots"] = {
            "balanced": plot_pr_curves(curves_b, os.path.join(cfg.output, "pr_balanced.png"),
                                       "precision/recall, class-balanced", 0.5),
            "natural": plot_pr_curves(curves_n, os.path.join(cfg.output, "pr_natural.png"),
                                      "precision/recall, natural base rate", report["base_rate"])}
        with atomic_write(os.path.join(cfg.output, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['tokens']:,} tokens, {report['positives']:,} forget (base rate {report['base_rate']:.4f})",
             f"{'scorer':<28} {'AUROC':>7} | {'balanced: P':>11} {'R':>6} {'F1':>6} {'thr':>6} | "
             f"{'natural: P':>10} {'R':>6} {'F1':>6} {'thr':>6} {'AP':>6} | {'nat@bal P':>9} {'R':>6}"
             + (" | novel AUROC, R@bal, R@nat" if any("novel" in m for m in report["scorers"].values()) else "")]
    for name, m in report["scorers"].items():
        b, n, nb = m["balanced"], m["natural"], m["natural_at_balanced_threshold"]
        row = (f"{name[:28]:<28} {m['auroc']:>7.4f} | {b['precision']:>11.4f} {b['recall']:>6.4f} {b['f1']:>6.4f} "
               f"{b['threshold']:>6.3f} | {n['precision']:>10.4f} {n['recall']:>6.4f} {n['f1']:>6.4f} "
               f"{n['threshold']:>6.3f} {n['average_precision']:>6.4f} | {nb['precision']:>9.4f} {nb['recall']:>6.4f}")
        if "novel" in m and m["novel"]["recall_at_balanced_threshold"] is not None:
            v = m["novel"]
            row += (f" | {v['auroc']:.4f} {v['recall_at_balanced_threshold']:.4f} "
                    f"{v['recall_at_natural_threshold']:.4f} of {v['tokens']}")
        lines.append(row)
    main = next(iter(report["scorers"].values()), None)
    if main is not None:
        lines.append(f"calibration of {next(iter(report['scorers']))} (natural base rate):")
        lines.append(f"  {'bin':>11} {'tokens':>9} {'mean score':>10} {'forget rate':>11}")
        for r in main["calibration_natural"]:
            if r["count"]:
                lines.append(f"  [{r['lo']:.1f}, {r['hi']:.1f}) {r['count']:>9,} {r['mean_score']:>10.4f} "
                             f"{r['forget_rate']:>11.4f}")
        lines.append("flagged at the balanced / natural threshold, per prefix: " + "; ".join(
            f"{os.path.basename(p['prefix'])} {p['flagged_at_balanced_threshold']:.2%} / "
            f"{p['flagged_at_natural_threshold']:.2%}" for p in main["per_prefix"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from ...config.cli import add_dataclass_args, dataclass_from_args

    p = argparse.ArgumentParser(description="Evaluate token classifiers against sidecar labels.")
    add_dataclass_args(p, EvalClassifierConfig)
    args = p.parse_args(argv)
    try:
        report = evaluate_classifiers(dataclass_from_args(EvalClassifierConfig, args))
    except (ValueError, FileNotFoundError) as e:
        print(f"eval_classifier: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0
