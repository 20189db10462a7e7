"""Token filters: every position of every sample against a reference built from the raw documents."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings

import numpy as np
import pytest

from megatron_tf.data.builder import DatasetMetaError, build_gpt_datasets, meta_path
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from megatron_tf.data.filters import SampleFilter, open_forget_flags, uniform_hash
from megatron_tf.data.sidecar import KIND_TOKEN_MASK, KIND_TOKEN_SCORES, SidecarError
from megatron_tf.tokenizer.tokenizer import TokenizerError
from tests.log_utils import captured_log

from .gpt_synth import EOD, HIDDEN, PAD, forget_pattern, make_prefix, random_docs, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
S = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filters")
    rng = np.random.default_rng(11)
    docs = random_docs(rng, 40, max_len=50)
    q = forget_pattern(rng, sum(len(d) for d in docs))
    prefix, ds = make_prefix(tmp, "d", docs, q, doc_scores=True)
    return tmp, prefix, docs, q


def build(prefix, tmp, fcfg, sizes=(200, None, None), gbs=None, **kw):
    cfg = GPTDatasetConfig(data_path=[prefix], split=kw.pop("split", "1,0,0"), seq_length=S, seed=7,
                           data_cache_path=str(tmp / "cache"), **kw)
    return build_gpt_datasets(cfg, fcfg, tokenizer(), list(sizes), global_batch_size=gbs)


def reference(docs, q, qt, ds, i):
    """Stream tokens and forget flags of sample i, position by position from the raw documents."""
    starts = np.cumsum([0] + [len(d) for d in docs])
    toks, flags = [], []
    for d in ds.document_index:
        for o, t in enumerate(docs[d]):
            toks.append(int(t))
            flags.append(bool(q[starts[d] + o] >= qt) and int(t) not in (EOD, HIDDEN, PAD))  # specials: never forget
    j = int(ds.shuffle_index[i])
    return toks[j * S : j * S + S + 1], flags[j * S : j * S + S + 1]


def expected(mode, w, f):
    out = {"tokens": [], "labels": [], "loss_mask": [], "forget": [], "forget_labels": []}
    for k in range(S):
        inp, tgt = w[k], w[k + 1]
        if mode == "remove":
            inp = HIDDEN if f[k] else inp
            tgt = HIDDEN if f[k + 1] else tgt
        out["tokens"].append(inp)
        out["labels"].append(tgt)
        out["loss_mask"].append(0.0 if (mode in ("mask", "remove") and f[k + 1]) else 1.0)
        out["forget"].append(f[k])
        out["forget_labels"].append(f[k + 1])
    return out


def check_all_positions(ds, docs, q, qt, mode):
    assert len(ds) >= 200
    for i in range(len(ds)):
        s = ds.get(i, None)
        w, f = reference(docs, q, qt, ds, i)
        exp = expected(mode, w, f)
        assert s["tokens"].dtype == np.int64 and s["labels"].dtype == np.int64
        assert s["loss_mask"].dtype == np.float32 and s["forget"].dtype == bool
        for k, v in exp.items():
            assert s[k].tolist() == v, (mode, i, k)


@pytest.mark.parametrize("mode", ["none", "mask", "remove"])
def test_token_modes_every_position(corpus, mode):
    tmp, prefix, docs, q = corpus
    train = build(prefix, tmp, FilterConfig(token_filter=mode, forget_threshold=0.5)).train
    check_all_positions(train, docs, q, 128, mode)  # ceil(255 * 0.5) = 128


def test_mask_is_target_keyed_not_input_keyed(corpus):
    """The first token of a forget span is a forget TARGET: its prediction must not be trained."""
    tmp, prefix, docs, q = corpus
    train = build(prefix, tmp, FilterConfig(token_filter="mask", forget_threshold=0.5)).train
    seen = 0
    for i in range(len(train)):
        s = train.get(i, None)
        starts = np.flatnonzero(~s["forget"] & s["forget_labels"])  # input clean, target begins a forget span
        assert (s["loss_mask"][starts] == 0).all()
        seen += len(starts)
    assert seen > 50


def test_document_mode_drops_documents(corpus):
    tmp, prefix, docs, q = corpus
    thr = 0.3
    res = build(prefix, tmp, FilterConfig(token_filter="document", document_threshold=thr, forget_threshold=0.5))
    train = res.train
    mean = np.array([q[a:b].mean() / 255.0 for a, b in zip(*_bounds(docs))])
    kept = np.flatnonzero(mean.astype(np.float32) < np.float32(thr))
    assert 0 < len(kept) < len(docs)
    np.testing.assert_array_equal(np.unique(np.asarray(train.document_index)), kept)
    check_all_positions(train, docs, q, 128, "none")  # loss everywhere, flags still reported
    st = res.stats["train"]
    assert st["documents_filtered"] == len(docs) - len(kept)
    assert st["tokens_filtered"] == sum(len(docs[d]) for d in range(len(docs)) if d not in set(kept))


def _bounds(docs):
    starts = np.cumsum([0] + [len(d) for d in docs])
    return starts[:-1], starts[1:]


def test_document_mode_computes_missing_frac_column(corpus):
    tmp, prefix, docs, q = corpus
    fc = FilterConfig(token_filter="document", document_threshold=0.25, document_score_column="frac_ge_0.3")
    train = build(prefix, tmp, fc).train
    qt = 77  # ceil(255 * 0.3) = 76.5 -> 77
    frac = np.array([(q[a:b] >= qt).mean() for a, b in zip(*_bounds(docs))])
    kept = np.flatnonzero(frac.astype(np.float32) < np.float32(0.25))
    assert 0 < len(kept) < len(docs)
    np.testing.assert_array_equal(np.unique(np.asarray(train.document_index)), kept)
    cached = [f for f in os.listdir(tmp / "cache") if "-docscore-" in f]
    assert len(cached) == 2  # scores + description: computed once, reused by later builds


def test_bit_mask_sidecar_preferred(tmp_path):
    rng = np.random.default_rng(3)
    docs = random_docs(rng, 30)
    n = sum(len(d) for d in docs)
    q = forget_pattern(rng, n)
    prefix, ds = make_prefix(tmp_path, "d", docs, q, mask_threshold=0.5)
    from megatron_tf.data.sidecar import read_header, sidecar_path

    mask_meta = read_header(sidecar_path(prefix, KIND_TOKEN_MASK)).metadata
    assert mask_meta["token_scores_xxh3_64"] == read_header(sidecar_path(prefix, KIND_TOKEN_SCORES)).checksum
    # a bound mask at the requested threshold, or with none requested, is read (the log names it)
    for fc in (FilterConfig(token_filter="mask", forget_threshold=0.5), FilterConfig(token_filter="remove")):
        flags = open_forget_flags(ds, ds.fingerprint(), "forget", fc.forget_threshold, True)
        assert flags.is_mask and flags.path == sidecar_path(prefix, KIND_TOKEN_MASK)
        train = build(prefix, tmp_path, fc).train
        check_all_positions(train, docs, q, 128, fc.token_filter)
    # another threshold than the mask's -> token scores
    train = build(prefix, tmp_path, FilterConfig(token_filter="mask", forget_threshold=0.6)).train
    check_all_positions(train, docs, q, 153, "mask")
    # a mask alone (no token scores beside it) is read
    os.remove(sidecar_path(prefix, KIND_TOKEN_SCORES))
    train = build(prefix, tmp_path, FilterConfig(token_filter="remove")).train
    check_all_positions(train, docs, q, 128, "remove")


def test_stale_bit_mask_is_ignored(tmp_path):
    """Issue 14 item 1: annotate with a mask, re-annotate (other labels) without one: the old mask must not win."""
    from megatron_tf.data.sidecar import sidecar_path, write_token_mask, write_token_scores

    rng = np.random.default_rng(4)
    docs = random_docs(rng, 30)
    n = sum(len(d) for d in docs)
    old = forget_pattern(rng, n)
    prefix, ds = make_prefix(tmp_path, "d", docs, old, mask_threshold=0.5)
    new = np.where(rng.random(n) < 0.1, 255, 0).astype(np.uint8)  # the re-annotation: other labels
    write_token_scores(ds, new, {"labeler": "new"})
    mask_path, scores_path = sidecar_path(prefix, KIND_TOKEN_MASK), sidecar_path(prefix, KIND_TOKEN_SCORES)
    with captured_log(level=logging.WARNING) as msgs:
        train = build(prefix, tmp_path, FilterConfig(token_filter="mask", forget_threshold=0.5)).train
    check_all_positions(train, docs, new, 128, "mask")  # before the fix: the old mask's flags
    assert any("IGNORING STALE BIT MASK" in m and mask_path in m and scores_path in m for m in msgs), msgs
    with pytest.raises(SidecarError, match=rf"stale bit mask {re.escape(mask_path)}: .*Pass --forget-threshold"):
        build(prefix, tmp_path, FilterConfig(token_filter="remove"))
    # an unbound mask (flags that are not the token scores') is ignored as well
    write_token_mask(ds, rng.random(n) < 0.3, 0.5, {"labeler": "test"})
    train = build(prefix, tmp_path, FilterConfig(token_filter="remove", forget_threshold=0.5)).train
    check_all_positions(train, docs, new, 128, "remove")


def test_the_loader_logs_which_sidecar_files_it_reads(corpus):
    tmp, prefix, docs, q = corpus
    with captured_log() as msgs:
        build(prefix, tmp, FilterConfig(token_filter="mask", forget_threshold=0.5))
        build(prefix, tmp, FilterConfig(token_filter="document", document_threshold=0.5))
    assert f"{prefix}: forget flags from token scores {prefix}.forget.tokscores at threshold 0.5" in msgs, msgs
    assert f"{prefix}: document score mean_score from {prefix}.forget.docscores" in msgs, msgs


def test_eod_mask_loss_and_reset_position_ids(corpus):
    tmp, prefix, docs, q = corpus
    res = build(prefix, tmp, FilterConfig(token_filter="mask", forget_threshold=0.5), eod_mask_loss=True,
                reset_position_ids=True)
    train = res.train
    n_eod = 0
    for i in range(len(train)):
        s = train.get(i, None)
        w, f = reference(docs, q, 128, train, i)
        pos = 0
        for k in range(S):
            exp = 0.0 if (w[k] == EOD or f[k + 1]) else 1.0  # Megatron: input token is <|endoftext|>
            assert s["loss_mask"][k] == exp
            assert s["position_ids"][k] == pos
            pos = 0 if w[k] == EOD else pos + 1
            n_eod += w[k] == EOD
    assert n_eod > 20


def test_label_noise_deterministic_and_rate(corpus):
    tmp, prefix, docs, q = corpus
    p = 0.1
    train = build(prefix, tmp, FilterConfig(token_filter="mask", forget_threshold=0.5, label_noise=p)).train
    clean = build(prefix, tmp, FilterConfig(token_filter="mask", forget_threshold=0.5)).train
    flips, total = 0, 0
    for i in range(len(train)):
        a, b = train[i], train[i]
        np.testing.assert_array_equal(a["forget"], b["forget"])  # same consumed index -> same noise
        c = clean[i]
        flipped = np.append(a["forget"], a["forget_labels"][-1]) ^ np.append(c["forget"], c["forget_labels"][-1])
        special = np.append(a["tokens"], a["labels"][-1]) == EOD  # never forget, so never flipped
        assert not flipped[special].any()
        flips += int(flipped[~special].sum())
        total += int((~special).sum())
        np.testing.assert_array_equal(a["loss_mask"], np.where(a["forget_labels"], 0.0, 1.0).astype(np.float32))
    sd = np.sqrt(total * p * (1 - p))
    assert abs(flips - p * total) < 5 * sd, (flips, total)
    # consumed index (not the dataset index) seeds it; validation (consumed index None) is clean
    assert not np.array_equal(train.get(0, 0)["forget"], train.get(0, 1)["forget"]) or \
        not np.array_equal(train.get(0, 0)["forget"], train.get(0, 2)["forget"])
    np.testing.assert_array_equal(train.get(5, None)["forget"], clean.get(5, None)["forget"])


def test_uniform_hash_is_uniform_and_stable():
    u = uniform_hash(1234, 99, 100000)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    np.testing.assert_array_equal(u, uniform_hash(1234, 99, 100000))
    assert not np.array_equal(u[:100], uniform_hash(1234, 100, 100))
    assert not np.array_equal(u[:100], uniform_hash(1235, 99, 100))


@pytest.mark.parametrize("mode", ["mask", "remove"])
def test_filter_start_step(corpus, mode):
    tmp, prefix, docs, q = corpus
    gbs, step = 4, 3
    train = build(prefix, tmp, FilterConfig(token_filter=mode, forget_threshold=0.5, filter_start_step=step),
                  gbs=gbs).train
    for i in range(len(train)):
        s = train[i]
        w, f = reference(docs, q, 128, train, i)
        exp = expected(mode if i >= step * gbs else "none", w, f)
        for k, v in exp.items():
            assert s[k].tolist() == v, (i, k)


def test_filter_start_step_document_mode(corpus):
    tmp, prefix, docs, q = corpus
    fc = FilterConfig(token_filter="document", document_threshold=0.3, filter_start_step=2)
    train = build(prefix, tmp, fc, gbs=5).train
    unfiltered = build(prefix, tmp, FilterConfig()).train
    filtered = build(prefix, tmp, FilterConfig(token_filter="document", document_threshold=0.3)).train
    for i in range(30):
        ref = unfiltered[i] if i < 10 else filtered[i]
        np.testing.assert_array_equal(train[i]["tokens"], ref["tokens"])
    with pytest.raises(ValueError, match="global batch size"):
        build(prefix, tmp, fc)


def test_stats_fractions(corpus):
    tmp, prefix, docs, q = corpus
    res = build(prefix, tmp, FilterConfig(token_filter="mask", forget_threshold=0.5), sizes=(100, 10, 10),
                split="80,10,10")
    n = len(docs)
    starts = np.cumsum([0] + [len(d) for d in docs])
    for name, (a, b) in zip(("train", "valid", "test"), ((0, 32), (32, 36), (36, 40))):
        assert round(0.8 * n) == 32
        st = res.stats[name]
        assert st["documents"] == b - a and st["tokens"] == starts[b] - starts[a]
        forget = int((q[starts[a] : starts[b]] >= 128).sum())
        assert st["tokens_filtered"] == forget
        assert st["tokens_filtered_fraction"] == pytest.approx(forget / st["tokens"])
        assert st["documents_filtered_fraction"] == 0


def test_remove_keeps_labels_shifted_tokens():
    f = SampleFilter("remove", hidden_id=HIDDEN, eod_id=EOD)
    text = np.arange(10, dtype=np.int64)
    flags = np.zeros(10, bool)
    flags[[0, 4, 9]] = True
    s = f.make_sample(text, flags, None)
    assert s["tokens"].tolist() == [HIDDEN, 1, 2, 3, HIDDEN, 5, 6, 7, 8]
    assert s["labels"].tolist() == [1, 2, 3, HIDDEN, 5, 6, 7, 8, HIDDEN]
    assert s["loss_mask"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 0]


@pytest.mark.parametrize("mode", ["mask", "remove"])
def test_special_tokens_are_never_hidden_or_masked_for_being_forget(mode):
    """Issue 14 item 15: a probe that flags every token, and --label-noise 1 that flips every flag."""
    text = np.array([3, EOD, 4, HIDDEN, 5, PAD, 6, EOD, 7], dtype=np.int64)
    special = np.isin(text, [EOD, HIDDEN, PAD])
    want_tokens = np.where(special, text, HIDDEN)[:-1].tolist()  # every non-special input hidden in remove mode
    for flags, noise in ((np.ones(9, bool), 0.0), (np.zeros(9, bool), 1.0)):
        f = SampleFilter(mode, hidden_id=HIDDEN, eod_id=EOD, pad_id=PAD, label_noise=noise, seed=1)
        s = f.make_sample(text.copy(), flags, 0)
        assert s["forget"].tolist() == (~special[:-1]).tolist()
        assert s["forget_labels"].tolist() == (~special[1:]).tolist()
        assert s["loss_mask"].tolist() == special[1:].astype(np.float32).tolist()  # only special targets train
        assert s["tokens"].tolist() == (want_tokens if mode == "remove" else text[:-1].tolist())
    # without pad_id (older callers) eod and hidden are still protected
    s = SampleFilter(mode, hidden_id=HIDDEN, eod_id=EOD).make_sample(text.copy(), np.ones(9, bool), None)
    assert s["forget"].tolist() == (~np.isin(text, [EOD, HIDDEN]))[:-1].tolist()


def test_missing_sidecar_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    prefix, _ = make_prefix(tmp_path, "d", random_docs(rng, 10))
    with pytest.raises(FileNotFoundError, match=r"d\.forget\.tokscores"):
        build(prefix, tmp_path, FilterConfig(token_filter="mask", forget_threshold=0.5))
    with pytest.raises(FileNotFoundError, match=r"d\.forget\.docscores"):
        build(prefix, tmp_path, FilterConfig(token_filter="document", document_threshold=0.5))
    # none mode without a sidecar: all flags False
    s = build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None)).train[0]
    assert not s["forget"].any() and (s["loss_mask"] == 1).all()


def test_meta_json_checks(tmp_path):
    rng = np.random.default_rng(0)
    prefix, _ = make_prefix(tmp_path, "d", random_docs(rng, 10))
    tok = tokenizer()
    good = {"tokenizer": {"fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size}, "max_token_id": 100}
    with open(meta_path(prefix), "w") as f:
        json.dump(good, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None))
    for bad, pattern in (
        ({**good, "tokenizer": {"fingerprint": "ab" * 32, "vocab_size": 103}}, "fingerprint " + tok.fingerprint),
        ({**good, "tokenizer": {"vocab_size": 50000}}, "expected 103 .*found 50000"),
        ({**good, "max_token_id": 103}, r"max token id 103 .*\[0, 103\)"),
    ):
        with open(meta_path(prefix), "w") as f:
            json.dump(bad, f)
        with pytest.raises(DatasetMetaError, match=pattern) as e:
            build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None))
        assert meta_path(prefix) in str(e.value)
    with open(meta_path(prefix), "w") as f:  # stale: describes another dataset -> ignored with a warning
        json.dump({**good, "max_token_id": 500, "dataset": {"fingerprint": "cd" * 32}}, f)
    with pytest.warns(UserWarning, match="describes dataset cdcdcd"):
        build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None))
    os.remove(meta_path(prefix))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None))
        build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None))
    assert sum("meta.json not found" in str(x.message) for x in w) == 1


def test_token_ids_outside_the_vocabulary_are_refused_without_meta_json(tmp_path):
    """Issue 14 item 6: a dataset made with a larger vocabulary (no P.meta.json to say so) crashed mid-training with a
    bare IndexError; now the open names the .bin and the first bad token."""
    from megatron_tf.data.indexed_dataset import IndexedDatasetError

    rng = np.random.default_rng(0)
    docs = random_docs(rng, 10)
    docs[4][2] = 250  # uint16 holds it; the NullTokenizer(103) vocabulary does not
    prefix, ds = make_prefix(tmp_path, "d", docs)
    pos = sum(len(d) for d in docs[:4]) + 2
    with pytest.raises(IndexedDatasetError, match=rf"d\.bin: token id 250 at token {pos} \(document 4\) is outside "
                                                  r"the vocabulary \[0, 103\)"):
        build(prefix, tmp_path, FilterConfig(), sizes=(10, None, None))


def test_reserved_ids_checked(tmp_path):
    rng = np.random.default_rng(0)
    prefix, _ = make_prefix(tmp_path, "d", random_docs(rng, 10))

    class Bad:
        vocab_size, eod, hidden, pad, path, type_name, fingerprint = 103, 100, 100, 102, "bad", "Bad", "00"

    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=S)
    with pytest.raises(TokenizerError, match="distinct"):
        build_gpt_datasets(cfg, FilterConfig(), Bad(), [10, None, None])


def test_forget_counts_match_bruteforce(tmp_path):
    """Stats count forget tokens of any global range: bit-mask popcount with partial edge bytes, and scores."""
    from megatron_tf.data.filters import ForgetFlags
    from megatron_tf.data.sidecar import TokenMask, TokenScores

    rng = np.random.default_rng(9)
    docs = random_docs(rng, 20)
    q = forget_pattern(rng, sum(len(d) for d in docs))
    prefix, ds = make_prefix(tmp_path, "d", docs, q, mask_threshold=0.5)
    fp = ds.fingerprint()
    by_mask = ForgetFlags(TokenMask(prefix + ".forget.tokmask", ds, fp), 0.5)
    by_scores = ForgetFlags(TokenScores(prefix + ".forget.tokscores", ds, fp), 0.5)
    flags = q >= 128
    for a in range(0, 20):
        for b in range(a, len(q), 29):
            assert by_mask.count(a, b) == by_scores.count(a, b) == int(flags[a:b].sum()), (a, b)
    starts = np.array([3, 50, 51]), np.array([17, 51, 90])
    np.testing.assert_array_equal(by_mask.gather(*starts), np.concatenate([flags[3:17], flags[50:51], flags[51:90]]))
