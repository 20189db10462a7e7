"""Tiny models, artifacts and datasets for the classifier tests (random weights: the tests check plumbing and
numerics, not accuracy)."""

from __future__ import annotations

import numpy as np
import torch

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.labeling.classifier.artifact import lm_from_model, save_classifier
from megatron_tf.labeling.classifier.probe import Probe
from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
from megatron_tf.tokenizer.tokenizer import NullTokenizer

VOCAB = 64  # NullTokenizer: 61, 62, 63 = <|endoftext|>, <|hidden|>, <|pad|>


def tokenizer() -> NullTokenizer:
    return NullTokenizer(VOCAB)


def tiny_lm(seed: int, layers: int = 3, hidden: int = 32, heads: int = 4) -> torch.nn.Module:
    cfg = ModelConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, vocab_size=VOCAB,
                      make_vocab_size_divisible_by=8)
    return build_gpt_stage(cfg, seed=seed).eval()


def random_docs(rng: np.random.Generator, n: int, max_len: int = 50, eod: int = 61) -> list[np.ndarray]:
    """Documents of random length (some longer than the test window), most ending with eod, one empty."""
    docs = []
    for k in range(n):
        body = rng.integers(0, eod, int(rng.integers(1, max_len)))
        docs.append(body if k % 5 == 3 else np.append(body, eod))
    docs[min(2, n - 1)] = np.zeros(0, np.int64)
    return docs


def random_probe(dim: int, seed: int, kind: str = "logistic") -> Probe:
    torch.manual_seed(seed)
    p = Probe(dim, kind, hidden=16)
    with torch.no_grad():
        p.mean.normal_(0, 0.01)
        p.std.uniform_(0.01, 0.03)  # the hidden states of the tiny random LMs have a scale of about 0.02
        for m in p.head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 2.0 / m.in_features**0.5)
                m.bias.normal_(0, 0.3)
    return p.eval()


def tiny_artifact(path, tok=None, *, bidirectional: bool = True, layer: int = 1, window: int = 16, context: int = 5,
                  kind: str = "logistic", seed: int = 0) -> str:
    tok = tok or tokenizer()
    f = tiny_lm(seed + 1)
    r = tiny_lm(seed + 2) if bidirectional else None
    dim = f.config.hidden_size * (2 if bidirectional else 1)
    return save_classifier(str(path), forward_lm=lm_from_model(f), reversed_lm=lm_from_model(r) if r else None,
                           probe=random_probe(dim, seed, kind), layer=layer, window=window, context=context,
                           tokenizer=tok, threshold=0.5, base_rate=0.1)


def tiny_dataset(path, n: int = 24, seed: int = 0, max_len: int = 50):
    docs = random_docs(np.random.default_rng(seed), n, max_len)
    return write_dataset(str(path), docs, dtype=np.uint16), docs
