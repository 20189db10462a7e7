"""Compute conventions of the scaling report against hand-computed FLOPs."""

import pytest

from megatron_tf.evaluation.compute import CONVENTIONS, compute_of, convention, label


def test_conventions_by_hand():
    kw = dict(n_total=2_000_000, n_non_embedding=500_000, tokens_seen=3_000_000, tokens_learned=2_500_000)
    # paper: 6 * N * 20N = 120 * (2e6)^2 = 4.8e14, whatever the tokens
    assert compute_of("paper", **kw) == 4.8e14
    assert compute_of("paper", **{**kw, "tokens_seen": 1.0, "tokens_learned": 1.0}) == 4.8e14
    assert compute_of("seen", **kw) == 6 * 2e6 * 3e6 == 3.6e13
    assert compute_of("learned", **kw) == 6 * 2e6 * 2.5e6 == 3.0e13
    assert compute_of("kaplan", **kw) == 6 * 5e5 * 3e6 == 9.0e12  # the old default: non-embedding N, tokens seen


def test_convention_records_and_errors():
    c = convention("paper")
    assert c["name"] == "paper" and c["formula"] == "C = 6 * N * (20 * N)" and "total" in c["N"]
    assert "non-embedding" in CONVENTIONS["kaplan"]["N"] and label("kaplan").endswith("N non-embedding")
    assert label("seen") == "seen: C = 6 * N * D_seen, N total"
    with pytest.raises(ValueError, match="--compute: unknown convention 'chinchilla'"):
        convention("chinchilla")
    with pytest.raises(ValueError, match="run x: --compute paper needs n_params"):
        compute_of("paper", n_total=None, n_non_embedding=1.0, tokens_seen=1.0, tokens_learned=1.0, where="run x")
    with pytest.raises(ValueError, match="needs tokens_learned"):
        compute_of("learned", n_total=1.0, n_non_embedding=1.0, tokens_seen=1.0, tokens_learned=None)
