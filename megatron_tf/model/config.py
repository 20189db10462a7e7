"""GPT architecture configuration (Megatron-LM flag names; the default architecture is Llama's).

Defaults that differ from Megatron-LM, on purpose (Llama architecture):
- `--untie-embeddings-and-output-weights` defaults to True (untied). Megatron's semantics are kept: the flag given
  means untied; tie them with `--no-untie-embeddings-and-output-weights` (Megatron's default).
- `--activation swiglu` (Megatron: `--swiglu`; GeLU without it); `--activation relu2` is Megatron's
  `--squared-relu` (relu(x)^2, the paper's models). There is no GeLU.
- `--normalization RMSNorm` (Megatron's default is LayerNorm; LayerNorm here has no bias).
- RoPE always (Megatron's `--position-embedding-type rope`), rotate-half convention (Megatron's non-interleaved
  default, the same as Hugging Face Llama), no `--rotary-percent`.
- `--attention-dropout` / `--hidden-dropout` default to 0 (Megatron: 0.1).
- No biases anywhere (Megatron's `--disable-bias-linear`).

`vocab_size` is not a flag here: the trainer sets it from the tokenizer (`tokenizer.vocab_size`). The padded
vocabulary follows Megatron's rule: the smallest multiple of make_vocab_size_divisible_by * tp >= vocab_size.
`--seq-length` belongs to the trainer; `max_position_embeddings` defaults to it (only the HF export reads it: RoPE
needs no table).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from megatron_tf.config.cli import opt

ACTIVATIONS = ("swiglu", "relu2")
NORMALIZATIONS = ("RMSNorm", "LayerNorm")


@dataclass
class ModelConfig:
    """GPT model architecture."""

    num_layers: int = field(default=12, metadata=opt("Number of transformer layers."))
    hidden_size: int = field(default=768, metadata=opt("Transformer hidden size."))
    ffn_hidden_size: int | None = field(default=None, metadata=opt(
        "MLP hidden size. Default (Megatron's rule): 4*h, or int(8h/3 / 64)*64 with swiglu."))
    num_attention_heads: int = field(default=12, metadata=opt("Number of attention (query) heads."))
    group_query_attention: bool = field(default=False, metadata=opt("Use grouped-query attention."))
    num_query_groups: int | None = field(default=None, metadata=opt(
        "Number of key/value heads with --group-query-attention (must divide the number of attention heads)."))
    kv_channels: int | None = field(default=None, metadata=opt(
        "Head dimension (default hidden_size / num_attention_heads)."))
    max_position_embeddings: int | None = field(default=None, metadata=opt(
        "Maximum sequence length (default: --seq-length). RoPE has no table; written into the HF export config."))
    vocab_size: int | None = field(default=None, metadata=opt(
        "True vocabulary size (set by the trainer from the tokenizer).", cli=False))
    make_vocab_size_divisible_by: int = field(default=128, metadata=opt(
        "Pad the vocabulary to a multiple of this value times the tensor-parallel size (Megatron's rule)."))
    untie_embeddings_and_output_weights: bool = field(default=True, metadata=opt(
        "Untie the input embedding and the output layer (default: untied, like Llama; "
        "--no-untie-embeddings-and-output-weights ties them, Megatron's default)."))
    activation: str = field(default="swiglu", metadata=opt(
        "MLP activation: swiglu (silu(x W_gate) * x W_up, Megatron --swiglu) or relu2 (relu(x W)^2, "
        "Megatron --squared-relu).", choices=ACTIVATIONS))
    normalization: str = field(default="RMSNorm", metadata=opt(
        "Normalisation layer (pre-norm).", choices=NORMALIZATIONS))
    norm_epsilon: float = field(default=1e-5, metadata=opt("Epsilon of the normalisation layers."))
    rotary_base: float = field(default=10000.0, metadata=opt("RoPE base theta."))
    init_method_std: float = field(default=0.02, metadata=opt(
        "Std of the normal weight init; output projections use std / sqrt(2 * num_layers)."))
    sequence_parallel: bool = field(default=False, metadata=opt(
        "Sequence parallelism (Korthikanti et al. 2022): norms and dropout on sequence shards of the TP group."))
    attention_dropout: float = field(default=0.0, metadata=opt("Dropout on attention probabilities."))
    hidden_dropout: float = field(default=0.0, metadata=opt("Dropout on embeddings and residual branches."))
    attention_backend: str = field(default="auto", metadata=opt(
        "Attention kernel: sdpa (torch scaled_dot_product_attention), flash (the flash-attn package), or auto "
        "(flash when importable, on CUDA and in fp16/bf16, else sdpa; the choice is logged).",
        choices=("auto", "sdpa", "flash")))
    recompute_granularity: str | None = field(default=None, metadata=opt(
        "Activation recomputation: 'full' recomputes each transformer layer in the backward pass.",
        choices=("full",)))
    decoder_first_pipeline_num_layers: int | None = field(default=None, metadata=opt(
        "Layers on the first pipeline stage (default: an even split)."))
    decoder_last_pipeline_num_layers: int | None = field(default=None, metadata=opt(
        "Layers on the last pipeline stage (default: an even split)."))

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ModelConfig: {msg}")

        for name in ("num_layers", "hidden_size", "num_attention_heads", "make_vocab_size_divisible_by"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            bad(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.normalization not in NORMALIZATIONS:
            bad(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            bad(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
                " (or set kv_channels)")
        if self.head_dim % 2:
            bad(f"the head dimension must be even for RoPE, got {self.head_dim}")
        if self.group_query_attention:
            if self.num_query_groups is None:
                bad("group_query_attention needs num_query_groups")
            if self.num_query_groups < 1 or self.num_attention_heads % self.num_query_groups:
                bad(f"num_query_groups {self.num_query_groups} must divide num_attention_heads "
                    f"{self.num_attention_heads}")
        if self.ffn_hidden_size is None:
            if self.activation == "swiglu":
                # Megatron-LM arguments.py: keep ~the parameters of a 4h MLP with two input projections, multiple of 64
                self.ffn_hidden_size = int((4 * self.hidden_size * 2 / 3) / 64) * 64
            else:
                self.ffn_hidden_size = 4 * self.hidden_size
            if self.ffn_hidden_size < 1:
                bad(f"the default swiglu ffn_hidden_size int(8*{self.hidden_size}/3/64)*64 is 0; set ffn_hidden_size")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size < 1:
            bad(f"vocab_size must be >= 1, got {self.vocab_size}")

    # ---- derived sizes -------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.kv_channels if self.kv_channels is not None else self.hidden_size // self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_query_groups if self.group_query_attention else self.num_attention_heads

    @property
    def tied_embeddings(self) -> bool:
        return not self.untie_embeddings_and_output_weights

    def padded_vocab_size(self, tp_size: int = 1) -> int:
        """Megatron's _vocab_size_with_padding: round up to a multiple of make_vocab_size_divisible_by * tp."""
        if self.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is not set (the trainer sets it from the tokenizer)")
        multiple = self.make_vocab_size_divisible_by * tp_size
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def check_tensor_parallel(self, tp_size: int) -> None:
        """Raise a clear error if this architecture cannot be split over `tp_size` ranks."""
        problems = []
        if self.num_attention_heads % tp_size:
            problems.append(f"num_attention_heads {self.num_attention_heads}")
        if self.num_kv_heads % tp_size:
            problems.append(f"number of query groups (kv heads) {self.num_kv_heads}")
        if self.ffn_hidden_size % tp_size:
            problems.append(f"ffn_hidden_size {self.ffn_hidden_size}")
        if problems:
            raise ValueError(f"ModelConfig: not divisible by the tensor-parallel size {tp_size}: "
                             + ", ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown fields {unknown}")
        return cls(**d)
