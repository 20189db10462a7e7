"""The word-cache encoder (tokenizer/word_cache.py) gives exactly SentencePiece's ids, and refuses models where the
per-word split would not be exact."""

import os

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from megatron_tf.tokenizer.word_cache import WordCacheEncoder, check_word_cache
from megatron_tf.utils.jsonl import iter_texts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SP_MODEL = os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model")

EDGE = ["", " ", "   ", "a", " a", "a ", "a  b", "  a  b  ", "\u2581", "a\u2581b", " \u2581 ", "\u2581\u2581x",
        "x\n y", "\t \t", "日本 語", "🧬 🦠", "<|endoftext|> <|hidden|>", "end.\n\nNext paragraph", "1 234 5678"]


@pytest.fixture(scope="module")
def model():
    return open(SP_MODEL, "rb").read()


def _reference(model_bytes, texts):
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    return sp.encode(list(texts))


def _assert_same(enc, model_bytes, texts):
    tokens, lengths = enc.encode_batch(texts, np.int32)
    ref = _reference(model_bytes, texts)
    assert lengths.tolist() == [len(r) for r in ref]
    assert tokens.tolist() == [i for r in ref for i in r]


def test_demo_model_qualifies(model):
    assert check_word_cache(model) is None


def test_edge_cases_equal_sentencepiece(model):
    _assert_same(WordCacheEncoder(model), model, EDGE)


def test_random_strings_equal_sentencepiece(model):
    rng = np.random.default_rng(0)
    alphabet = list("abcdefgh   \u2581\n\t.,-0123") + ["é", "日", "🧬", "ß", "\u2028", "\u00a0"]
    texts = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(0, 40, size=2000)]
    enc = WordCacheEncoder(model)
    for i in range(0, len(texts), 250):  # several batches: later ones hit the cache
        _assert_same(enc, model, texts[i : i + 250])


def test_real_text_equals_sentencepiece_with_cache_eviction(model):
    texts = [t for d in ("medical", "biology", "general")
             for t in iter_texts([os.path.join(REPO, "data", "demo", "heldout", f"{d}.jsonl.xz")])][:300]
    distinct = len({w for t in texts for w in t.split(" ")[1:]})
    for max_words in (1 << 20, 50):  # a tiny cache is cleared again and again: same result
        enc = WordCacheEncoder(model, max_words=max_words)
        for i in range(0, len(texts), 60):
            _assert_same(enc, model, texts[i : i + 60])
        assert (len(enc._cache) == distinct) == (max_words > distinct)


def _modified(model, edit):
    m = pb.ModelProto()
    m.ParseFromString(model)
    edit(m)
    return m.SerializeToString()


def _set_piece(m, text):
    p = next(p for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL and len(p.piece) > 3)
    p.piece = text


@pytest.mark.parametrize("edit,reason", [
    (lambda m: setattr(m.normalizer_spec, "add_dummy_prefix", True), "add_dummy_prefix is on"),
    (lambda m: setattr(m.normalizer_spec, "remove_extra_whitespaces", True), "remove_extra_whitespaces is on"),
    (lambda m: setattr(m.normalizer_spec, "name", "nmt_nfkc"), "normalization 'nmt_nfkc' is not identity"),
    (lambda m: setattr(m.trainer_spec, "model_type", pb.TrainerSpec.UNIGRAM), "model type UNIGRAM is not BPE"),
    (lambda m: setattr(m.trainer_spec, "treat_whitespace_as_suffix", True), "treat_whitespace_as_suffix"),
    (lambda m: _set_piece(m, "ab\u2581cd"), "piece 'ab\u2581cd' spans a space"),
    (lambda m: _set_piece(m, "\u2581\u2581"), "spans a space"),
])
def test_models_where_it_would_not_be_exact_are_refused(model, edit, reason):
    bad = _modified(model, edit)
    assert reason in check_word_cache(bad)
    with pytest.raises(ValueError, match="word cache does not apply"):
        WordCacheEncoder(bad)


def test_whitespace_only_piece_really_breaks_the_split(model):
    """Why "▁▁" must be refused: with such a piece SentencePiece merges across the split point."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    pieces = sp.encode("a  b", out_type=str)
    assert pieces == ["a", "\u2581", "\u2581b"]  # the demo model: no piece spans the position before a space
    m = pb.ModelProto()
    m.ParseFromString(model)
    new = m.pieces.add()
    new.piece, new.score, new.type = "\u2581\u2581", 0.0, pb.ModelProto.SentencePiece.NORMAL
    sp2 = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    assert "\u2581\u2581" in sp2.encode("a  b", out_type=str)  # a merge over the split point
    assert check_word_cache(m.SerializeToString()) is not None
