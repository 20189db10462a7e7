"""Token id -> bytes tables (Tokenizer.token_bytes_table) and the vectorised decode (labeling/token_text.py)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.labeling.token_text import TokenBytes
from megatron_tf.tokenizer.tokenizer import NullTokenizer

TEXTS = [
    "The patient was admitted with pneumonia.",
    "Ménière's disease, crème brûlée; 中文 and 😀 are outside the tiny vocabulary.",
    "Tabs\tand\nnewlines  and  double spaces, <|endoftext|> as plain text.",
    "x",
]


def test_sentencepiece_table_reproduces_normalized_text_with_byte_fallback(sp_tok):
    table = sp_tok.token_bytes_table()
    assert len(table) == sp_tok.vocab_size
    assert table[sp_tok.eod] == table[sp_tok.hidden] == table[sp_tok.pad] == b""
    byte_pieces = [i for i in range(sp_tok.vocab_size) if sp_tok._sp.is_byte(i)]
    assert len(byte_pieces) == 256 and sorted(table[i] for i in byte_pieces) == [bytes([b]) for b in range(256)]
    for text in TEXTS:
        ids = sp_tok.tokenize(text)
        joined = b"".join(table[i] for i in ids)
        # SentencePiece's decoder drops the dummy-prefix space of the first piece; the table keeps it.
        assert joined == b" " + sp_tok.detokenize(ids).encode("utf-8")
    ids = sp_tok.tokenize("中文😀")
    assert any(i in byte_pieces for i in ids)  # the characters really go through byte fallback
    assert b"".join(table[i] for i in ids) == " 中文😀".encode()


def test_hf_byte_level_table_reproduces_text_exactly(hf_tok):
    table = hf_tok.token_bytes_table()
    assert len(table) == hf_tok.vocab_size
    assert table[hf_tok.eod] == table[hf_tok.hidden] == table[hf_tok.pad] == b""
    for text in TEXTS:
        ids = hf_tok.tokenize(text)
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")


def test_null_tokenizer_table():
    tok = NullTokenizer(10)
    table = tok.token_bytes_table()
    assert table[:3] == [b"0 ", b"1 ", b"2 "] and table[6] == b"6 " and table[7:] == [b"", b"", b""]
    ids = tok.tokenize("3 1 4 1 5")
    assert b"".join(table[i] for i in ids).decode() == tok.detokenize(ids) + " "


def test_token_bytes_decode_matches_join_and_offsets():
    table = [b"", b"a", b"bc", b"\xc3", b"\xa9", b"def ", b"\xff"]
    tb = TokenBytes(table)
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 200):
        ids = rng.integers(0, len(table), n)
        data, offs = tb.decode(ids)
        assert data == b"".join(table[i] for i in ids)
        assert offs.tolist() == [0, *np.cumsum([len(table[i]) for i in ids]).tolist()]
        for k, i in enumerate(ids):
            assert data[offs[k] : offs[k + 1]] == table[i]
    with pytest.raises(ValueError, match="token id 7 is outside the tokenizer's vocabulary \\[0, 7\\)"):
        tb.decode(np.array([1, 7]))


def test_hf_metaspace_byte_fallback_table(tmp_path):
    """Llama-style HF tokenizer: "▁" for spaces and <0xAB> byte-fallback tokens for characters outside the vocab."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    from megatron_tf.tokenizer.tokenizer import RESERVED_TOKENS, HFTokenizer

    vocab = {t: i for i, t in enumerate(RESERVED_TOKENS)}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for c in "\u2581abcdefghijklmnopqrstuvwxyz'é":
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(list(RESERVED_TOKENS))
    tok.save(str(tmp_path / "t.json"))
    hf = HFTokenizer(str(tmp_path / "t.json"))
    table = hf.token_bytes_table()
    assert table[vocab["<0xC3>"]] == b"\xc3" and table[vocab["\u2581"]] == b" " and table[hf.eod] == b""
    for text in ["Ménière's disease 中文 😀 end", "the plain text"]:
        ids = hf.tokenize(text)
        assert b"".join(table[i] for i in ids) == b" " + hf.detokenize(ids).encode("utf-8") == (" " + text).encode()
    assert any(hf._tok.id_to_token(i) == "<0xE4>" for i in hf.tokenize("中"))
