"""Command lines of tools/sae_label.py (subcommands select, thresholds, label, report) and tools/train_sae.py."""

from __future__ import annotations

import argparse
import json
import sys

from ...config.cli import add_dataclass_args, dataclass_from_args

_STEPS = {
    "select": ("SelectConfig", "run_select", "Choose domain latents from in-domain vs out-of-domain documents."),
    "thresholds": ("ThresholdsConfig", "run_thresholds", "Fill in latent thresholds (mean + k std) over a sample."),
    "label": ("LabelConfig", "run_label", "Write SAE forget labels as sidecars beside datasets, then report."),
    "report": ("ReportConfig", "run_report", "Per-dataset forget fractions and highlighted documents."),
}


def build_parser() -> argparse.ArgumentParser:
    from . import workflow

    p = argparse.ArgumentParser(description="Weak token labels from sparse-autoencoder latents (docs/sae_labels.md).")
    sub = p.add_subparsers(dest="step", required=True)
    for step, (cls, _, help_) in _STEPS.items():
        sp = sub.add_parser(step, help=help_, description=help_)
        add_dataclass_args(sp, getattr(workflow, cls))
    return p


def main(argv: list[str] | None = None) -> int:
    from . import workflow

    args = build_parser().parse_args(argv)
    cls, fn, _ = _STEPS[args.step]
    try:
        cfg = dataclass_from_args(getattr(workflow, cls), args)
        out = getattr(workflow, fn)(cfg)
    except (ValueError, FileNotFoundError, ImportError, NotImplementedError) as e:
        print(f"sae_label {args.step}: error: {e}", file=sys.stderr)
        return 2
    out.pop("annotate", None)
    print(json.dumps(out, indent=1, default=str))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    from .train import TrainSAEConfig, train_sae

    p = argparse.ArgumentParser(description="Train a small SAE with sae-lens on a reference LM's residual stream.")
    add_dataclass_args(p, TrainSAEConfig)
    args = p.parse_args(argv)
    try:
        train_sae(dataclass_from_args(TrainSAEConfig, args))
    except (ValueError, FileNotFoundError, ImportError, NotImplementedError) as e:
        print(f"train_sae: error: {e}", file=sys.stderr)
        return 2
    return 0
