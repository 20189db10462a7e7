"""CUDA checks (skipped without a GPU): the CUDA path equals the CPU path in fp32; bf16 autocast stays close to
fp32 with fp32 parameters and gradients; the GQA attention call runs on SDPA's FlashAttention backend."""

import pytest
import torch

from megatron_tf.model import ModelConfig, build_gpt_stage

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cfg():
    return ModelConfig(num_layers=4, hidden_size=256, num_attention_heads=8, group_query_attention=True,
                       num_query_groups=2, vocab_size=1000, make_vocab_size_divisible_by=128)


@cuda
def test_cuda_fp32_equals_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = _cfg()
    cpu = build_gpt_stage(cfg, seed=1)
    gpu = build_gpt_stage(cfg, seed=1, device="cuda")
    ids = torch.randint(0, 1000, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(gpu(ids.cuda()).cpu(), cpu(ids), rtol=1e-4, atol=1e-4)


@cuda
def test_bf16_autocast_close_to_fp32():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = _cfg()
    model = build_gpt_stage(cfg, seed=1, device="cuda")
    ids = torch.randint(0, 1000, (2, 128), device="cuda")
    with torch.no_grad():
        ref = model(ids)
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = model(ids)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, rel
    out.float().square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
