"""RMU: the loss equals the formula on hand-built activations (a model whose layers add nothing, so the residual is
the embedding we chose), forget activations move onto c*u (direction and length), only the named tensors move,
padding contributes nothing."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
from megatron_tf.posttrain.data import Row, pad_rows
from megatron_tf.posttrain.unlearning.rmu import (
    RMUConfig,
    layer_output,
    masked_mse,
    random_unit_vector,
    run_rmu,
    select_parameters,
)

PAD = 63


def tiny_model(layers=3, seed=0):
    cfg = ModelConfig(num_layers=layers, hidden_size=32, num_attention_heads=4, vocab_size=64,
                      make_vocab_size_divisible_by=64, max_position_embeddings=32)
    return build_gpt_stage(cfg, seed=seed).float()


def rows(seed, n, lo, hi, length=12):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(4, length))
        ids = [61] + rng.integers(lo, hi, size=k).tolist()
        out.append(Row(ids, [0.0] + [1.0] * k))
    return out


def test_only_named_parameters_change():
    torch.manual_seed(0)
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = RMUConfig(layer_id=2, train_iters=5, micro_batch_size=3, lr=1e-2, steering_coeff=5.0)
    res = run_rmu(model, rows(1, 8, 0, 30), rows(2, 8, 30, 60), cfg, PAD, progress=False)
    expected = {f"decoder.layers.{i}.mlp.linear_fc2.weight" for i in (0, 1, 2)}
    assert set(res.updated) == expected
    for n, p in model.named_parameters():
        if n in expected:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # bit-identical
    assert all(p.requires_grad for p in model.parameters())


def test_layer_selection_by_name_and_errors():
    model = tiny_model(layers=2)
    lid, ids = RMUConfig().resolve_layers(2)
    assert (lid, ids) == (1, [0, 1])
    assert RMUConfig(layer_id=5, layer_ids=[3, 4, 5]).resolve_layers(8) == (5, [3, 4, 5])
    sel = select_parameters(model, [1], ["mlp.linear_fc2.weight", "self_attention.linear_proj.weight"])
    assert list(sel) == ["decoder.layers.1.mlp.linear_fc2.weight", "decoder.layers.1.self_attention.linear_proj.weight"]
    with pytest.raises(KeyError, match="mlp.down_proj"):
        select_parameters(model, [0], ["mlp.down_proj.weight"])
    with pytest.raises(ValueError, match="outside"):
        RMUConfig(layer_id=2).resolve_layers(2)


def _residuals(model, rows_, layer_id):
    """Layer-l residual of every non-padding token (read with a forward hook, not with rmu.layer_output), float64."""
    ids, w = pad_rows(rows_, PAD)
    seen = {}
    h = model.decoder.layers[str(layer_id)].register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return seen["x"].transpose(0, 1).double()[w.bool()]


def _u(hidden, seed):
    """The reference's u (WMDP rmu/unlearn.py): torch.rand(hidden) / its norm, drawn here in float64."""
    u = torch.rand(hidden, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm()


def test_forget_activations_move_onto_c_u_and_retain_stays_small():
    torch.manual_seed(0)
    model = tiny_model()
    forget, retain = rows(1, 16, 0, 30), rows(2, 16, 30, 60)
    cfg = RMUConfig(layer_id=2, train_iters=60, micro_batch_size=4, lr=3e-3, alpha=10.0,
                    steering_coeff_scale=4.0, calibration_batches=2)
    h0 = _residuals(model, forget, 2)
    res = run_rmu(model, forget, retain, cfg, PAD, progress=False)
    h1 = _residuals(model, forget, 2)
    c, u = res.steering_coeff, _u(32, cfg.seed)
    assert res.activation_norm is not None and res.steering_coeff == pytest.approx(4.0 * res.activation_norm)
    assert c == pytest.approx(4.0 * float(_residuals(copy.deepcopy(tiny_model()), forget, 2).norm(dim=-1).mean()),
                              rel=0.05)  # calibration batches are a sample of the forget rows
    cos0, cos1 = (F.cosine_similarity(h, u[None], dim=-1).mean().item() for h in (h0, h1))
    d0, d1 = ((h - c * u).norm(dim=-1).mean().item() for h in (h0, h1))
    assert cos0 < 0.5 < 0.85 < cos1, (cos0, cos1)  # the direction turns onto u
    assert d1 < 0.6 * d0, (d0, d1)  # and the activations approach c*u, not merely shrink or grow
    assert float((h0 @ u).mean()) < 0.1 * c < 0.5 * c < float((h1 @ u).mean())  # measured 0.61 c after 60 steps
    first = np.mean([h["forget_loss"] for h in res.history[:5]])
    assert res.history[-1]["retain_loss"] < 0.1 * first


def _identity_layers_model(seed=0):
    """Attention and MLP outputs zeroed: every layer adds 0, so the residual after any layer is the embedding."""
    model = tiny_model(seed=seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".linear_proj." in n or ".linear_fc2." in n:
                p.zero_()
        emb = model.embedding.word_embeddings.weight
        g = torch.Generator().manual_seed(3)
        emb.copy_(torch.randint(-3, 4, emb.shape, generator=g).float() / 4)  # hand-built: multiples of 1/4
    return model


def test_first_step_loss_equals_formula_on_hand_built_activations():
    model = _identity_layers_model()
    forget, retain = rows(1, 3, 0, 30), rows(2, 3, 30, 60)
    c = 2.5
    cfg = RMUConfig(layer_id=1, train_iters=2, micro_batch_size=3, lr=1e-2, alpha=7.0, steering_coeff=c)
    emb = model.embedding.word_embeddings.weight.detach().double().clone()
    u = _u(32, cfg.seed)
    # L_forget = sum over forget tokens with weight 1 of ||e_tok - c u||^2 / (n * hidden); the start token (weight
    # 0) and the padding count for nothing. The batch holds all 3 rows (order does not matter to the sum).
    toks = [t for r in forget for t, w in zip(r.ids, r.weights) if w == 1.0]
    expect = sum(float(((emb[t] - c * u) ** 2).sum()) for t in toks) / (len(toks) * 32)
    assert torch.equal(_residuals(model, forget, 1), emb[toks])  # the residual really is the chosen embedding
    res = run_rmu(model, forget, retain, cfg, PAD, progress=False)
    h = res.history[0]
    assert h["forget_loss"] == pytest.approx(expect, rel=1e-6)
    assert h["retain_loss"] == 0.0  # the model equals its frozen copy before the first update
    assert h["loss"] == pytest.approx(expect, rel=1e-6)
    # second step: the retain term now counts, weighted by alpha
    h2 = res.history[1]
    assert h2["retain_loss"] > 0 and h2["loss"] == pytest.approx(h2["forget_loss"] + 7.0 * h2["retain_loss"], rel=1e-6)
    # a zero target would give sum ||e||^2 / (n * hidden): a different number on these activations
    assert abs(sum(float((emb[t] ** 2).sum()) for t in toks) / (len(toks) * 32) - expect) > 0.1


def test_masked_mse_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 8, generator=g)
    b = torch.randn(2, 5, 8, generator=g)
    w = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.float32)
    sel = w.bool()
    ref = ((a.double() - b.double())[sel] ** 2).mean()
    assert float(masked_mse(a, b, w)) == pytest.approx(float(ref), rel=1e-6)
    u = random_unit_vector(32, 3)
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-6) and (u >= 0).all()


