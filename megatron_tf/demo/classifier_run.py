"""The biLM classifier on the bundled demo corpus under the held-out-terms protocol, end to end on CPU
(numbers in docs/classifier.md, committed outputs in results/classifier_demo/).

    python -m megatron_tf.demo.classifier_run --out runs/classifier_demo [--results results/classifier_demo]

1. data: the demo data stage with blocklist half 1/2 (`prepare_demo_data(terms_split="1/2")`): every prefix
   annotated as `forget` with the terms of half 1/2 (the classifier's teacher), the held-out prefixes also as
   `heldout_terms` with half 2/2 (evaluation only; the teacher never marks a term of it);
2. two tiny LMs with the project's trainer on the three training domains: forward, and reversed
   (--reverse-documents); they never read a label;
3. the classifier `cls_bilm` (biLM features, logistic probe), trained on the `forget` (1/2) labels of the training
   prefixes, with the forward-only baseline `cls_forward` (its own best layer) and the MLP head on the biLM
   features at the chosen layer (`cls_bilm_mlp`); each artifact records its teacher labels (config.json "teacher":
   annotation name, threshold, the blocklist's describe() with terms_split 1/2 and split_seed);
4. evaluation on the held-out domains (medical, biology, general):
   a. `eval_filter_labels`: against the teacher's labels (half 1/2) on held-out text: how well the classifier
      reproduces the labels it was taught, biLM vs forward-only;
   b. `eval_heldout_terms`: against half 2/2, with the lexical blocklist 1/2 (the teacher itself) as the baseline
      and `novel` = the tokens half 2/2 marks and half 1/2 does not: the teacher never labeled them, so any recall
      there comes from context, not from copying the teacher.
Every step is skipped when its output exists (rerun to resume). A data directory annotated under another protocol
(e.g. `forget` with every term) is refused with an error naming the sidecar: delete OUT/data to redo it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from ..config.cli import add_dataclass_args, dataclass_from_args, opt
from ..utils.io import atomic_write
from ..utils.logging import get_logger

log = get_logger(__name__)

# 4 x 128 (2.6M parameters, 2.1M of them embedding + output layer); ~7k tokens/s here, so each LM trains in ~3
# minutes. Measured: 400k tokens at micro batch 16 reached valid loss 6.85 and gave a near-useless probe (AUROC 0.81);
# 1.2M tokens at micro batch 4 reach 5.55 (docs/classifier.md).
LM = {"num_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "seq_length": 256, "micro_batch_size": 4,
      "train_tokens": 1_200_000, "lr": 3e-3}
TEACHER = "forget"  # the annotation the classifier is trained on (blocklist half FILTER_TERMS)
EVALS = ("filter_labels", "heldout_terms")
# files copied to --results: run-relative source -> name in the results directory
RESULT_FILES = {"summary.json": "summary.json", "train.json": "train.json",
                **{f"eval_{e}/report.json": f"eval_{e}.json" for e in EVALS},
                **{f"eval_{e}/pr_{k}.png": f"pr_{k}_{e}.png" for e in EVALS for k in ("balanced", "natural")}}


def lm_args(data, save: str, reverse: bool, seed: int = 1234, lm: dict | None = None) -> list[str]:
    from .data_stage import DOMAINS

    lm = lm or LM
    train = [x for dom in DOMAINS for x in ("1", data.train[dom])]
    args = ["--num-layers", str(lm["num_layers"]), "--hidden-size", str(lm["hidden_size"]),
            "--num-attention-heads", str(lm["num_attention_heads"]), "--seq-length", str(lm["seq_length"]),
            "--micro-batch-size", str(lm["micro_batch_size"]), "--global-batch-size", str(lm["micro_batch_size"]),
            "--train-tokens", str(lm["train_tokens"]), "--lr", str(lm["lr"]), "--min-lr", str(lm["lr"] / 10),
            "--lr-warmup-fraction", "0.05", "--weight-decay", "0.1", "--clip-grad", "1.0", "--adam-beta2", "0.95",
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data.tokenizer_model,
            "--data-path", *train, "--split", lm.get("split", "98,2,0"), "--num-workers", "1",
            "--eval-interval", "1000000", "--eval-iters", "4", "--log-interval", "50", "--save", save,
            "--load", save, "--save-interval", "50", "--seed", str(seed), "--no-progress-bar"]
    return args + (["--reverse-documents"] if reverse else [])


def _done(path: str) -> bool:
    return os.path.exists(os.path.join(path, "DONE"))


def train_lm(data, save: str, reverse: bool, lm: dict | None = None) -> dict:
    """Train one LM (checkpoint every 50 iterations: an interrupted run continues from its last checkpoint)."""
    from ..training import pretrain

    if _done(save):
        with open(os.path.join(save, "DONE")) as f:
            return json.load(f)
    t0 = time.time()
    r = pretrain(lm_args(data, save, reverse, lm=lm))
    info = {"iterations": r.iteration, "tokens_seen": r.tokens_seen, "final_loss": float(np.mean(r.losses[-20:])),
            "seconds": time.time() - t0, "reverse_documents": reverse}
    with atomic_write(os.path.join(save, "DONE"), "w") as f:
        json.dump(info, f)
    return info


def check_labels(data) -> dict:
    """The blocklist describe() of the teacher (`forget` of every prefix) and of the evaluation labels
    (`heldout_terms` of the held-out prefixes), from the sidecar headers; an error naming the sidecar when one was
    made with another terms split (a data directory of an older protocol: prepare_demo_data keeps existing
    sidecars)."""
    from ..data.sidecar import KIND_TOKEN_SCORES, read_header, sidecar_path
    from .data_stage import EVAL_LABELS, EVAL_TERMS

    want = {TEACHER: (data.terms_split, [*data.train.values(), *data.heldout.values()]),
            EVAL_LABELS: (EVAL_TERMS, list(data.heldout.values()))}
    out = {}
    for name, (split, prefixes) in want.items():
        for p in prefixes:
            path = sidecar_path(p, KIND_TOKEN_SCORES, name)
            desc = read_header(path).metadata.get("labeler") or {}
            if not isinstance(desc, dict) or desc.get("terms_split") != split:
                found = desc.get("terms_split") if isinstance(desc, dict) else desc
                raise ValueError(f"{path}: annotation {name!r} was made with blocklist terms_split {found!r}, this "
                                 f"protocol needs {split!r} (a data directory of another run: delete "
                                 f"{os.path.dirname(p)} and rerun)")
            out[name] = {k: desc.get(k) for k in ("labeler", "terms_sha256", "terms_split", "split_seed", "num_terms",
                                                  "num_terms_file", "plurals")}
    return out


def train_classifiers(data, out: str, seed: int) -> dict:
    """cls_bilm (+ cls_forward) and cls_bilm_mlp on the teacher labels; returns the training report."""
    from ..labeling.classifier.train import TrainClassifierConfig, train_classifier
    from .data_stage import DOMAINS

    bi, fo, mlp = (os.path.join(out, n) for n in ("cls_bilm", "cls_forward", "cls_bilm_mlp"))
    common = dict(forward_lm=os.path.join(out, "lm_forward"), reversed_lm=os.path.join(out, "lm_reversed"),
                  train_data=[data.train[d] for d in DOMAINS], label_name=TEACHER, seed=seed, progress=False,
                  overwrite=True)
    rep_path = os.path.join(out, "train.json")
    if not (os.path.exists(os.path.join(bi, "config.json")) and os.path.exists(rep_path)):
        rep = train_classifier(TrainClassifierConfig(output=bi, forward_only_output=fo, **common))
        with atomic_write(rep_path, "w") as f:
            json.dump(rep, f, indent=1)
    with open(rep_path) as f:
        rep = json.load(f)
    if not os.path.exists(os.path.join(mlp, "config.json")):  # the same biLM features at the chosen layer, MLP head
        train_classifier(TrainClassifierConfig(output=mlp, probe="mlp", layers=[rep["final"]["layer"]], **common))
    return rep


def evaluate(data, out: str) -> dict:
    """The two held-out evaluations (module doc, step 4); returns {name: report}."""
    from ..labeling.classifier.evaluate import EvalClassifierConfig, evaluate_classifiers
    from .data_stage import DOMAINS, EVAL_LABELS

    heldout = [data.heldout[d] for d in DOMAINS]
    classifiers = [os.path.join(out, n) for n in ("cls_bilm", "cls_bilm_mlp", "cls_forward")]
    cfgs = {"filter_labels": dict(label_name=TEACHER),
            "heldout_terms": dict(label_name=EVAL_LABELS, sidecar_baseline=[TEACHER], novel_from=TEACHER)}
    reports = {}
    for name, kw in cfgs.items():
        path = os.path.join(out, f"eval_{name}", "report.json")
        if not os.path.exists(path):
            evaluate_classifiers(EvalClassifierConfig(classifier=classifiers, data=heldout,
                                                      output=os.path.dirname(path), **kw))
        with open(path) as f:
            reports[name] = json.load(f)
    return reports


def _scorers(ev: dict) -> dict:
    out = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("calibration")} for k, v in ev["scorers"].items()}
    out["_data"] = {"label_name": ev["config"]["label_name"], "tokens": ev["tokens"], "positives": ev["positives"],
                    "base_rate": ev["base_rate"]}
    return out


def copy_results(out: str, results: str) -> None:
    os.makedirs(results, exist_ok=True)
    for src, dst in RESULT_FILES.items():
        tmp = os.path.join(results, f".{dst}.tmp")
        shutil.copyfile(os.path.join(out, src), tmp)
        os.replace(tmp, os.path.join(results, dst))


def run(out: str, seed: int = 1234, results: str | None = None, demo_dir: str | None = None,
        lm: dict | None = None) -> dict:
    from ..labeling.classifier.evaluate import format_report
    from ..labeling.classifier.train import format_sweep
    from .data_stage import DEMO_DIR, FILTER_TERMS, prepare_demo_data

    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    data = prepare_demo_data(os.path.join(out, "data"), demo_dir=demo_dir or DEMO_DIR, workers=2, progress=False,
                             terms_split=FILTER_TERMS, probe=False)
    labels = check_labels(data)
    summary = {"lm": lm or LM, "labels": {"teacher": {"annotation": TEACHER, **labels[TEACHER]},
                                          "heldout": {"annotation": data.eval_labels, **labels[data.eval_labels]}}}
    summary["forward_lm"] = train_lm(data, os.path.join(out, "lm_forward"), False, lm)
    summary["reversed_lm"] = train_lm(data, os.path.join(out, "lm_reversed"), True, lm)
    rep = train_classifiers(data, out, seed)
    print(f"== classifier trained on {TEACHER!r} (blocklist {data.terms_split}): layer sweep (validation documents "
          "of the train split)")
    print(format_sweep(rep))
    summary["train"] = {"sweep": rep["sweep"], "layer": rep["final"]["layer"], "teacher": rep["teacher"]}
    for name, ev in evaluate(data, out).items():
        print(f"== held-out evaluation against annotation {ev['config']['label_name']!r} ({name})")
        print(format_report(ev))
        summary[f"eval_{name}"] = _scorers(ev)
        summary[f"calibration_{name}"] = ev["scorers"]["cls_bilm"]["calibration_natural"]
    summary["seconds"] = time.time() - t0  # this invocation's (steps found done are skipped)
    with atomic_write(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if results:
        copy_results(out, results)
    return summary


@dataclass
class ClassifierDemoConfig:
    """The classifier demo's command line: run's arguments."""

    out: str = field(default="runs/classifier_demo", metadata=opt("Output directory (every step resumes there)."))
    seed: int = field(default=1234, metadata=opt("Seed of the classifiers' training."))
    results: str | None = field(default=None, metadata=opt(
        "Also copy the summary, training report, evaluation reports and PR curves here (results/classifier_demo "
        "holds the committed copy).", metavar="DIR"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, ClassifierDemoConfig, "classifier demo")
    a = dataclass_from_args(ClassifierDemoConfig, p.parse_args(argv))
    run(a.out, a.seed, a.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
