"""LoRA: merged == unmerged outputs; only the adapters train; full finetuning touches everything."""

import numpy as np
import torch

from megatron_tf.attacks.finetune import FinetuneSettings, finetune_run, lm_loss
from megatron_tf.attacks.lora import DEFAULT_TARGETS, add_lora, lora_parameters, merge_lora
from megatron_tf.attacks.sets import PackedBatches
from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
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
