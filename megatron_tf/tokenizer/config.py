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


@dataclass
class TokenizerOverride:
    """Tokenizer flags of tools that read a checkpoint: unset, the checkpoint's own tokenizer is used."""

    tokenizer_type: str | None = field(default=None, metadata=opt(
        "Rebuild the tokenizer from these flags instead of the checkpoint's (e.g. when its file moved).",
        choices=TOKENIZER_TYPES))
    tokenizer_model: str | None = field(default=None, metadata=opt(
        "Its file (SentencePiece .model or HF tokenizer.json)."))
    vocab_size: int | None = field(default=None, metadata=opt("NullTokenizer only."))

    def build(self):
        """The tokenizer these flags name, or None when --tokenizer-type is not given."""
        if not self.tokenizer_type:
            return None
        from .tokenizer import build_tokenizer

        return build_tokenizer(self.tokenizer_type, self.tokenizer_model, self.vocab_size)
