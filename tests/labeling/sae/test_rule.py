"""The labeling rule (labeling/sae/rule.py): thresholds, seed count, expansion to the fixpoint, against a brute-force
iteration of the paper's definition."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.labeling.sae.rule import active_mask, expand, label_tokens, seed_mask, thresholds_from_moments


def brute_force(acts: np.ndarray, thr: np.ndarray, m: int) -> np.ndarray:
    """The definition, literally: seeds, then repeat "unmarked active token with a forget neighbour -> forget"
    until nothing changes."""
    t = acts.shape[0]
    forget = [sum(1 for k in range(acts.shape[1]) if acts[i, k] > thr[k]) >= m for i in range(t)]
    active = [any(acts[i, k] > 0 for k in range(acts.shape[1])) for i in range(t)]
    changed = True
    while changed:
        changed = False
        new = list(forget)
        for i in range(t):
            if not forget[i] and active[i] and ((i > 0 and forget[i - 1]) or (i + 1 < t and forget[i + 1])):
                new[i] = True
                changed = True
        forget = new
    return np.asarray(forget, dtype=bool)


def test_docstring_worked_example():
    a = np.array([[0, 0], [.3, 0], [1.5, 2.5], [1.2, .1], [0, .4], [0, 0], [.2, 0], [0, 3.0]])
    thr = np.array([1.0, 2.0])
    assert seed_mask(a, thr, 2).tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert active_mask(a).tolist() == [0, 1, 1, 1, 1, 0, 1, 1]
    assert label_tokens(a, thr, 2).tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    # with m = 1, tokens 3 and 7 are seeds too: the run 6..7 becomes forget
    assert label_tokens(a, thr, 1).tolist() == [0, 1, 1, 1, 1, 0, 1, 1]


def test_thresholds_mean_plus_k_std():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(1000, 5)), 0)
    thr = thresholds_from_moments(x.mean(0), x.std(0), 4.0)
    np.testing.assert_allclose(thr, x.mean(0) + 4 * x.std(0), rtol=0, atol=0)
    # strictly greater: a token exactly at the threshold is not over it
    a = np.array([[1.0, 2.0], [1.0 + 1e-6, 2.0 + 1e-6]])
    assert seed_mask(a, np.array([1.0, 2.0]), 2).tolist() == [False, True]


@pytest.mark.parametrize("m,want", [(1, [1, 1, 1, 0]), (2, [0, 1, 1, 0]), (3, [0, 0, 1, 0]), (4, [0, 0, 0, 0])])
def test_seed_count(m, want):
    thr = np.array([0.5, 0.5, 0.5])
    a = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0.5, 0.5, 0.5]], dtype=np.float32)  # last: at, not over
    assert seed_mask(a, thr, m).astype(int).tolist() == want


def test_expansion_grows_both_sides_and_stops_at_inactive_tokens():
    #        0  1  2  3  4  5  6  7  8  9
    seed = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    act_ = [1, 0, 1, 1, 1, 1, 1, 0, 1, 1]
    assert expand(np.array(seed, bool), np.array(act_, bool)).astype(int).tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    # a seed that is not itself active still spreads into the active runs on both sides of it
    seed = [0, 0, 0, 1, 0, 0]
    act_ = [0, 1, 1, 0, 1, 0]
    assert expand(np.array(seed, bool), np.array(act_, bool)).astype(int).tolist() == [0, 1, 1, 1, 1, 0]
    # at the document ends, and no seed -> nothing
    assert expand(np.array([1, 0, 0], bool), np.array([1, 1, 1], bool)).tolist() == [True] * 3
    assert expand(np.array([0, 0, 1], bool), np.array([1, 1, 1], bool)).tolist() == [True] * 3
    assert not expand(np.zeros(5, bool), np.ones(5, bool)).any()
    assert expand(np.zeros(0, bool), np.zeros(0, bool)).shape == (0,)


def test_matches_brute_force_on_random_inputs():
    rng = np.random.default_rng(1234)
    n_forget = 0
    for trial in range(400):
        t = int(rng.integers(0, 40))
        k = int(rng.integers(1, 5))
        density = rng.uniform(0.1, 0.9)
        acts = rng.exponential(1.0, (t, k)) * (rng.random((t, k)) < density)
        if trial % 5 == 0:
            acts = -acts  # inactive everywhere, with negative thresholds seeds are inactive tokens
        thr = rng.uniform(-0.5, 2.0, k)
        m = int(rng.integers(1, k + 1))
        got = label_tokens(acts, thr, m)
        want = brute_force(acts, thr, m)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}: acts={acts.tolist()} thr={thr} m={m}")
        n_forget += int(want.sum())
    assert n_forget > 500  # the random cases really exercise expansion


def test_bad_shapes():
    with pytest.raises(ValueError, match="do not match"):
        seed_mask(np.zeros((3, 2)), np.zeros(3), 1)
    with pytest.raises(ValueError, match=">= 1"):
        seed_mask(np.zeros((3, 2)), np.zeros(2), 0)
    with pytest.raises(ValueError, match="equal 1-D"):
        expand(np.zeros(3, bool), np.zeros(4, bool))


def test_docs_worked_example():
    """The example table in docs/sae_labels.md."""
    #             L1   L2   L3
    a = np.array([[0, 0, 0],        # " The"
                  [.3, 1.2, 0],     # " patient"
                  [0, .4, 0],       # " had"
                  [.8, 1.5, 0],     # " acute"
                  [3.1, 2.6, 0],    # " pneumonia"
                  [0, .2, 0],       # ","
                  [0, 0, 0],        # " treated"
                  [0, 0, .1],       # " with"
                  [0, .5, 1.9],     # " antibiotics"
                  [0, 0, 0]])       # "."
    thr = np.array([1.0, 2.0, 1.5])
    assert np.count_nonzero(a > thr, axis=1).tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 1, 0]
    assert np.flatnonzero(label_tokens(a, thr, 2)).tolist() == [1, 2, 3, 4, 5]
    assert np.flatnonzero(label_tokens(a, thr, 1)).tolist() == [1, 2, 3, 4, 5, 7, 8]
