"""RoPE really encodes position: rotation over the head dimension of each head, relative-position property,
shift invariance and order sensitivity of the whole model (a position-free model would fail these)."""

import torch

from megatron_tf.model import ModelConfig, build_gpt_stage
from megatron_tf.model.rope import apply_rope, rope_cos_sin
from tests.model.reference import rope_reference


def _rot(x, pos, d, base=10000.0):
    """x [s, heads, d] float64 rotated at positions pos [s] with megatron_tf's RoPE."""
    cos, sin = rope_cos_sin(torch.as_tensor(pos), d, base)
    return apply_rope(x.unsqueeze(1), cos, sin).squeeze(1)


def test_rope_matches_explicit_pair_rotations():
    torch.manual_seed(0)
    x = torch.randn(7, 3, 16, dtype=torch.float64)
    pos = torch.tensor([0, 1, 2, 5, 9, 30, 101])
    # cos/sin are computed in fp32 (as Hugging Face does), so agreement is to fp32 rounding of the angles
    torch.testing.assert_close(_rot(x, pos, 16), rope_reference(x, pos, 10000.0), rtol=0, atol=2e-5)
    torch.testing.assert_close(_rot(x, pos, 16, base=500.0), rope_reference(x, pos, 500.0), rtol=0, atol=2e-5)


def test_rotation_acts_within_each_head():
    torch.manual_seed(0)
    x = torch.randn(5, 4, 8, dtype=torch.float64)
    pos = torch.arange(5)
    y = _rot(x, pos, 8)
    x2 = x.clone()
    x2[:, 1] = torch.randn(5, 8, dtype=torch.float64)  # change head 1 only
    y2 = _rot(x2, pos, 8)
    assert torch.equal(y[:, [0, 2, 3]], y2[:, [0, 2, 3]])  # other heads unaffected
    # every head gets the same rotation (the angle depends on the position and the dimension, not the head)
    for h in range(4):
        torch.testing.assert_close(y[:, h], _rot(x[:, h:h + 1], pos, 8)[:, 0], rtol=0, atol=0)
    # and the norm of each head vector is preserved (a rotation)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_dot_product_depends_only_on_position_difference():
    torch.manual_seed(0)
    d = 32
    q, k = torch.randn(1, 1, d, dtype=torch.float64), torch.randn(1, 1, d, dtype=torch.float64)

    def score(m, n):
        return float((_rot(q, [m], d) * _rot(k, [n], d)).sum())

    for m, n in [(0, 3), (5, 2), (10, 10), (7, 40)]:
        for shift in (1, 13, 250):
            assert abs(score(m, n) - score(m + shift, n + shift)) < 1e-4
    # ... and does depend on it
    values = [score(0, delta) for delta in range(6)]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]) > 1e-3
    assert abs(score(0, 0) - float((q * k).sum())) < 1e-6  # no rotation at equal positions


def _model(num_layers=2):
    cfg = ModelConfig(num_layers=num_layers, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=64,
                      make_vocab_size_divisible_by=64, init_method_std=0.3)  # large weights: peaked attention
    return build_gpt_stage(cfg, seed=3).double().eval()


def test_model_is_shift_invariant_and_order_sensitive():
    model = _model()
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        base = model(ids)
        shifted = model(ids, position_ids=torch.arange(12) + 37)
        torch.testing.assert_close(shifted, base, rtol=0, atol=1e-5)  # only relative positions matter
    # one layer: the last position attends to the set of prefix tokens, so only positions can make it order-aware
    model = _model(num_layers=1)
    perm = torch.cat([torch.randperm(11), torch.tensor([11])])
    with torch.no_grad():
        base, permuted = model(ids), model(ids[:, perm])
        assert (permuted[:, -1] - base[:, -1]).abs().max() > 1e-3  # permuting the prefix changes the prediction
        # sanity of the test itself: without positional information (every position 0), the same permutation leaves
        # the last position unchanged -- what a model with RoPE applied across heads (position-free) would do
        zeros = torch.zeros(12, dtype=torch.long)
        torch.testing.assert_close(model(ids[:, perm], position_ids=zeros)[:, -1],
                                   model(ids, position_ids=zeros)[:, -1], rtol=0, atol=1e-10)


def test_per_sample_position_ids():
    model = _model()
    ids = torch.randint(0, 64, (2, 8))
    pos = torch.stack([torch.arange(8), torch.tensor([0, 1, 2, 0, 1, 2, 3, 4])])  # e.g. reset at a document end
    with torch.no_grad():
        both = model(ids, position_ids=pos)
        torch.testing.assert_close(both[0], model(ids[:1])[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(both[1], model(ids[1:], position_ids=pos[1])[0], rtol=0, atol=1e-12)
        assert (both[1] - model(ids[1:])[0]).abs().max() > 1e-4
