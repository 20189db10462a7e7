"""Exact batch encoding through a word cache, for SentencePiece BPE models whose pieces never cross a space.

Why it is exact. SentencePiece BPE encodes by repeatedly merging the adjacent pair of symbols whose concatenation is
the best-scoring vocabulary piece (sentencepiece/src/bpe_model.cc). A merge only ever produces a vocabulary piece,
so if no piece contains the whitespace symbol U+2581 ("▁") after its first character, no merge ever spans the
position in front of a space: the text splits there into independent words and

    encode(text) == encode(w0) + encode(" " + w1) + encode(" " + w2) + ...,   [w0, w1, ...] = text.split(" ")

(with identity normalization, no dummy prefix and no extra-whitespace removal, the normalizer maps each character on
its own, so splitting before or after normalizing is the same). A literal U+2581 in the text is one more position
no merge spans, so it does not matter that str.split(" ") keeps it inside a word. Byte fallback and unknown
characters are decided per symbol, so they are local as well.

Natural text repeats words (Zipf), so encoding each distinct word once and looking the rest up in a dict is much
cheaper than SentencePiece's encode. Measured end to end by benchmarks/bench_preprocess.py (45 MB of medical and
general English, the 8k demo model, same output bytes): preprocessing runs 3.1-4.0x faster than Megatron-LM's
preprocess_data.py on 16 idle cores and 2.8-3.0x on the (busy) 2-core machine; without the cache 0.9-1.2x.
`check_word_cache` verifies the conditions on the model itself (never assumed); models that fail them (Llama-style
dummy prefix, NFKC normalization, whitespace-only pieces) are encoded by SentencePiece directly. Tests compare both.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

SPACE_SYMBOL = "\u2581"


def check_word_cache(model_proto: bytes) -> str | None:
    """None if the word cache encodes this SentencePiece model exactly, else the reason it does not."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(model_proto)
    ts, ns = m.trainer_spec, m.normalizer_spec
    if ts.model_type != pb.TrainerSpec.BPE:
        return f"model type {pb.TrainerSpec.ModelType.Name(ts.model_type)} is not BPE"
    if ns.precompiled_charsmap or ns.name not in ("identity", ""):
        return f"normalization {ns.name!r} is not identity"
    if ns.add_dummy_prefix:
        return "add_dummy_prefix is on"
    if ns.remove_extra_whitespaces:
        return "remove_extra_whitespaces is on"
    if not ns.escape_whitespaces:
        return "escape_whitespaces is off"
    if ts.treat_whitespace_as_suffix:
        return "treat_whitespace_as_suffix is on"
    for p in m.pieces:
        if p.type == pb.ModelProto.SentencePiece.USER_DEFINED:
            return f"user-defined symbol {p.piece!r} (matched anywhere in text)"
        if SPACE_SYMBOL in p.piece[1:]:
            return f"piece {p.piece!r} spans a space"
    return None


class WordCacheEncoder:
    """`encode_batch(texts, dtype)` -> (all tokens as one array, tokens per text), equal to SentencePiece's encode.

    The cache maps a word w to the bytes of encode(" " + w) in the output dtype, so a document is assembled by
    `bytes.join` (a memcpy per word) instead of converting every token to and from a Python int.
    """

    def __init__(self, model_proto: bytes, num_threads: int = 1, max_words: int = 1 << 20):
        import sentencepiece as spm

        reason = check_word_cache(model_proto)
        if reason is not None:
            raise ValueError(f"word cache does not apply to this model: {reason}")
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._threads = num_threads
        self._max_words = max_words
        self._dtype = None
        self._cache: dict[str, bytes] = {}  # w -> encode(" " + w) as bytes of self._dtype

    def encode_batch(self, texts: Sequence[str], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.dtype(dtype)
        if dtype != self._dtype:
            self._cache.clear()
            self._dtype = dtype
        cache = self._cache
        heads = [t.partition(" ") for t in texts]  # (first word, " " or "", the rest)
        words = [tail.split(" ") if sep else [] for _, sep, tail in heads]
        seen = set(chain.from_iterable(words))
        missing = list(seen.difference(cache))
        if missing:  # one SentencePiece call per batch: each call has a fixed cost of about 0.2 ms
            if len(cache) + len(missing) > self._max_words:
                cache.clear()  # memory bound; results do not depend on what is cached
                missing = list(seen)
            encoded = self._sp.encode([" " + w for w in missing], num_threads=self._threads)
            cache.update(zip(missing, (np.array(e, dtype=dtype).tobytes() for e in encoded)))
        firsts = self._sp.encode([h[0] for h in heads], num_threads=self._threads)
        get = cache.__getitem__
        join = b"".join
        docs = [np.array(f, dtype=dtype).tobytes() + join(map(get, ws)) for f, ws in zip(firsts, words)]
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) // dtype.itemsize
        return np.frombuffer(join(docs), dtype=dtype).copy(), lengths
