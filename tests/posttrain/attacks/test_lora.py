"""LoRA: the adapted model equals an independently built one with W + (alpha / r) B A (float64, several alpha and
r), merged == unmerged outputs, A ~ N(0, 1/r) and B = 0 at the start; only the adapters train; full finetuning
touches everything."""

import copy

import numpy as np
import pytest
import torch

from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
from megatron_tf.posttrain.attacks.finetune import FinetuneSettings, finetune_run
from megatron_tf.posttrain.attacks.lora import DEFAULT_TARGETS, add_lora, lora_parameters, merge_lora
from megatron_tf.posttrain.common import lm_loss
from megatron_tf.posttrain.data import PackedBatches
from megatron_tf.tokenizer.tokenizer import build_tokenizer


def tiny_model(seed=0):
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64,
                      make_vocab_size_divisible_by=64, max_position_embeddings=32)
    return build_gpt_stage(cfg, seed=seed).float().eval()


def test_merged_equals_unmerged():
    model = tiny_model()
    names_before = [n for n, _ in model.named_parameters()]
    ids = torch.randint(0, 60, (3, 11))
    with torch.no_grad():
        ref = model(input_ids=ids)
    wrapped = add_lora(model, rank=4, alpha=8.0, seed=1)
    assert len(wrapped) == 2 * len(DEFAULT_TARGETS)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), ref, rtol=0, atol=0)  # B = 0: starts equal
        g = torch.Generator().manual_seed(5)
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        unmerged = model(input_ids=ids)
    assert (unmerged - ref).abs().max() > 1e-2  # the adapters do something
    assert merge_lora(model) == len(wrapped)
    assert [n for n, _ in model.named_parameters()] == names_before
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rank", "alpha"), [(4, 8.0), (2, 3.0), (8, 1.0)])
def test_alpha_over_rank_scaling_against_independent_weights(rank, alpha):
    """Unmerged adapters and merge_lora both equal a base model whose target weights the test sets itself to
    W + (alpha / r) B A, computed in float64 from the adapter tensors."""
    model = tiny_model().double()
    base = copy.deepcopy(model)
    add_lora(model, rank=rank, alpha=alpha, seed=1)
    g = torch.Generator().manual_seed(rank)
    expected = {}
    with torch.no_grad():
        for n, mod in model.named_modules():
            if hasattr(mod, "lora_A"):
                assert torch.count_nonzero(mod.lora_B) == 0 and mod.lora_A.shape == (rank, mod.base.weight.shape[1])
                mod.lora_B.copy_(torch.randn(mod.lora_B.shape, generator=g, dtype=torch.float64) * 0.2)
                w = base.get_submodule(n).weight
                expected[f"{n}.weight"] = w + (alpha / rank) * (mod.lora_B @ mod.lora_A)
        ref = copy.deepcopy(base)
        for name, w in expected.items():
            ref.get_parameter(name).copy_(w)
        ids = torch.randint(0, 60, (2, 9), generator=g)
        want = ref(input_ids=ids)
        torch.testing.assert_close(model(input_ids=ids), want, rtol=1e-10, atol=1e-10)  # unmerged
        assert (want - base(input_ids=ids)).abs().max() > 1e-2
        merge_lora(model)
        for name, w in expected.items():
            torch.testing.assert_close(model.get_parameter(name), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model(input_ids=ids), want, rtol=1e-10, atol=1e-10)


def test_a_initialised_with_variance_one_over_rank():
    model = tiny_model()
    add_lora(model, rank=16, alpha=16.0, seed=0)
    a = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if n.endswith(".lora_A")])
    assert a.numel() == 5120 and float(a.var()) == pytest.approx(1 / 16, rel=0.08)  # 4 sigma: var s.e. 2%
    b = [p for n, p in model.named_parameters() if n.endswith(".lora_B")]
    assert all(torch.count_nonzero(p) == 0 for p in b)


def _null_tok():
    return build_tokenizer("NullTokenizer", None, vocab_size=64)


def _docs(seed, n=30):
    rng = np.random.default_rng(seed)
    # learnable: runs of consecutive ids (mod 40) from a random start
    return [np.append((int(rng.integers(0, 40)) + np.arange(int(rng.integers(5, 20)))) % 40, 61) for _ in range(n)]


def test_lora_trains_only_adapters_and_merges_back():
    tok = _null_tok()
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_lora(model, rank=4, alpha=8.0, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    batches = PackedBatches(_docs(1), 16, 4, seed=0)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    for _ in range(3):
        loss = lm_loss(model, next(batches), torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, lora_before[n]), n
        else:
            assert torch.equal(p, before[n.replace(".base.", ".")]), n
    merge_lora(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"decoder.layers.{i}.{m}.{t}.weight" for i in (0, 1) for m, t in
                       (("self_attention", "linear_qkv"), ("self_attention", "linear_proj"), ("mlp", "linear_fc1"),
                        ("mlp", "linear_fc2"))}
    assert tok.eod == 61


def test_finetune_run_curve_and_loss_falls():
    tok = _null_tok()
    docs, ev = _docs(1, 60), _docs(1, 60)[:6]  # evaluate on training text: the loss must fall
    for method, drop in (("full", 0.5), ("lora", 0.2)):
        model = tiny_model()
        s = FinetuneSettings(method, 3e-3 if method == "full" else 2e-2, 0.0, 1, train_iters=30, eval_interval=10)
        curve = finetune_run(model, PackedBatches(docs, 16, 8, seed=1), ev, s, tok, 16, progress=False)
        assert curve["steps"] == [0, 10, 20, 30] and curve["tokens"] == [0, 1280, 2560, 3840]
        assert curve["forget_loss"][-1] < curve["forget_loss"][0] - drop, (method, curve["forget_loss"])
        assert not any(".lora_" in n for n, _ in model.named_parameters())
