"""Windowed held-out loss: every token scored once with the documented context, against explicit float64
single-sequence forwards; token-level selection; labels from sidecars, a blocklist labeler, JSONL vs indexed."""

import math

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import write_token_scores
from megatron_tf.evaluation.domain_loss import evaluate_documents, plan_windows
from megatron_tf.evaluation.text_sets import Document, TextSetSpec, iter_set_documents, open_text_set
from megatron_tf.labeling.blocklist import BlocklistLabeler

from .helpers import next_token_logprob, null_tokenizer, sequence_logprobs, tiny_model, write_jsonl

V = 60
TOK = null_tokenizer(V)  # eod 57, hidden 58, pad 59
EOD, PAD = TOK.eod, TOK.pad


@pytest.mark.parametrize("n,L,S", [(1, 4, 2), (4, 4, 4), (5, 4, 4), (10, 4, 2), (23, 5, 5), (23, 5, 1), (17, 8, 3),
                                   (9, 16, 8), (40, 7, 6)])
def test_plan_windows_scores_every_token_once(n, L, S):
    seen = np.zeros(n + 1, dtype=int)
    for s, e, k in plan_windows(n, L, S):
        assert 0 <= s and e - s <= L and e <= n and 0 <= k < e - s
        for j in range(s + 1 + k, e + 1):  # scored targets t_j, context x[s:j]
            seen[j] += 1
            ctx = j - s
            assert ctx == j if j <= L else ctx >= L - S + 1
    assert seen[0] == 0 and (seen[1:] == 1).all()


