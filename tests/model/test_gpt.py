"""GPT model (single process): parity with a naive float64 reference, GQA semantics, pipeline stage split, init,
recomputation, dropout."""

import dataclasses

import pytest
import torch

from megatron_tf.model import GPTModel, ModelConfig, build_gpt_stage, stage_layer_range
from megatron_tf.model.init import param_seed
from megatron_tf.parallel.random import ModelParallelRNG
from tests.model.reference import reference_logits

V = 100


def _cfg(**kw):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, vocab_size=V,
                make_vocab_size_divisible_by=16, init_method_std=0.1)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kw", [
    {},  # Llama: SwiGLU, RMSNorm, untied
    {"group_query_attention": True, "num_query_groups": 2, "untie_embeddings_and_output_weights": False},
    {"activation": "relu2", "normalization": "LayerNorm", "kv_channels": 16, "rotary_base": 500.0},
    {"group_query_attention": True, "num_query_groups": 1, "num_layers": 3},  # multi-query
])
def test_matches_float64_reference(kw):
    cfg = _cfg(**kw)
    model = build_gpt_stage(cfg, seed=7).double().eval()
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        ours = model(ids)
    assert ours.shape == (2, 9, cfg.padded_vocab_size()) == (2, 9, 112)
    ref = reference_logits(model.state_dict(), cfg, ids)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)  # RoPE angles are fp32 (as in HF)
    pos = torch.tensor([3, 4, 5, 0, 1, 2, 3, 9, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, position_ids=pos), reference_logits(model.state_dict(), cfg, ids, pos),
                                   rtol=0, atol=1e-6)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa_cfg = _cfg(group_query_attention=True, num_query_groups=2)
    gqa = build_gpt_stage(gqa_cfg, seed=1).double().eval()
    mha = build_gpt_stage(_cfg(), seed=2).double().eval()
    nq, ng, d, h = 4, 2, 8, 32
    assert gqa.decoder.layers["0"].self_attention.linear_qkv.weight.shape == ((nq + 2 * ng) * d, h)
    sd = gqa.state_dict()
    for i in range(2):
        name = f"decoder.layers.{i}.self_attention.linear_qkv.weight"
        q, k, v = sd[name].split((nq * d, ng * d, ng * d))
        rep = lambda t: t.view(ng, d, h).repeat_interleave(nq // ng, dim=0).reshape(nq * d, h)  # noqa: E731
        sd[name] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(mha(ids), gqa(ids), rtol=0, atol=1e-12)


def test_stage_layer_range():
    cfg = _cfg(num_layers=8)
    assert [stage_layer_range(cfg, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    cfg = _cfg(num_layers=10, decoder_first_pipeline_num_layers=1, decoder_last_pipeline_num_layers=3)
    assert [stage_layer_range(cfg, r, 4) for r in range(4)] == [(0, 1), (1, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="cannot split 6 layers over 4 pipeline stages"):
        stage_layer_range(_cfg(num_layers=6), 0, 4)


@pytest.mark.parametrize("tied", [False, True])
def test_pipeline_stages_equal_the_full_model(tied):
    cfg = _cfg(num_layers=4, decoder_first_pipeline_num_layers=1, decoder_last_pipeline_num_layers=1,
               untie_embeddings_and_output_weights=not tied)
    torch.manual_seed(0)
    full = build_gpt_stage(cfg, seed=5)
    stages = [build_gpt_stage(cfg, None, r, 3, seed=5) for r in range(3)]
    assert [s.layer_range for s in stages] == [(0, 1), (1, 3), (3, 4)]
    full_sd = full.state_dict()
    for s in stages:  # init independent of the pipeline split (global names, per-name seeds)
        for name, t in s.state_dict().items():
            assert torch.equal(t, full_sd[name]), name
    assert ("embedding.word_embeddings.weight" in stages[2].state_dict()) == tied
    assert ("output_layer.weight" in stages[2].state_dict()) == (not tied)
    assert "decoder.final_layernorm.weight" not in stages[0].state_dict()

    ids = torch.randint(0, V, (2, 6))
    target = torch.randn(2, 6, cfg.padded_vocab_size())
    (full(ids) * target).sum().backward()
    # run the stages in sequence as a pipeline would: detached [s, b, h] boundaries, gradients sent backwards
    x0 = stages[0](input_ids=ids)
    assert x0.shape == (6, 2, 32)
    x1_in = x0.detach().requires_grad_(True)
    x1 = stages[1](hidden_states=x1_in)
    x2_in = x1.detach().requires_grad_(True)
    logits = stages[2](hidden_states=x2_in)
    torch.testing.assert_close(logits, full(ids), rtol=0, atol=1e-6)
    (logits * target).sum().backward()
    x1.backward(x2_in.grad)
    x0.backward(x1_in.grad)
    full_grads = dict(full.named_parameters())
    emb = "embedding.word_embeddings.weight"
    for s in stages:
        for name, p in s.named_parameters():
            if tied and name == emb:
                continue
            torch.testing.assert_close(p.grad, full_grads[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    if tied:  # first and last stage each hold their part; their sum (the embedding all-reduce) is the full gradient
        summed = stages[0].get_parameter(emb).grad + stages[2].get_parameter(emb).grad
        torch.testing.assert_close(summed, full_grads[emb].grad, rtol=1e-5, atol=1e-6)


def test_init_is_deterministic_and_megatron_scaled():
    cfg = _cfg(num_layers=4, hidden_size=64, ffn_hidden_size=256, init_method_std=0.02)
    a, b, c = build_gpt_stage(cfg, seed=1), build_gpt_stage(cfg, seed=1), build_gpt_stage(cfg, seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "layernorm" in name:
            assert torch.equal(pa, torch.ones_like(pa))
            continue
        assert not torch.equal(pa, pc), name
        std = 0.02 / (2 * 4) ** 0.5 if name.endswith(("linear_proj.weight", "linear_fc2.weight")) else 0.02
        assert abs(pa.std().item() / std - 1) < 0.1, (name, pa.std().item(), std)
        assert abs(pa.mean().item()) < 0.2 * std
    assert param_seed(1, "x") != param_seed(1, "y") and param_seed(1, "x") == param_seed(1, "x")


def test_recompute_gives_the_same_gradients():
    cfg = _cfg()
    ids = torch.randint(0, V, (2, 8))
    grads = []
    for rc in (None, "full"):
        m = build_gpt_stage(dataclasses.replace(cfg, recompute_granularity=rc), seed=4)
        m(ids).square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-6, atol=1e-9)


def test_dropout_train_and_eval():
    cfg = _cfg(hidden_dropout=0.2, attention_dropout=0.2)
    m = build_gpt_stage(cfg, seed=4)
    ref = build_gpt_stage(_cfg(), seed=4).eval()
    ids = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(ids), ref(ids))  # eval: no dropout
        m.train()
        y1, y2 = m(ids), m(ids)
        assert (y1 - y2).abs().max() > 1e-4  # fresh masks each call
    # recompute replays the same masks: gradients equal with and without recomputation under dropout
    grads = []
    for rc in (None, "full"):
        mm = build_gpt_stage(dataclasses.replace(cfg, recompute_granularity=rc), seed=4)
        torch.manual_seed(0)
        mm(ids).square().mean().backward()
        grads.append({n: p.grad for n, p in mm.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-6, atol=1e-9)


def test_model_parallel_rng_fork():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    r0, r1 = ModelParallelRNG(1, tp_rank=0), ModelParallelRNG(1, tp_rank=1)
    with r0.fork("cpu"):
        a = torch.rand(4)
    with r1.fork("cpu"):
        b = torch.rand(4)
    with r0.fork("cpu"):
        a2 = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)  # the default stream is untouched by the forks
    assert not torch.equal(a, b) and not torch.equal(a, a2)  # per-rank streams; the tracker's stream advances
    again = ModelParallelRNG(1, tp_rank=0)
    with again.fork("cpu"):
        assert torch.equal(torch.rand(4), a)


def test_errors():
    with pytest.raises(ValueError, match="activation"):
        _cfg(activation="gelu")
    with pytest.raises(ValueError, match="num_query_groups 3 must divide"):
        _cfg(group_query_attention=True, num_query_groups=3)
    with pytest.raises(ValueError, match="needs input_ids"):
        GPTModel(_cfg())(hidden_states=torch.zeros(4, 1, 32))
    with pytest.raises(ValueError, match="needs hidden_states"):
        GPTModel(_cfg(), pre_process=False)(input_ids=torch.zeros(1, 4, dtype=torch.long))
