"""Tiny Hugging Face causal LMs with random weights and a byte-level BPE tokenizer trained in the test session,
saved with save_pretrained (what a user's reference-LM directory looks like), plus hand-made SAE encoders."""

from __future__ import annotations

import os

import torch

from tests.labeling.tiny_tokenizers import CORPUS

SPECIALS = ["<bos>", "<eos>", "<pad>"]


def save_tokenizer(directory: str, vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(directory)
    return fast


def save_model(directory: str, arch: str = "llama", num_layers: int = 3, d_model: int = 32, seed: int = 0) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    os.makedirs(directory, exist_ok=True)
    fast = save_tokenizer(directory)
    v = len(fast)
    torch.manual_seed(seed)
    ids = {"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id}
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=v, hidden_size=d_model, intermediate_size=2 * d_model,
                          num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, **ids)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=v, n_embd=d_model, n_layer=num_layers, n_head=4, n_positions=256, **ids)
        model = GPT2LMHeadModel(cfg)
    model.save_pretrained(directory)
    return directory


class LinearReluEncoder:
    """A plain-torch SAE encoder relu(x W + b) (the shape of sae-lens's standard SAE without b_dec)."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0, bias: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d_in, d_sae, generator=g)
        self.b = torch.full((d_sae,), bias)
        self.d_in, self.d_sae = d_in, d_sae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.float() @ self.W + self.b)


class SetEncoder:
    """Latent j is `value[j]` on reference tokens whose id is in sets[j], else 0: activations a test can predict.
    `bos_value` is put on every latent for the BOS id, so a BOS that leaked into any statistic would show."""

    def __init__(self, vocab_size: int, sets: list[set[int]], values: list[float], bos_id: int | None = None,
                 bos_value: float = 100.0):
        self.W = torch.zeros(vocab_size, len(sets))
        for j, (s, v) in enumerate(zip(sets, values)):
            for i in s:
                self.W[i, j] = v
        if bos_id is not None:
            self.W[bos_id] = bos_value
        self.d_in, self.d_sae = vocab_size, len(sets)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.W


def onehot_lm(tokenizer, context_size: int = 8):
    """A CallableReferenceLM over a megatron_tf tokenizer whose 'residual' is the one-hot token id."""
    import torch.nn.functional as F

    from megatron_tf.labeling.sae.reference_lm import CallableReferenceLM

    v = tokenizer.vocab_size
    return CallableReferenceLM(tokenizer, lambda ids, mask: F.one_hot(ids, v).float(), d_model=v, num_layers=1,
                               layer=0, bos_id=tokenizer.eod, context_size=context_size, pad_id=tokenizer.pad,
                               name="onehot")
