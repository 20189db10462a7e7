"""Builder: the document filter removes data from a weighted blend (weights x tokens kept / tokens), the component
table (samples, tokens, epochs), and --document-filter-fraction / --token-filter-fraction (thresholds picked over the
train split), all against hand-computed or numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.data.blending import filtered_weights
from megatron_tf.data.builder import build_gpt_datasets
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from megatron_tf.data.filters import FilterFractionError, pick_document_threshold, pick_token_threshold

from .gpt_synth import EOD, make_prefix, random_docs, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
SEQ = 16


def _fixed_docs(rng, n: int, length: int = 50) -> list[np.ndarray]:
    return [np.append(rng.integers(0, 100, length - 1), EOD) for _ in range(n)]


@pytest.fixture(scope="module")
def half_forget(tmp_path_factory):
    """a: 40 documents of 50 tokens, every odd one wholly forget (document score 1), so a document filter drops
    exactly half of a's 2000 tokens; b: 40 clean documents of 50 tokens."""
    tmp = tmp_path_factory.mktemp("reweight")
    rng = np.random.default_rng(0)
    qa = np.concatenate([np.full(50, 255 if k % 2 else 0, np.uint8) for k in range(40)])
    a, _ = make_prefix(tmp, "a", _fixed_docs(rng, 40), qa, doc_scores=True)
    b, _ = make_prefix(tmp, "b", _fixed_docs(rng, 40), np.zeros(2000, np.uint8), doc_scores=True)
    return tmp, a, b


def _train(tmp, data_path, fcfg, size=3000):
    cfg = GPTDatasetConfig(data_path=data_path, split="1,0,0", seq_length=SEQ, seed=1,
                           data_cache_path=str(tmp / "cache"))
    return build_gpt_datasets(cfg, fcfg, tokenizer(), [size, None, None])


def test_filtered_weights_formula():
    assert filtered_weights([0.5, 0.5], [2000, 2000], [1000, 2000]) == pytest.approx([1 / 3, 2 / 3])
    assert filtered_weights([3, 7], [10, 10], [10, 10]) == [0.3, 0.7]  # nothing removed: the plain normalisation
    with pytest.raises(ValueError, match="outside"):
        filtered_weights([1, 1], [10, 10], [11, 10])


@pytest.mark.parametrize("how", ["threshold", "fraction"])
def test_document_filter_removes_data_from_a_weighted_blend(half_forget, how):
    """50/50 blend, the filter drops half of a's tokens: a gets a third of the samples (0.5 x 1/2 renormalised),
    not half, and the epochs ratio a : b is the unfiltered one (1 : 1 here, both components 2000 tokens)."""
    tmp, a, b = half_forget
    size = 3000
    plain = _train(tmp, ["1", a, "1", b], FilterConfig(), size).stats["train"]["components"]
    fcfg = (FilterConfig(token_filter="document", document_threshold=0.5) if how == "threshold" else
            FilterConfig(token_filter="document", document_filter_fraction=0.25))  # 1000 of the 4000 tokens
    res = _train(tmp, ["1", a, "1", b], fcfg, size)
    rows = res.stats["train"]["components"]
    assert [r["prefix"] for r in rows] == [a, b]
    assert [r["tokens_total"] for r in rows] == [2000, 2000] and [r["tokens_kept"] for r in rows] == [1000, 2000]
    assert [r["weight_given"] for r in rows] == [0.5, 0.5]
    assert [r["weight"] for r in rows] == pytest.approx([1 / 3, 2 / 3])
    assert [r["samples"] for r in rows] == [1000, 2000]  # ceil(3000 / 3), ceil(3000 * 2 / 3)
    assert [r["samples"] for r in plain] == [1500, 1500]
    # epochs = samples x 16 / kept tokens: 1000 x 16 / 1000 = 16 and 2000 x 16 / 2000 = 16 (unfiltered: 12 and 12)
    assert [r["epochs"] for r in rows] == pytest.approx([16.0, 16.0])
    assert [r["epochs"] for r in plain] == pytest.approx([12.0, 12.0])
    # the blend really draws that: count dataset ids over the split's samples
    ids = np.asarray(res.train.dataset_index[:size])
    assert np.bincount(ids).tolist() == [1000, 2000]
    assert res.stats["train"]["tokens_filtered_fraction"] == 0.25
    assert res.stats["train"]["tokens_filtered_fraction_weighted"] == pytest.approx(0.25)  # 0.5 x 0.5 + 0.5 x 0


