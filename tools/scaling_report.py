#!/usr/bin/env python3
"""Scaling fits and compute slowdown of filtered runs: a Markdown report with plots, plus JSON and CSV.

    python tools/scaling_report.py --evals 'evals/*.json' --output-dir report/
    python tools/scaling_report.py --manifest runs.json --output-dir report/ [--params total] [--tokens learned]

Inputs: evaluation JSONs of tools/evaluate.py (they carry the arm, size, parameter counts and token counts), and/or a
run manifest (docs/evaluation.md: {"runs": [{"eval": "evals/x.json", "arm": "none", ...} or inline numbers]}).
Compute C = 6 N D (Kaplan et al. 2020): N non-embedding parameters by default (--params total for all), D tokens
seen by default (--tokens learned for unmasked targets). ln L = a + b ln C is fitted on the --baseline-arm runs per
domain; slowdown = C_f / C_baseline(L_f). Output: <output-dir>/report.md (+ PNGs), scaling.json, slowdowns.csv,
fits.csv, runs.csv. Logic: megatron_tf/evaluation/{scaling,plots,report}.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.evaluation.report import fmt_ratio, write_report  # noqa: E402
from megatron_tf.evaluation.scaling import (  # noqa: E402
    METRICS,
    ScalingOptions,
    analyze,
    load_eval_files,
    load_manifest,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", default=None, help="run manifest JSON")
    p.add_argument("--evals", nargs="+", default=[], help="evaluation JSON files or glob patterns")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--params", default="non_embedding", choices=("non_embedding", "total"),
                   help="N of C = 6ND: non-embedding (Kaplan et al. 2020) or all parameters")
    p.add_argument("--tokens", default="seen", choices=("seen", "learned"),
                   help="D of C = 6ND: tokens seen or tokens learned (unmasked targets)")
    p.add_argument("--baseline-arm", default="none")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS,
                   help="loss: all tokens; token_loss: forget tokens on the forget set, unlabeled tokens elsewhere")
    args = p.parse_args(argv)
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
    analysis = analyze(runs, ScalingOptions(params=args.params, tokens=args.tokens, baseline_arm=args.baseline_arm,
                                            metrics=tuple(args.metrics)))
    paths = write_report(analysis, args.output_dir)
    for w in analysis["warnings"]:
        print(f"warning: {w}")
    for s in analysis["slowdowns"]:
        if s["arm"] != args.baseline_arm:
            flag = f" (extrapolated {s['extrapolation']})" if s["extrapolation"] else ""
            print(f"{s['metric']:>10} {s['domain']:>8} {s['arm']:>9} {s['size']:>8}: slowdown "
                  f"{fmt_ratio(s['slowdown'])}x{flag}")
    print(f"report: {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
