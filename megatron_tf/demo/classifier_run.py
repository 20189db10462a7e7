"""The biLM classifier on the bundled demo corpus, end to end on CPU (numbers in docs/classifier.md).

    python -m megatron_tf.demo.classifier_run --out runs/classifier_demo      # about 15 minutes on 2 cores

1. data: the demo data stage (preprocess every domain, blocklist labels under the name `forget`);
2. a second teacher for the held-out-terms experiment: a seeded half of the blocklist terms ("terms A"), annotated
   as `terms_a`;
3. two tiny LMs with the project's trainer on the three training domains: forward, and reversed
   (--reverse-documents);
4. classifiers: trained on the full blocklist labels, and on terms-A labels (both with the forward-only baseline);
5. evaluation on the held-out domains against the full blocklist labels: biLM vs forward-only vs lexical blocklist;
   for the terms-A classifier, also recall on the tokens only the held-out terms B mark (the teacher never labels
   them: anything found there comes from context, not from copying the teacher).
Every step is skipped when its output exists (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from ..utils.io import atomic_write
from ..utils.logging import get_logger

log = get_logger(__name__)

# 4 x 128 (2.6M parameters, 2.1M of them embedding + output layer); ~7k tokens/s here, so each LM trains in ~3
# minutes. Measured: 400k tokens at micro batch 16 reached valid loss 6.85 and gave a near-useless probe (AUROC 0.81);
# 1.2M tokens at micro batch 4 reach 5.55 (docs/classifier.md).
LM = {"num_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "seq_length": 256, "micro_batch_size": 4,
      "train_tokens": 1_200_000, "lr": 3e-3}


def lm_args(data, save: str, reverse: bool, seed: int = 1234) -> list[str]:
    from .data_stage import DOMAINS

    train = [x for dom in DOMAINS for x in ("1", data.train[dom])]
    args = ["--num-layers", str(LM["num_layers"]), "--hidden-size", str(LM["hidden_size"]),
            "--num-attention-heads", str(LM["num_attention_heads"]), "--seq-length", str(LM["seq_length"]),
            "--micro-batch-size", str(LM["micro_batch_size"]), "--global-batch-size", str(LM["micro_batch_size"]),
            "--train-tokens", str(LM["train_tokens"]), "--lr", str(LM["lr"]), "--min-lr", str(LM["lr"] / 10),
            "--lr-warmup-fraction", "0.05", "--weight-decay", "0.1", "--clip-grad", "1.0", "--adam-beta2", "0.95",
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", data.tokenizer_model,
            "--data-path", *train, "--split", "98,2,0", "--num-workers", "1", "--eval-interval", "1000000",
            "--eval-iters", "4", "--log-interval", "50", "--save", save, "--seed", str(seed),
            "--no-progress-bar"]
    return args + (["--reverse-documents"] if reverse else [])


def _done(path: str) -> bool:
    return os.path.exists(os.path.join(path, "DONE"))


def train_lm(data, save: str, reverse: bool) -> dict:
    from ..training import pretrain

    if _done(save):
        with open(os.path.join(save, "DONE")) as f:
            return json.load(f)
    t0 = time.time()
    r = pretrain(lm_args(data, save, reverse))
    info = {"iterations": r.iteration, "tokens_seen": r.tokens_seen, "final_loss": float(np.mean(r.losses[-20:])),
            "seconds": time.time() - t0, "reverse_documents": reverse}
    with atomic_write(os.path.join(save, "DONE"), "w") as f:
        json.dump(info, f)
    return info


def split_terms(terms_file: str, out: str, seed: int = 0) -> tuple[str, list[str], list[str]]:
    from ..labeling.blocklist import read_terms

    terms = read_terms(terms_file)
    perm = np.random.default_rng(seed).permutation(len(terms))
    a = sorted(terms[i] for i in perm[: len(terms) // 2])
    b = sorted(terms[i] for i in perm[len(terms) // 2 :])
    if not os.path.exists(out):
        with atomic_write(out, "w") as f:
            f.write("# terms A: a seeded half of data/demo/medical_terms.txt (classifier held-out-terms experiment)\n")
            f.write("\n".join(a) + "\n")
    return out, a, b


def run(out: str, seed: int = 1234) -> dict:
    from ..classifier.evaluate import EvalClassifierConfig, evaluate_classifiers, format_report
    from ..classifier.train import TrainClassifierConfig, format_sweep, train_classifier
    from ..labeling.annotate import annotate
    from ..labeling.blocklist import BlocklistLabeler
    from ..tokenizer.tokenizer import build_tokenizer
    from .data_stage import DOMAINS, prepare_demo_data

    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    data = prepare_demo_data(os.path.join(out, "data"), workers=2, progress=False, terms_split=None, probe=False)
    tok = build_tokenizer(**data.tokenizer_args)
    terms_a, a, b = split_terms(data.terms, os.path.join(out, "terms_a.txt"))
    lab_a = BlocklistLabeler.from_file(terms_a, tok)
    prefixes = [data.train[d] for d in DOMAINS] + [data.heldout[d] for d in DOMAINS]
    for p in prefixes:
        if not os.path.exists(p + ".terms_a.tokscores"):
            annotate(p, lab_a, tok, name="terms_a", progress=False)
    summary = {"lm": LM, "terms": {"all": len(a) + len(b), "a": len(a), "b": len(b)}}
    summary["forward_lm"] = train_lm(data, os.path.join(out, "lm_forward"), False)
    summary["reversed_lm"] = train_lm(data, os.path.join(out, "lm_reversed"), True)
    heldout = [data.heldout[d] for d in DOMAINS]
    for tag, label in (("full", "forget"), ("terms_a", "terms_a")):
        bi, fo = os.path.join(out, f"cls_{tag}"), os.path.join(out, f"cls_{tag}_forward")
        if not os.path.exists(os.path.join(bi, "config.json")):
            rep = train_classifier(TrainClassifierConfig(
                forward_lm=os.path.join(out, "lm_forward"), reversed_lm=os.path.join(out, "lm_reversed"),
                train_data=[data.train[d] for d in DOMAINS], label_name=label, output=bi, forward_only_output=fo,
                seed=seed, progress=False, overwrite=True))
            with atomic_write(os.path.join(out, f"train_{tag}.json"), "w") as f:
                json.dump(rep, f, indent=1)
        with open(os.path.join(out, f"train_{tag}.json")) as f:
            rep = json.load(f)
        print(f"== classifier trained on {label} labels: layer sweep (validation documents of the train split)")
        print(format_sweep(rep))
        extra = []
        if tag == "full":  # the same biLM features at the chosen layer with the MLP head
            mlp = os.path.join(out, "cls_full_mlp")
            if not os.path.exists(os.path.join(mlp, "config.json")):
                train_classifier(TrainClassifierConfig(
                    forward_lm=os.path.join(out, "lm_forward"), reversed_lm=os.path.join(out, "lm_reversed"),
                    train_data=[data.train[d] for d in DOMAINS], label_name=label, output=mlp, probe="mlp",
                    layers=[rep["final"]["layer"]], seed=seed, progress=False, overwrite=True))
            extra = [mlp]
        ev = evaluate_classifiers(EvalClassifierConfig(
            classifier=[bi, *extra, fo], data=heldout, label_name="forget", sidecar_baseline=[label],
            novel_from="terms_a" if tag == "terms_a" else None, output=os.path.join(out, f"eval_{tag}")))
        print(f"== held-out evaluation against the full blocklist labels ({tag} classifier)")
        print(format_report(ev))
        summary[f"train_{tag}"] = {"sweep": rep["sweep"], "layer": rep["final"]["layer"]}
        summary[f"eval_{tag}"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("calibration")}
                                  for k, v in ev["scorers"].items()}
        summary[f"eval_{tag}"]["_data"] = {"tokens": ev["tokens"], "positives": ev["positives"],
                                           "base_rate": ev["base_rate"]}
        summary[f"calibration_{tag}"] = ev["scorers"][os.path.basename(bi)]["calibration_natural"]
    summary["seconds"] = time.time() - t0
    with atomic_write(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/classifier_demo")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    run(a.out, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
