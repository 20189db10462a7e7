"""Train a biLM token classifier (tools/train_classifier.py): layer sweep, probe, baseline, artifact.

1. Open the forward and reversed LM checkpoints (trainer --save directories). The reversed LM must have been trained
   with --reverse-documents (checked in its config.json) and both with the same tokenizer.
2. Split the documents of the --train-data prefixes into probe-train and validation documents (seeded).
3. Sample tokens per class (corpus.class_sample: at most --max-tokens-per-class of each class, weights 1 / p_c) and
   read the hidden states of every swept layer for them, in one pass per direction.
4. Per layer, fit a class-balanced logistic probe on the biLM features (forward + reversed) and on forward-only
   features; score the validation sample (AUROC, balanced and natural F1; metrics.py).
5. Pick the layer with the best validation balanced F1 (the paper's metric; ties: the lower, cheaper layer), fit
   the final probe (--probe logistic|mlp) there, take the validation F1-optimal threshold (balanced), and save the
   artifact; with --forward-only-output, the forward-only baseline's artifact too (its own best layer).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ...config.cli import opt
from ...utils.device import resolve_device
from ...utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class TrainClassifierConfig:
    """Train a biLM token classifier (probe on forward + reversed LM hidden states)."""

    forward_lm: str = field(default="", metadata=opt("Forward LM checkpoint (trainer --save directory).",
                                                     metavar="DIR"))
    reversed_lm: str | None = field(default=None, metadata=opt(
        "Reversed LM checkpoint (trained with --reverse-documents). Omit for a forward-only classifier.",
        metavar="DIR"))
    train_data: list[str] = field(default_factory=list, metadata=opt(
        "Dataset prefixes whose documents (and label sidecars) train and validate the probe.", metavar="PREFIX"))
    label_name: str = field(default="forget", metadata=opt(
        "Annotation name N of the label sidecars P.N.tokscores / P.N.tokmask."))
    label_threshold: float = field(default=0.5, metadata=opt("A token is forget iff q >= ceil(255 T).",
                                                             metavar="T"))
    valid_fraction: float = field(default=0.1, metadata=opt(
        "Fraction of each prefix's documents held out to choose the layer and the threshold."))
    layers: list[int] | None = field(default=None, metadata=opt(
        "Layers to sweep: l = output of block l, -1 = embeddings (default: all, -1 .. L-1)."))
    probe: str = field(default="logistic", metadata=opt("Final probe head.", choices=("logistic", "mlp")))
    mlp_hidden: int = field(default=256, metadata=opt("Hidden units of the MLP head."))
    l2: float = field(default=1e-4, metadata=opt("L2 penalty on the probe weights (standardised features)."))
    max_tokens_per_class: int = field(default=40000, metadata=opt(
        "Token sample cap per class and split (features held in memory: 2 caps x layers x features x 4 bytes)."))
    window: int | None = field(default=None, metadata=opt(
        "LM window W in positions (default: the forward LM's --seq-length)."))
    context: int | None = field(default=None, metadata=opt(
        "Guaranteed context M of every scored token beyond the first window (default W // 4)."))
    batch_tokens: int = field(default=16384, metadata=opt("Padded positions per LM forward batch."))
    device: str = field(default="auto", metadata=opt("cpu, cuda, cuda:N or auto."))
    seed: int = field(default=1234, metadata=opt("Seed of the document split, token sampling and MLP."))
    output: str = field(default="", metadata=opt("Artifact directory to write.", metavar="DIR"))
    forward_only_output: str | None = field(default=None, metadata=opt(
        "Also write the forward-only baseline artifact here.", metavar="DIR"))
    overwrite: bool = field(default=False, metadata=opt("Replace existing artifact directories."))
    progress: bool = field(default=True, metadata=opt("Show progress bars."))

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_tokens_per_class < 1:
            raise ValueError(f"--max-tokens-per-class must be >= 1, got {self.max_tokens_per_class}")


def _tokenizer_of(run_config: dict, where: str):
    from ...tokenizer.tokenizer import build_tokenizer

    tc = run_config["configs"]["tokenizer"]
    try:
        return build_tokenizer(tc["tokenizer_type"], tc.get("tokenizer_model"), tc.get("vocab_size"))
    except Exception as e:
        raise ValueError(f"{where}: cannot rebuild the LM's tokenizer {tc} ({e})") from e


def open_lms(forward_dir: str, reversed_dir: str | None):
    """(forward LMSpec, reversed LMSpec or None, tokenizer, window default) with the consistency checks."""
    from .artifact import lm_from_checkpoint

    fwd, fcfg = lm_from_checkpoint(forward_dir)
    tok = _tokenizer_of(fcfg, forward_dir)
    if fcfg["configs"]["data"].get("reverse_documents"):
        raise ValueError(f"{forward_dir}: the forward LM was trained with --reverse-documents")
    rev = None
    if reversed_dir:
        rev, rcfg = lm_from_checkpoint(reversed_dir)
        if not rcfg["configs"]["data"].get("reverse_documents"):
            raise ValueError(f"{reversed_dir}: the reversed LM was not trained with --reverse-documents (its "
                             "config.json has data.reverse_documents false): it is a second forward LM")
        rtok = _tokenizer_of(rcfg, reversed_dir)
        if rtok.fingerprint != tok.fingerprint:
            raise ValueError(f"forward LM tokenizer {tok.fingerprint} != reversed LM tokenizer {rtok.fingerprint}")
        if rev.config.hidden_size != fwd.config.hidden_size:
            raise ValueError(f"hidden sizes differ: forward {fwd.config.hidden_size}, reversed "
                             f"{rev.config.hidden_size}")
    return fwd, rev, tok, int(fcfg["configs"]["training"]["seq_length"])


def _fit_and_score(train, valid, layer: int, bidirectional: bool, l2: float, kind: str = "logistic",
                   hidden: int = 256, seed: int = 1234):
    import torch

    from .metrics import evaluate_scores
    from .probe import fit_probe

    fit = fit_probe(train.x(layer, bidirectional), torch.from_numpy(train.labels), kind=kind, l2=l2, hidden=hidden,
                    seed=seed)
    with torch.no_grad():
        s = fit.probe.probabilities(valid.x(layer, bidirectional)).numpy()
    return fit, evaluate_scores(s, valid.labels, valid.weights)


def _row(layer: int, m: dict) -> dict:
    return {"layer": layer, "auroc": m["auroc"], "balanced_f1": m["balanced"]["f1"],
            "balanced_threshold": m["balanced"]["threshold"], "natural_f1": m["natural"]["f1"],
            "natural_ap": m["natural"]["average_precision"]}


def teacher_labels(prefixes: list[str], name: str, threshold: float) -> dict:
    """The labels the probe is trained on, for the artifact (config.json "teacher"): {"name": annotation name,
    "threshold", "labeler": the labeler describe() stored in the sidecar headers of `name` beside the training
    prefixes (annotate writes it; e.g. a blocklist's terms_sha256, terms_split, split_seed)}. Prefixes whose sidecars
    carry different describe()s give "labeler": "mixed" and the describe()s under "per_prefix"; none found: None.
    The evaluation (evaluation/labels.py) uses it to tell whether a run filtered by this classifier is evaluated with
    labels its teacher shares (privileged)."""
    from ...data.sidecar import KIND_TOKEN_MASK, KIND_TOKEN_SCORES, read_header, sidecar_path

    found = {}
    for p in prefixes:
        for kind in (KIND_TOKEN_SCORES, KIND_TOKEN_MASK):
            path = sidecar_path(p, kind, name)
            if os.path.isfile(path):
                found[p] = read_header(path).metadata.get("labeler")
                break
    descs = list(found.values())
    rec = {"name": name, "threshold": float(threshold)}
    if descs and all(d == descs[0] for d in descs) and len(found) == len(prefixes):
        return {**rec, "labeler": descs[0]}
    return {**rec, "labeler": "mixed" if descs else None, "per_prefix": found}


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (round(r["balanced_f1"], 12), -r["layer"]))


def train_classifier(cfg: TrainClassifierConfig) -> dict:
    """Run the pipeline (module doc); returns the report (also stored in the artifact's config.json)."""
    import torch

    from .artifact import save_classifier
    from .corpus import collect_features, load_docset, split_documents
    from .features import BiLM
    from .windows import check_window

    if not cfg.output:
        raise ValueError("--output DIR is required")
    if not cfg.train_data:
        raise ValueError("--train-data PREFIX [PREFIX ...] is required")
    t0 = time.time()
    fwd, rev, tok, seq_length = open_lms(cfg.forward_lm, cfg.reversed_lm)
    window = cfg.window or seq_length
    context = cfg.context if cfg.context is not None else window // 4
    check_window(window, context)
    if window > seq_length:
        log.warning("window %d is longer than the LMs' training sequence length %d (RoPE extrapolation)", window,
                    seq_length)
    num_layers = fwd.config.num_layers
    layers = sorted(set(cfg.layers)) if cfg.layers else list(range(-1, num_layers))
    if any(not -1 <= x < num_layers for x in layers):
        raise ValueError(f"--layers {layers}: each must be in [-1, {num_layers})")
    device = resolve_device(cfg.device)
    from .artifact import build_lm

    fm = build_lm(asdict(fwd.config), fwd.state_dict, device, cfg.forward_lm)
    rm = build_lm(asdict(rev.config), rev.state_dict, device, cfg.reversed_lm) if rev is not None else None
    autocast = torch.bfloat16 if device.startswith("cuda") else None
    bilm = BiLM(fm, rm, tok.eod, window=window, context=context, batch_tokens=cfg.batch_tokens,
                autocast_dtype=autocast)

    train_sets, valid_sets = [], []
    for k, prefix in enumerate(cfg.train_data):
        from ...data.indexed_dataset import IndexedDataset

        n = IndexedDataset(prefix).num_documents
        tr, va = split_documents(n, cfg.valid_fraction, cfg.seed + k)
        train_sets.append(load_docset(prefix, tr, cfg.label_name, cfg.label_threshold))
        valid_sets.append(load_docset(prefix, va, cfg.label_name, cfg.label_threshold))
    all_train = np.concatenate([lab for s in train_sets for lab in s.labels])
    base_rate = float(all_train.mean())
    log.info("probe data: %d train documents (%d tokens, base rate %.4f), %d validation documents",
             sum(len(s.docs) for s in train_sets), all_train.size, base_rate, sum(len(s.docs) for s in valid_sets))
    t1 = time.time()
    train = collect_features(bilm, train_sets, layers, cfg.max_tokens_per_class, cfg.seed, progress=cfg.progress)
    valid = collect_features(bilm, valid_sets, layers, cfg.max_tokens_per_class, cfg.seed + 1,
                             progress=cfg.progress)
    t_feat = time.time() - t1

    sweep = {"bidirectional": [], "forward": []}
    for layer in layers:
        for name, bi in (("bidirectional", True), ("forward", False)):
            if bi and rev is None:
                continue
            _, m = _fit_and_score(train, valid, layer, bi, cfg.l2, seed=cfg.seed)
            sweep[name].append(_row(layer, m))
            log.info("layer %2d %-13s valid AUROC %.4f balanced F1 %.4f natural F1 %.4f", layer, name, m["auroc"],
                     m["balanced"]["f1"], m["natural"]["f1"])
    if rev is None:
        del sweep["bidirectional"]
    report = {"config": asdict(cfg), "window": window, "context": context, "layers": layers, "base_rate": base_rate,
              "train_tokens_sampled": int(train.labels.size), "train_positives_sampled": int(train.labels.sum()),
              "valid_tokens_sampled": int(valid.labels.size), "valid_positives_sampled": int(valid.labels.sum()),
              "sweep": sweep, "feature_seconds": t_feat,
              "teacher": teacher_labels(cfg.train_data, cfg.label_name, cfg.label_threshold)}

    outputs = [("bidirectional" if rev is not None else "forward", cfg.output, rev)]
    if cfg.forward_only_output and rev is not None:
        outputs.append(("forward", cfg.forward_only_output, None))
    for name, out, rlm in outputs:
        best = _best(sweep[name])
        fit, m = _fit_and_score(train, valid, best["layer"], rlm is not None, cfg.l2, cfg.probe, cfg.mlp_hidden,
                                cfg.seed)
        rep = {**report, "features": name, "layer": best["layer"], "probe": cfg.probe,
               "valid_metrics": {k: v for k, v in m.items() if not k.startswith("calibration")},
               "seconds": time.time() - t0}
        save_classifier(out, forward_lm=fwd, reversed_lm=rlm, probe=fit.probe, layer=best["layer"], window=window,
                        context=context, tokenizer=tok, threshold=m["balanced"]["threshold"], base_rate=base_rate,
                        report=json.loads(json.dumps(rep)), overwrite=cfg.overwrite,
                        teacher=json.loads(json.dumps(report["teacher"])))
        log.info("%s classifier: layer %d, valid balanced F1 %.4f at threshold %.4f -> %s", name, best["layer"],
                 m["balanced"]["f1"], m["balanced"]["threshold"], out)
        if name == outputs[0][0]:
            report["final"] = rep
    return report


def format_sweep(report: dict) -> str:
    lines = [f"{'layer':>5} | " + " | ".join(f"{n + ' AUROC':>20} {'bal F1':>7} {'nat F1':>7}"
                                           for n in report["sweep"])]
    rows = {n: {r["layer"]: r for r in v} for n, v in report["sweep"].items()}
    for layer in report["layers"]:
        cells = []
        for n in report["sweep"]:
            r = rows[n][layer]
            cells.append(f"{r['auroc']:>20.4f} {r['balanced_f1']:>7.4f} {r['natural_f1']:>7.4f}")
        lines.append(f"{layer:>5} | " + " | ".join(cells))
    f = report.get("final", {})
    if f:
        b = f["valid_metrics"]["balanced"]
        lines.append(f"chosen: {f['features']} layer {f['layer']} ({f['probe']} probe), valid balanced F1 "
                     f"{b['f1']:.4f}, threshold {b['threshold']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from ...config.cli import add_dataclass_args, dataclass_from_args

    p = argparse.ArgumentParser(description="Train a biLM token classifier (docs/classifier.md).")
    add_dataclass_args(p, TrainClassifierConfig)
    args = p.parse_args(argv)
    try:
        cfg = dataclass_from_args(TrainClassifierConfig, args)
        report = train_classifier(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"train_classifier: error: {e}", file=sys.stderr)
        return 2
    print(format_sweep(report))
    return 0