def test_padding_does_not_contribute():
    """Changing the tokens at padded positions changes neither loss nor the update."""
    torch.manual_seed(0)
    base = tiny_model()
    f = rows(1, 4, 0, 30)
    r = rows(2, 4, 30, 60)
    cfg = RMUConfig(layer_id=1, train_iters=3, micro_batch_size=4, lr=1e-2, steering_coeff=3.0)
    runs = []
    for pad in (PAD, 7):  # a different id in every padded slot
        m = copy.deepcopy(base)
        res = run_rmu(m, f, r, cfg, pad, progress=False)
        runs.append((res.history, {n: p.detach().clone() for n, p in m.named_parameters()}))
    (h0, p0), (h1, p1) = runs
    for a, b in zip(h0, h1):
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-5, abs=1e-7)
        assert a["retain_loss"] == pytest.approx(b["retain_loss"], rel=1e-5, abs=1e-9)
    for n in p0:
        torch.testing.assert_close(p0[n], p1[n], rtol=1e-5, atol=1e-7)
    # and the batch really was padded
    ids, w = pad_rows(f, PAD)
    assert (w == 0).sum() > len(f)


def test_layer_output_is_residual_after_layer():
    model = tiny_model().eval()
    ids = torch.randint(0, 60, (2, 7))
    seen = {}
    h = model.decoder.layers["1"].register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        model(input_ids=ids)
        got = layer_output(model, ids, 1)
    h.remove()
    torch.testing.assert_close(got, seen["x"].transpose(0, 1).float(), rtol=0, atol=0)
