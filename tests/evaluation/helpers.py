"""Tiny models, tokenizers and explicit float64 references for the evaluation tests."""

from __future__ import annotations

import json
import os

import torch

from megatron_tf.model import ModelConfig, build_gpt_stage
from megatron_tf.tokenizer.tokenizer import NullTokenizer, SentencePieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SP = os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model")


def null_tokenizer(vocab: int = 60) -> NullTokenizer:
    return NullTokenizer(vocab)


def demo_tokenizer() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(DEMO_SP, num_threads=1)


def tiny_config(vocab_size: int, **kw) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=32, vocab_size=vocab_size,
                make_vocab_size_divisible_by=32, init_method_std=0.2)
    return ModelConfig(**{**base, **kw})


def tiny_model(vocab_size: int, seed: int = 3, tp_group=None, **kw):
    """float64 model (so batched and explicit computations differ only by rounding at 1e-15)."""
    return build_gpt_stage(tiny_config(vocab_size, **kw), tp_group, seed=seed).double().eval()


@torch.no_grad()
def next_token_logprob(model, context: list[int], target: int) -> float:
    """log p(target | context) from ONE unpadded forward of exactly `context` (float64 log-softmax over the
    padded vocabulary, as training)."""
    logits = model(torch.tensor([context], dtype=torch.long), gather_logits=True)[0, -1].double()
    return float(torch.log_softmax(logits, -1)[target])


@torch.no_grad()
def sequence_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[j] | ids[:j]) for j = 1..len-1 from one unpadded forward."""
    logits = model(torch.tensor([ids], dtype=torch.long), gather_logits=True)[0].double()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[j - 1, ids[j]]) for j in range(1, len(ids))]


def write_jsonl(path: str, records: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
