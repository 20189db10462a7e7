"""Which tokenizer a run uses (Megatron's --tokenizer-type / --tokenizer-model / --vocab-size flags).

    TokenizerConfig(tokenizer_type="SentencePieceTokenizer", tokenizer_model="data/demo/tokenizer/demo_sp.model")
    build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.vocab_size)    # tokenizer.py
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_tf.config.cli import opt

from .tokenizer import TOKENIZER_TYPES


@dataclass
class TokenizerConfig:
    """Tokenizer (Megatron's flags)."""

    tokenizer_type: str = field(default="SentencePieceTokenizer", metadata=opt(
        "Tokenizer kind.", choices=TOKENIZER_TYPES))
    tokenizer_model: str | None = field(default=None, metadata=opt("SentencePiece model or HF tokenizer path."))
    vocab_size: int | None = field(default=None, metadata=opt(
        "Vocabulary size of --tokenizer-type NullTokenizer (ids are whitespace-separated integers)."))

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        """From a saved run's configs["tokenizer"] (keys this version does not know are ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
