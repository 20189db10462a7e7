#!/usr/bin/env python3
"""Scaling fits and compute slowdown of filtered runs: a Markdown report with plots, plus JSON and CSV.

    python tools/scaling_report.py --evals 'evals/*.json' --output-dir report/
    python tools/scaling_report.py --manifest runs.json --output-dir report/ [--compute seen]

Inputs: evaluation JSONs of tools/evaluate.py (they carry the arm, size, parameter counts and token counts), and/or a
run manifest (docs/evaluation.md: {"runs": [{"eval": "evals/x.json", "arm": "none", ...} or inline numbers]}).
Compute (--compute, megatron_tf/evaluation/compute.py):
    paper (default)  C = 6 * N * (20 * N), N = total parameters: the same C for every arm of a size, as the paper's
                     analysis code (scaling.py) computes it;
    seen             C = 6 * N * tokens seen, N = total parameters (the compute each run spent);
    learned          C = 6 * N * tokens learned, N = total parameters;
    kaplan           C = 6 * N_non_embedding * tokens seen: this tool's default before issue 13.
Every slowdown is also computed under --compare (default seen; paper when --compute seen) and shown beside it.
ln L = a + b ln C is fitted on the --baseline-arm runs per domain; slowdown = C_f / C_baseline(L_f), with 95%
bootstrap intervals over evaluation documents (and seeds). Headline: all-token forget / retain / general loss; a
token-level loss computed with the filter's own labels (privileged) only appears in a labelled secondary section.
Runs that state a filtered share (examples/threshold_sweep.sh) also get the threshold frontier (frontier.png).
Output: <output-dir>/report.md (+ PNGs), scaling.json, slowdowns.csv, fits.csv, runs.csv[, frontier.csv].
Logic: megatron_tf/evaluation/{compute,intervals,scaling_runs,scaling,frontier,plots,report,report_tables}.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402
from megatron_tf.evaluation.compute import CONVENTIONS  # noqa: E402
from megatron_tf.evaluation.report import fmt_ratio, write_report  # noqa: E402
from megatron_tf.evaluation.scaling import (  # noqa: E402
    METRICS,
    ScalingOptions,
    analyze,
    load_eval_files,
    load_manifest,
)


@dataclass
class ScalingReportConfig:
    """Which runs to read, where the report goes, and how the fits and slowdowns are computed."""

    output_dir: str = field(metadata=opt("Where report.md, the plots, scaling.json and the CSVs go."))
    manifest: str | None = field(default=None, metadata=opt("Run manifest JSON."))
    evals: list[str] = field(default_factory=list, metadata=opt("Evaluation JSON files or glob patterns."))
    compute: str = field(default="paper", metadata=opt(
        "Compute convention of the fits and slowdowns (see the module docstring).", choices=sorted(CONVENTIONS)))
    compare: str | None = field(default=None, metadata=opt(
        "Second convention shown beside it (default: seen, or paper when --compute seen).",
        choices=sorted(CONVENTIONS)))
    bootstrap: int = field(default=1000, metadata=opt("Bootstrap replicates for the 95% intervals (0: none)."))
    seed: int = field(default=0, metadata=opt("Bootstrap seed."))
    baseline_arm: str = field(default="none", metadata=opt("Arm whose runs the scaling law is fitted on."))
    metrics: list[str] = field(default_factory=lambda: list(METRICS), metadata=opt(
        "loss: all tokens; token_loss: forget tokens on the forget set, unlabeled tokens elsewhere.",
        choices=METRICS))


def parse_args(argv=None) -> ScalingReportConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, ScalingReportConfig, "scaling report")
    args = dataclass_from_args(ScalingReportConfig, p.parse_args(argv))
    if not args.manifest and not args.evals:
        p.error("give --manifest and/or --evals")
    return args


def expand(patterns: list[str]) -> list[str]:
    out = []
    for pat in patterns:
        hits = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        if not hits:
            raise SystemExit(f"tools/scaling_report.py: no file matches {pat!r}")
        out.extend(hits)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = load_manifest(args.manifest) if args.manifest else []
    runs += load_eval_files(expand(args.evals))
    if args.bootstrap < 0:
        raise SystemExit(f"tools/scaling_report.py: --bootstrap must be >= 0, got {args.bootstrap}")
    analysis = analyze(runs, ScalingOptions(compute=args.compute, compare=args.compare,
                                            baseline_arm=args.baseline_arm, metrics=tuple(args.metrics),
                                            n_boot=args.bootstrap, seed=args.seed))
    paths = write_report(analysis, args.output_dir)
    for w in analysis["warnings"]:
        print(f"warning: {w}")
    convs = list(analysis["compute_labels"])
    print(f"compute convention: {analysis['compute_labels'][args.compute]} (beside it: "
          f"{', '.join(analysis['compute_labels'][c] for c in convs[1:]) or 'none'})")
    for s in analysis["slowdowns"]:
        if s["arm"] != args.baseline_arm and any(e["slowdown"] is not None for e in s["by_convention"].values()):
            flag = f" (extrapolated: {s['extrapolation']})" if s["extrapolated"] else ""
            priv = {True: " [privileged labels]", None: " [privileged-unknown labels]"}.get(s["privileged"], "")
            cells = ", ".join(f"{c} {fmt_ratio(v)}{'x' if v is not None else ''}"
                              for c, v in ((c, s["by_convention"][c]["slowdown"]) for c in convs))
            print(f"{s['metric']:>10} {s['domain']:>8} {s['variant']:>12} {s['size']:>8}: slowdown {cells}{flag}{priv}")
    print(f"report: {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
