from .tokenizer import (
    EOD_TOKEN,
    HIDDEN_TOKEN,
    PAD_TOKEN,
    RESERVED_TOKENS,
    TOKENIZER_TYPES,
    HFTokenizer,
    NullTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    build_tokenizer,
    check_reserved_ids,
)

__all__ = [
    "EOD_TOKEN", "HIDDEN_TOKEN", "PAD_TOKEN", "RESERVED_TOKENS", "TOKENIZER_TYPES", "HFTokenizer", "NullTokenizer",
    "SentencePieceTokenizer", "Tokenizer", "TokenizerError", "build_tokenizer", "check_reserved_ids",
]