def test_unequal_blend_keeps_the_epochs_ratio(half_forget):
    """Weights 0.3 / 0.7: unfiltered epochs ratio a/b = (0.3/2000)/(0.7/2000); filtered weight of a
    = 0.3 x 0.5 / (0.15 + 0.7) = 0.17647..., and the epochs ratio is unchanged (up to whole samples)."""
    tmp, a, b = half_forget
    size = 20000
    plain = _train(tmp, ["0.3", a, "0.7", b], FilterConfig(), size).stats["train"]["components"]
    rows = _train(tmp, ["0.3", a, "0.7", b], FilterConfig(token_filter="document", document_threshold=0.5),
                  size).stats["train"]["components"]
    assert rows[0]["weight"] == pytest.approx(0.15 / 0.85)
    assert rows[0]["samples"] == pytest.approx(size * 0.15 / 0.85, abs=1)
    ratio = lambda r: r[0]["epochs"] / r[1]["epochs"]  # noqa: E731
    assert ratio(plain) == pytest.approx(3 / 7, rel=1e-3)
    assert ratio(rows) == pytest.approx(ratio(plain), rel=1e-3)


def test_mask_keeps_the_blend_weights(half_forget):
    """mask/remove drop no token from the stream (only from the loss): weights, samples and epochs unchanged."""
    tmp, a, b = half_forget
    plain = _train(tmp, ["1", a, "1", b], FilterConfig())
    masked = _train(tmp, ["1", a, "1", b], FilterConfig(token_filter="mask", forget_threshold=0.5))
    for key in ("weight", "samples", "tokens_kept", "epochs"):
        assert [r[key] for r in masked.stats["train"]["components"]] == \
               [r[key] for r in plain.stats["train"]["components"]]
    np.testing.assert_array_equal(masked.train.dataset_index, plain.train.dataset_index)
    assert masked.stats["train"]["tokens_filtered_fraction"] == 0.25  # a's forget half, masked


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory):
    """Two prefixes of 1500 documents each, a document-constant random score per document (about 256 distinct
    document scores), and a token-level random score pattern in a third prefix."""
    tmp = tmp_path_factory.mktemp("fraction")
    rng = np.random.default_rng(3)
    out = []
    for name in ("p", "r"):
        docs = random_docs(rng, 1500, 40)
        q = np.concatenate([np.full(len(d), rng.integers(0, 256), np.uint8) for d in docs])
        out.append(make_prefix(tmp, name, docs, q, doc_scores=True)[0])
    docs = random_docs(rng, 1500, 40)
    qt = rng.integers(0, 256, sum(len(d) for d in docs)).astype(np.uint8)
    tok, _ = make_prefix(tmp, "t", docs, qt)
    return tmp, out, docs, tok, qt


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_document_filter_fraction(many_docs, fraction):
    tmp, (p, r), _, _, _ = many_docs
    cfg = GPTDatasetConfig(data_path=["1", p, "3", r], split="90,10,0", seq_length=SEQ, seed=1,
                           data_cache_path=str(tmp / "cache"))
    res = build_gpt_datasets(cfg, FilterConfig(token_filter="document", document_filter_fraction=fraction),
                             tokenizer(), [2000, 100, None])
    st, flt = res.stats["train"], res.stats["filter"]
    assert abs(st["tokens_filtered_fraction"] - fraction) <= 0.02
    assert flt["document_filter_fraction"] == fraction and flt["threshold_picked_by"] == "--document-filter-fraction"
    t = flt["document_threshold"]
    # independent reference: the train split's documents (first 90% of each prefix), mean score >= t dropped
    from megatron_tf.data.indexed_dataset import IndexedDataset
    from megatron_tf.data.sidecar import KIND_DOC_SCORES, DocumentScores, sidecar_path

    dropped = total = 0
    for prefix in (p, r):
        ds = IndexedDataset(prefix)
        n = round(0.9 * len(ds))
        lengths = np.asarray(ds.sequence_lengths[:n], np.int64)
        scores = np.asarray(DocumentScores(sidecar_path(prefix, KIND_DOC_SCORES, "forget"), ds,
                                           ds.fingerprint()).column("mean_score"))[:n]
        dropped += int(lengths[scores >= t].sum())
        total += int(lengths.sum())
    assert st["tokens_filtered"] == dropped and st["tokens"] == total
    assert flt["achieved_fraction"] == pytest.approx(dropped / total)


