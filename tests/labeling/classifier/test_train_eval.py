"""tools/train_classifier.py + tools/eval_classifier.py end to end on tiny LMs trained with the project's trainer.

The labels are planted and lexical (token ids 0..9 are forget), so a probe on the embedding layer (token identity;
64 dimensions for 61 content ids: always linearly separable) must reach AUROC 1 on held-out documents: this checks
that features, labels and documents stay aligned through sampling, the layer sweep, the artifact and scoring."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import write_token_scores
from megatron_tf.labeling.classifier.artifact import read_config
from megatron_tf.labeling.classifier.evaluate import EvalClassifierConfig, evaluate_classifiers, format_report
from megatron_tf.labeling.classifier.train import TrainClassifierConfig, format_sweep, teacher_labels, train_classifier
from megatron_tf.labeling.classifier.train import main as train_main
from megatron_tf.training import pretrain

VOCAB, EOD = 64, 61


def _data(path, n, seed):
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(0, EOD, int(rng.integers(5, 60))), EOD) for _ in range(n)]
    ds = write_dataset(str(path), docs, dtype=np.uint16)
    tokens = np.concatenate(docs)
    write_token_scores(ds, np.where(tokens < 10, 255, 0).astype(np.uint8), {"labeler": "planted ids < 10"})
    write_token_scores(ds, np.where(tokens < 5, 255, 0).astype(np.uint8), {"labeler": "planted ids < 5"},
                       name="half")
    return ds.path_prefix


def _lm(tmp_path, prefix, name, reverse):
    save = str(tmp_path / name)
    args = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "4", "--global-batch-size", "4", "--train-iters", "2", "--lr", "1e-3",
            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--make-vocab-size-divisible-by", "8",
            "--data-path", prefix, "--split", "1,0,0", "--num-workers", "0", "--eval-iters", "1",
            "--eval-interval", "1000", "--no-progress-bar", "--save", save, "--seed", "3"]
    pretrain(args + (["--reverse-documents"] if reverse else []))
    return save


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tc")
    train = _data(tmp / "train", 80, 0)
    held = _data(tmp / "held", 30, 1)
    fwd = _lm(tmp, train, "fwd", False)
    rev = _lm(tmp, train, "rev", True)
    return tmp, train, held, fwd, rev


@pytest.mark.slow
def test_train_then_evaluate(setup, capsys):
    tmp, train, held, fwd, rev = setup
    out, fo = str(tmp / "cls"), str(tmp / "cls_fwd")
    rep = train_classifier(TrainClassifierConfig(forward_lm=fwd, reversed_lm=rev, train_data=[train], output=out,
                                                 forward_only_output=fo, window=24, context=6, layers=[-1, 1],
                                                 max_tokens_per_class=3000, progress=False, l2=1e-6))
    assert [r["layer"] for r in rep["sweep"]["bidirectional"]] == [-1, 1]
    emb = rep["sweep"]["bidirectional"][0]
    assert emb["auroc"] > 0.999 and emb["balanced_f1"] > 0.99
    cfg = read_config(out)
    assert cfg["features"] == "bidirectional" and cfg["window"] == 24 and cfg["context"] == 6
    assert cfg["forward_lm"]["source"].startswith(fwd) and cfg["reversed_lm"]["source"].startswith(rev)
    assert read_config(fo)["features"] == "forward"
    assert 0.1 < cfg["base_rate"] < 0.2  # 10 of 61 content ids, eods unlabeled
    assert "chosen: bidirectional" in format_sweep(rep)
    # the teacher labels are recorded (the sidecar header's labeler, as annotate stores its describe())
    assert cfg["teacher"] == rep["teacher"] == {"name": "forget", "threshold": 0.5, "labeler": "planted ids < 10"}
    assert read_config(fo)["teacher"] == cfg["teacher"]

    ev = evaluate_classifiers(EvalClassifierConfig(classifier=[out, fo], data=[held], sidecar_baseline=["forget",
                                                   "half"], novel_from="half", output=str(tmp / "ev")))
    s = ev["scorers"]
    assert set(s) == {"cls", "cls_fwd", "sidecar:forget", "sidecar:half"}
    assert s["sidecar:forget"]["auroc"] == 1.0 and s["sidecar:forget"]["natural"]["f1"] == 1.0
    # the teacher never finds its gaps (at its natural F1-optimal threshold 1.0; with balanced weights "flag
    # everything" ties a half-recall binary scorer at F1 2/3, so that threshold can be 0)
    assert s["sidecar:half"]["natural"]["threshold"] == 1.0
    assert s["sidecar:half"]["novel"]["recall_at_natural_threshold"] == 0.0
    assert s["cls"]["auroc"] > 0.999 and s["cls"]["novel"]["recall_at_balanced_threshold"] > 0.99
    tokens = np.concatenate([np.asarray(x) for x in [np.fromfile(held + ".bin", np.uint16)]])
    assert ev["tokens"] == tokens.size and ev["positives"] == int((tokens < 10).sum())
    assert os.path.getsize(tmp / "ev" / "pr_natural.png") > 1000 and os.path.getsize(tmp / "ev" / "pr_balanced.png")
    with open(tmp / "ev" / "report.json") as f:
        assert json.load(f)["scorers"]["cls"]["auroc"] == s["cls"]["auroc"]
    assert "calibration of cls" in format_report(ev)


def test_teacher_labels_from_the_sidecar_headers(tmp_path):
    a, b = _data(tmp_path / "a", 3, 0), _data(tmp_path / "b", 3, 1)
    assert teacher_labels([a, b], "half", 0.25) == {"name": "half", "threshold": 0.25, "labeler": "planted ids < 5"}
    ds = write_dataset(str(tmp_path / "c"), [np.array([1, 2, EOD])], dtype=np.uint16)
    write_token_scores(ds, np.zeros(3, np.uint8), {"labeler": {"labeler": "blocklist", "terms_split": "1/2"}})
    mixed = teacher_labels([a, ds.path_prefix], "forget", 0.5)
    assert mixed["labeler"] == "mixed" and mixed["per_prefix"] == {
        a: "planted ids < 10", ds.path_prefix: {"labeler": "blocklist", "terms_split": "1/2"}}


@pytest.mark.slow
def test_the_reversed_lm_must_be_reversed_and_cli_errors(setup, capsys):
    tmp, train, _, fwd, _ = setup
    with pytest.raises(ValueError, match="not trained with --reverse-documents"):
        train_classifier(TrainClassifierConfig(forward_lm=fwd, reversed_lm=fwd, train_data=[train],
                                               output=str(tmp / "bad"), progress=False))
    assert train_main(["--forward-lm", fwd, "--train-data", train]) == 2
    assert "--output DIR is required" in capsys.readouterr().err
    assert train_main(["--forward-lm", fwd, "--train-data", train, "--output", str(tmp / "fo2"), "--layers", "5"]) == 2
    assert "--layers [5]" in capsys.readouterr().err
