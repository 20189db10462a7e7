"""The classifier labeler (labeling/classifier/labeler.py): scores, calibration, cost accounting, checks."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from megatron_tf.labeling.classifier.artifact import load_classifier
from megatron_tf.labeling.classifier.cost import lm_flops, paper_arithmetic
from megatron_tf.labeling.classifier.features import BiLM
from megatron_tf.labeling.classifier.labeler import ClassifierLabeler
from megatron_tf.labeling.classifier.probe import prior_shift
from megatron_tf.model.config import ModelConfig
from megatron_tf.model.flops import model_flops_per_token
from megatron_tf.tokenizer.tokenizer import NullTokenizer
from tests.labeling.classifier.helpers import random_docs, tiny_artifact, tokenizer


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("cls") / "cls", layer=1, window=16, context=5)


def test_scores_are_the_probe_on_the_bilm_features(artifact):
    docs = random_docs(np.random.default_rng(1), 20, max_len=45)
    lab = ClassifierLabeler(artifact, device="cpu", batch_tokens=64, group_tokens=50)
    got = lab.score_documents(docs)
    assert [len(g) for g in got] == [len(d) for d in docs] and all(g.dtype == np.float32 for g in got)
    cl = load_classifier(artifact)
    bilm = BiLM(cl.forward_model, cl.reversed_model, 61, window=16, context=5, batch_tokens=64)
    with torch.no_grad():
        want = torch.sigmoid(cl.probe(bilm.features(docs, 1))).numpy()
    want[np.concatenate(docs) == 61] = 0.0  # <|endoftext|> is never forget
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-6)
    flat = np.concatenate(got)
    assert flat.min() < 0.3 and flat.max() > 0.7  # the random probe gives a spread of scores
    # document groups of any size give the same scores
    big = ClassifierLabeler(artifact, device="cpu", batch_tokens=64, group_tokens=10**6).score_documents(docs)
    np.testing.assert_allclose(np.concatenate(big), flat, rtol=1e-5, atol=1e-6)


def test_special_tokens_score_zero_even_when_the_probe_flags_everything(artifact):
    """Issue 14 item 15: the classifier scored the trailing <|endoftext|> like any token."""
    docs = random_docs(np.random.default_rng(2), 8, max_len=30)
    docs[0] = np.array([5, 62, 7, 63, 61], dtype=np.int64)  # hidden and pad inside a document, eod at its end
    lab = ClassifierLabeler(artifact, device="cpu", batch_tokens=64)
    lab.check_tokenizer(tokenizer())  # adds <|hidden|> 62 and <|pad|> 63 to the artifact's eod 61
    _ = lab.bilm  # loads the artifact
    with torch.no_grad():
        for m in lab._loaded.probe.head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
                m.bias.fill_(30.0)  # sigmoid(30) = 1 - 9e-14: a probe that flags every token
    flat, ids = np.concatenate(lab.score_documents(docs)), np.concatenate(docs)
    special = np.isin(ids, [61, 62, 63])
    assert special.sum() >= 8 and (flat[special] == 0).all() and (flat[~special] == 1).all()


def test_natural_calibration_shifts_the_logit(artifact):
    docs = random_docs(np.random.default_rng(2), 6)
    b = np.concatenate(ClassifierLabeler(artifact, device="cpu").score_documents(docs)).astype(np.float64)
    n = np.concatenate(ClassifierLabeler(artifact, device="cpu", calibration="natural").score_documents(docs))
    eod = np.concatenate(docs) == 61  # 0 under both calibrations (special token)
    assert (b[eod] == 0).all() and (n[eod] == 0).all()
    logit = np.log(b[~eod] / (1 - b[~eod]))
    np.testing.assert_allclose(n[~eod], 1 / (1 + np.exp(-(logit + prior_shift(0.1)))), rtol=1e-4, atol=1e-6)


def test_describe_pickle_and_checks(artifact):
    lab = ClassifierLabeler(artifact, device="cpu")
    lab.score_documents([np.array([1, 2, 61])])
    assert lab._bilm is not None
    clone = pickle.loads(pickle.dumps(lab))
    assert clone._bilm is None and clone._loaded is None  # workers load their own copy
    d = lab.describe()
    assert d["labeler"] == "classifier" and d["layer"] == 1 and d["dtype"] == "float32"
    assert len(d["config_sha256"]) == 64
    lab.check_tokenizer(tokenizer())
    with pytest.raises(ValueError, match="tokenizer fingerprint"):
        lab.check_tokenizer(NullTokenizer(80))
    with pytest.raises(ValueError, match="needs a GPU"):
        ClassifierLabeler(artifact, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="window"):
        ClassifierLabeler(artifact, device="cpu", batch_tokens=8)


def test_cost_accounting_by_hand(artifact):
    lab = ClassifierLabeler(artifact, device="cpu")
    acc = lab.cost(np.array([10, 40, 0]))
    # m = 11: one window of 11; m = 41 with W 16, M 5: windows [0,16) [11,27) [22,38) [33,41): 56 positions,
    # squares 3 * 256 + 8^2; per LM, blocks 0..1: 2 * (dense * 67 + 2 nq d * 953)
    dense = 2 * 32 * (4 + 8) * 8 + 2 * 4 * 8 * 32 + 6 * 32 * 64  # qkv, proj, swiglu (ffn 64)
    per_lm = 2 * (dense * 67 + 2 * 4 * 8 * (121 + 3 * 256 + 64))
    assert acc["positions_per_lm"] == 67 and acc["tokens"] == 50
    assert acc["flops"] == pytest.approx(2 * per_lm + 2 * 64 * 50)
    assert acc["read_overhead"] == pytest.approx(67 / 50)


def test_lm_flops_match_the_model_flops_formula():
    """One window of s positions through blocks 0..l equals model_flops_per_token (forward, causal) of an (l+1)-block
    model times s, without the output layer."""
    cfg = ModelConfig(num_layers=6, hidden_size=64, num_attention_heads=8, group_query_attention=True,
                      num_query_groups=2, vocab_size=300, activation="relu2")
    import dataclasses

    for layer, s in ((0, 7), (3, 64), (5, 33)):
        ref_cfg = dataclasses.replace(cfg, num_layers=layer + 1)
        per_tok = model_flops_per_token(ref_cfg, s, causal_attention=True, training=False)
        per_tok -= 2 * cfg.hidden_size * cfg.padded_vocab_size()
        assert lm_flops(cfg, layer, s, s * s) == pytest.approx(per_tok * s)


def test_paper_arithmetic():
    p = paper_arithmetic()
    assert p["annotation_flops_per_token"] == pytest.approx(448e6)
    assert p["pretraining_flops_per_token"] == pytest.approx(10.8e9)
    assert p["ratio"] == pytest.approx(448 / 10800)
    assert math.isclose(p["ratio"], 0.04148, rel_tol=1e-3)
