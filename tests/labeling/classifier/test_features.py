"""biLM features (labeling/classifier/features.py): reversal alignment, causality, windows, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_tf.data.reverse import reverse_document
from megatron_tf.labeling.classifier.features import BiLM, LayerTap
from megatron_tf.labeling.classifier.windows import plan_windows
from tests.labeling.classifier.helpers import random_docs, tiny_lm

EOD = 61


@pytest.fixture(scope="module")
def models():
    return tiny_lm(1), tiny_lm(2)


@pytest.fixture(scope="module")
def docs():
    return random_docs(np.random.default_rng(0), 16, max_len=45)


def _direct(model, u: np.ndarray, layer: int) -> torch.Tensor:
    """Hidden states of one unbatched sequence from a plain forward pass (hook-free reference: embeddings + blocks)."""
    from megatron_tf.model.rope import rope_cos_sin

    with torch.no_grad():
        x = model.embedding(torch.from_numpy(u)[None])
        cos, sin = rope_cos_sin(torch.arange(len(u)), model.config.head_dim, model.config.rotary_base)
        for i in range(layer + 1):
            x = model.decoder.layers[str(i)](x, cos, sin)
        return x[:, 0].float()


def test_reversal_alignment_same_token_in_both_directions(models, docs):
    """At the embedding layer a token's hidden state is its own embedding: both halves of the feature of token t
    must be the embeddings of x_t in the two LMs."""
    f, r = models
    bilm = BiLM(f, r, EOD, window=16, context=5, batch_tokens=64)
    fh, rh = bilm.hidden_states(docs, [-1])[-1]
    ids = torch.from_numpy(np.concatenate(docs))
    assert torch.equal(fh, f.embedding.word_embeddings.weight[ids])
    assert torch.equal(rh, r.embedding.word_embeddings.weight[ids])


def test_recorded_inputs_line_up_with_the_reversed_document(models):
    """A hook on block 0 records what the reversed LM reads: [eod] + reverse_document(doc) (short document, one
    window); and the feature of token t is the reversed LM's output at the position of x_t in that input."""
    f, r = models
    doc = np.array([5, 9, 13, 17, 21, EOD])
    seen = []
    h = r.embedding.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    bilm = BiLM(f, r, EOD, window=16, context=5, batch_tokens=64)
    _, rh = bilm.hidden_states([doc], [1])[1]
    h.remove()
    # GPTEmbedding.forward receives input_ids [b, s]
    assert seen[0].tolist() == [[EOD, 21, 17, 13, 9, 5, EOD]]
    ref = _direct(r, np.array([EOD, 21, 17, 13, 9, 5, EOD]), 1)  # u positions 0..6
    pos_of = {5: 5, 9: 4, 13: 3, 17: 2, 21: 1}  # token value -> u position in the reversed input
    for t, tok in enumerate(doc[:-1].tolist()):
        torch.testing.assert_close(rh[t], ref[pos_of[tok]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rh[5], ref[6], rtol=1e-5, atol=1e-5)  # the eod stays last


def test_causality_forward_sees_left_reversed_sees_right(models):
    """Changing token j changes forward states only at t >= j and reversed states only at t <= j (both include
    t = j itself: the biLM of the paper)."""
    f, r = models
    rng = np.random.default_rng(5)
    doc = np.append(rng.integers(0, EOD, 12), EOD)
    bilm = BiLM(f, r, EOD, window=32, context=8, batch_tokens=64)
    f0, r0 = bilm.hidden_states([doc], [2])[2]
    for j in (0, 4, 11):
        d2 = doc.copy()
        d2[j] = (d2[j] + 7) % EOD
        f1, r1 = bilm.hidden_states([d2], [2])[2]
        fchg = (f1 - f0).abs().amax(1) > 1e-6
        rchg = (r1 - r0).abs().amax(1) > 1e-6
        assert not fchg[:j].any() and fchg[j:].all(), (j, fchg)
        assert not rchg[j + 1 : 12].any() and rchg[: j + 1].all(), (j, rchg)


@pytest.mark.parametrize("layer", [0, 2])
def test_windowed_states_equal_direct_forward_of_each_window(models, layer):
    f, r = models
    rng = np.random.default_rng(9)
    docs = [np.append(rng.integers(0, EOD, 40), EOD), np.append(rng.integers(0, EOD, 7), EOD), rng.integers(0, EOD, 23)]
    W, M = 12, 4
    bilm = BiLM(f, r, EOD, window=W, context=M, batch_tokens=40)
    fh, rh = bilm.hidden_states(docs, [layer])[layer]
    base = 0
    for d in docs:
        for model, seq, got, rev in ((f, d, fh, False), (r, reverse_document(d, EOD), rh, True)):
            u = np.concatenate(([EOD], seq))
            content = len(d) - 1 if d[-1] == EOD else len(d)
            for w in plan_windows(len(u), W, M):
                ref = _direct(model, u[w.start : w.end], layer)
                for p in range(w.score_start, w.score_end):
                    k = p - 1  # index in seq
                    t = (content - 1 - k if k < content else k) if rev else k
                    torch.testing.assert_close(got[base + t], ref[p - w.start], rtol=1e-5, atol=1e-5)
        base += len(d)


def test_batching_and_padding_do_not_change_the_states(models, docs):
    f, r = models
    a = BiLM(f, r, EOD, window=16, context=5, batch_tokens=16).hidden_states(docs, [1])[1]
    b = BiLM(f, r, EOD, window=16, context=5, batch_tokens=1000).hidden_states(docs, [1])[1]
    one = [BiLM(f, r, EOD, window=16, context=5, batch_tokens=16).hidden_states([d], [1])[1] for d in docs]
    for k in range(2):
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[k], torch.cat([o[k] for o in one]), rtol=1e-5, atol=1e-5)


def test_tap_stops_after_the_deepest_layer(models):
    f, _ = models
    calls = []
    h = f.decoder.layers["2"].register_forward_hook(lambda *a: calls.append(2))
    LayerTap(f, [0, 1])(torch.zeros(1, 5, dtype=torch.long))
    h.remove()
    assert calls == []  # block 2 never ran
    with pytest.raises(ValueError, match="outside"):
        LayerTap(f, [3])


def test_forward_only_and_feature_layout(models, docs):
    f, r = models
    bi = BiLM(f, r, EOD, window=16, context=5, batch_tokens=64)
    fo = BiLM(f, None, EOD, window=16, context=5, batch_tokens=64)
    x = bi.features(docs, 1)
    assert x.shape == (sum(len(d) for d in docs), 64) and bi.feature_size == 64 and fo.feature_size == 32
    torch.testing.assert_close(fo.features(docs, 1), x[:, :32])