@pytest.mark.parametrize("fraction", [0.03, 0.1, 0.4])
def test_token_filter_fraction(many_docs, fraction):
    tmp, _, docs, tok, q = many_docs
    cfg = GPTDatasetConfig(data_path=[tok], split="80,20,0", seq_length=SEQ, seed=1,
                           data_cache_path=str(tmp / "cache"))
    res = build_gpt_datasets(cfg, FilterConfig(token_filter="mask", token_filter_fraction=fraction), tokenizer(),
                             [500, 50, None])
    st, flt = res.stats["train"], res.stats["filter"]
    assert abs(st["tokens_filtered_fraction"] - fraction) <= 0.02
    train_tokens = sum(len(d) for d in docs[: round(0.8 * len(docs))])
    qt = int(np.ceil(round(255 * flt["forget_threshold"], 6)))
    assert st["forget_tokens"] == int((q[:train_tokens] >= qt).sum())
    # the closest of the 255 possible thresholds
    best = min(range(1, 256), key=lambda k: (abs((q[:train_tokens] >= k).mean() - fraction), -k))
    assert qt == best


def test_token_filter_fraction_with_binary_scores(tmp_path):
    rng = np.random.default_rng(4)
    docs = random_docs(rng, 300, 40)
    n = sum(len(d) for d in docs)
    q = np.where(rng.random(n) < 0.3, 255, 0).astype(np.uint8)
    prefix, _ = make_prefix(tmp_path, "bin", docs, q)
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=SEQ, seed=1,
                           data_cache_path=str(tmp_path / "cache"))
    share = float((q >= 1).mean())
    with pytest.raises(FilterFractionError, match=r"--token-filter-fraction 0.1: .* 2 distinct value\(s\).*nearest: "
                                                  rf"{share:.4f} at threshold"):
        build_gpt_datasets(cfg, FilterConfig(token_filter="mask", token_filter_fraction=0.1), tokenizer(),
                           [100, None, None])
    near = round(share, 2) + 0.01  # within 0.02 of the only achievable share: accepted, achieved = share
    res = build_gpt_datasets(cfg, FilterConfig(token_filter="remove", token_filter_fraction=near), tokenizer(),
                             [100, None, None])
    assert res.stats["filter"]["achieved_fraction"] == pytest.approx(share)
    assert res.stats["train"]["tokens_filtered_fraction"] == pytest.approx(share)


def test_pickers_against_hand_computed():
    # documents: scores 0.1 (40 tokens), 0.5 (30), 0.9 (20), 0.95 (10); dropped shares at t = each score:
    # 1.0, 0.6, 0.3, 0.1
    scores, lengths = np.array([0.9, 0.1, 0.95, 0.5], np.float32), np.array([20, 40, 10, 30])
    assert pick_document_threshold(scores, lengths, 0.29) == (pytest.approx(0.9), pytest.approx(0.3))
    assert pick_document_threshold(scores, lengths, 0.11) == (pytest.approx(0.95), pytest.approx(0.1))
    with pytest.raises(FilterFractionError, match=r"nearest: 0.3000 at threshold 0.9 or 0.6000 at threshold 0.5"):
        pick_document_threshold(scores, lengths, 0.45)
    h = np.zeros(256, np.int64)
    h[0], h[100], h[200] = 50, 30, 20  # flagged shares: qt <= 100 -> 0.5, 101..200 -> 0.2, > 200 -> 0
    t, got = pick_token_threshold(h, 0.21)
    assert (t, got) == (pytest.approx(200 / 255), pytest.approx(0.2))  # the largest qt with that share


def test_fraction_flags_are_checked():
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=rf"--document-filter-fraction must be in \(0, 1\), got {bad}"):
            FilterConfig(token_filter="document", document_filter_fraction=bad)
        with pytest.raises(ValueError, match=rf"--token-filter-fraction must be in \(0, 1\), got {bad}"):
            FilterConfig(token_filter="mask", token_filter_fraction=bad)
    with pytest.raises(ValueError, match="--document-filter-fraction 0.1 and --document-threshold 0.5 are mutually"):
        FilterConfig(token_filter="document", document_filter_fraction=0.1, document_threshold=0.5)
    with pytest.raises(ValueError, match="--token-filter-fraction 0.1 and --forget-threshold 0.5 are mutually"):
        FilterConfig(token_filter="mask", token_filter_fraction=0.1, forget_threshold=0.5)
    with pytest.raises(ValueError, match="--document-filter-fraction 0.1 needs --token-filter document"):
        FilterConfig(token_filter="mask", document_filter_fraction=0.1)
    with pytest.raises(ValueError, match="--token-filter-fraction 0.1 needs --token-filter mask or remove"):
        FilterConfig(token_filter="none", token_filter_fraction=0.1)