def test_plan_windows_example_and_errors():
    # the module docstring's example: n = 10, L = 4, S = 2
    assert plan_windows(10, 4, 2) == [(0, 4, 0), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert plan_windows(0, 4) == []
    with pytest.raises(ValueError, match="stride"):
        plan_windows(5, 4, 5)


def _reference_context_start(j, n, L, S):
    """Window start of target t_j by the documented rule, closed forms for S = 1 and S = L."""
    if S == 1:
        return max(0, j - L)
    assert S == L
    c = L * ((j - 1) // L)
    if c == 0:
        return 0
    return c if c + L <= n else n - L


def _docs(rng, lengths):
    return [rng.integers(0, V - 3, size=n).astype(np.int64) for n in lengths]


def test_single_window_equals_one_forward():
    model = tiny_model(V)
    doc = np.array([5, 17, 3, 3, 40, 8, 21], dtype=np.int64)
    got = evaluate_documents(model, [Document(doc)], seq_length=16, start_id=EOD, pad_id=PAD)
    ref = sequence_logprobs(model, [EOD, *doc.tolist()])
    assert got["tokens"] == len(doc) == len(ref)
    assert got["nats_per_token"] == pytest.approx(-np.mean(ref), rel=1e-12)
    assert got["perplexity"] == pytest.approx(math.exp(-np.mean(ref)), rel=1e-12)


@pytest.mark.parametrize("stride_is_L", [False, True])
def test_long_documents_every_token_once_with_documented_context(stride_is_L):
    model = tiny_model(V)
    L = 5
    S = L if stride_is_L else 1
    rng = np.random.default_rng(0)
    docs = _docs(rng, [23, 3, 11])
    flags = [rng.random(len(d)) < 0.3 for d in docs]
    # reference: each target with its own unpadded forward over exactly its documented context
    per_doc = []
    for d in docs:
        x = [EOD, *d.tolist()]
        per_doc.append([-next_token_logprob(model, x[_reference_context_start(j, len(d), L, S):j], x[j])
                        for j in range(1, len(x))])
    for batch_size in (1, 4):  # 4 mixes window lengths: right padding must not change anything
        got = evaluate_documents(model, [Document(d, f) for d, f in zip(docs, flags)], seq_length=L, stride=S,
                                 start_id=EOD, pad_id=PAD, batch_size=batch_size)
        allnll = np.concatenate(per_doc)
        allflag = np.concatenate(flags)
        assert got["tokens"] == sum(len(d) for d in docs) and got["documents"] == 3
        assert got["nats_per_token"] == pytest.approx(allnll.mean(), rel=1e-12)
        assert got["forget_tokens"]["tokens"] == allflag.sum()
        assert got["forget_tokens"]["nats_per_token"] == pytest.approx(allnll[allflag].mean(), rel=1e-12)
        assert got["unlabeled_tokens"]["nats_per_token"] == pytest.approx(allnll[~allflag].mean(), rel=1e-12)
        # document-clustered standard error of the ratio estimate
        s = np.array([sum(p) for p in per_doc])
        c = np.array([len(p) for p in per_doc], dtype=float)
        r = s.sum() / c.sum()
        se = math.sqrt(3 / 2 * ((s - r * c) ** 2).sum()) / c.sum()
        assert got["nats_per_token_stderr"] == pytest.approx(se, rel=1e-9)


def test_default_stride_matches_half_window_rule():
    model = tiny_model(V)
    doc = np.arange(1, 14, dtype=np.int64)
    L = 6
    x = [EOD, *doc.tolist()]
    ref = []
    for s, e, k in plan_windows(len(doc), L, L // 2):
        for j in range(s + 1 + k, e + 1):
            ref.append(-next_token_logprob(model, x[s:j], x[j]))
    got = evaluate_documents(model, [Document(doc)], seq_length=L, start_id=EOD, pad_id=PAD)
    assert len(ref) == len(doc)
    assert got["nats_per_token"] == pytest.approx(np.mean(ref), rel=1e-12)


def test_jsonl_blocklist_equals_indexed_sidecar(tmp_path):
    """The same documents as JSONL (+ eod, labels from a blocklist on the fly) and as an indexed dataset (labels from
    a token-score sidecar) give identical metrics; the flags are the tokens the term names; bits per byte."""
    rng = np.random.default_rng(1)
    docs = _docs(rng, [9, 14, 4])
    docs[0][2] = docs[1][5] = docs[1][6] = 7
    n7 = sum(int((d == 7).sum()) for d in docs)
    write_jsonl(str(tmp_path / "set.jsonl"), [{"text": " ".join(map(str, d))} for d in docs])
    terms = tmp_path / "terms.txt"
    terms.write_text("# test\n7\n")
    labeler = BlocklistLabeler.from_file(str(terms), TOK)
    prefix = str(tmp_path / "set_text_document")
    ds = write_dataset(prefix, [[*d.tolist(), EOD] for d in docs], dtype=np.uint16)
    toks = np.concatenate([[*d.tolist(), EOD] for d in docs])
    q = np.where(toks == 7, 200, 100).astype(np.uint8)  # 200/255 >= 0.5 > 100/255
    write_token_scores(ds, q, {"labeler": "test"})

    model = tiny_model(V)
    results = {}
    for name, path, kw in (("jsonl", str(tmp_path / "set.jsonl"), dict(labeler=labeler)),
                           ("indexed", prefix, dict(threshold=0.5))):
        sources = open_text_set(TextSetSpec("forget", "forget", [path]), TOK, **kw)
        assert sources[0].labels["source"] == ("labeler" if name == "jsonl" else "sidecar")
        listed = list(iter_set_documents(sources))
        assert [d.tokens.tolist() for d in listed] == [[*d.tolist(), EOD] for d in docs]
        assert sum(int(d.forget.sum()) for d in listed) == n7
        results[name] = evaluate_documents(model, listed, seq_length=8, start_id=EOD, pad_id=PAD, batch_size=3)
    a, b = results["jsonl"], results["indexed"]
    assert a["forget_tokens"]["tokens"] == n7
    for key in ("tokens", "bytes", "nats_per_token", "bits_per_byte"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert a["forget_tokens"] == pytest.approx(b["forget_tokens"])
    nbytes = sum(len(f"{t} ") for d in docs for t in d)  # NullTokenizer: id i stands for "i "; eod for nothing
    assert a["bytes"] == nbytes
    assert a["bits_per_byte"] == pytest.approx(a["nats_per_token"] * a["tokens"] / (math.log(2) * nbytes))
    # limit: the first documents only
    sources = open_text_set(TextSetSpec("forget", "forget", [prefix]), TOK)
    assert [len(d.tokens) for d in iter_set_documents(sources, limit=2)] == [10, 15]


def test_sidecar_threshold_and_mixed_labels(tmp_path):
    docs = [[1, 2, 3, EOD], [4, 5, EOD]]
    prefix = str(tmp_path / "p")
    ds = write_dataset(prefix, docs, dtype=np.uint16)
    write_token_scores(ds, np.array([0, 140, 255, 0, 127, 0, 0], dtype=np.uint8), {})  # t=0.5: q >= 128
    for t, expect in ((0.5, [0, 1, 1, 0, 0, 0, 0]), (0.6, [0, 0, 1, 0, 0, 0, 0]), (None, [0, 1, 1, 0, 0, 0, 0])):
        got = np.concatenate([d.forget for d in iter_set_documents(open_text_set(
            TextSetSpec("f", "forget", [prefix]), TOK, threshold=t))])
        assert got.astype(int).tolist() == expect, t
    write_jsonl(str(tmp_path / "plain.jsonl"), [{"text": "1 2"}])
    with pytest.raises(ValueError, match="plain.jsonl"):
        open_text_set(TextSetSpec("f", "forget", [prefix, str(tmp_path / "plain.jsonl")]), TOK)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        open_text_set(TextSetSpec("f", "forget", [str(tmp_path / "nothing_here")]), TOK)
