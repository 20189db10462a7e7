"""Exact batch encoding through a chunk cache, for Hugging Face byte-level BPE tokenizers (GPT-2 style).

Why it is exact. A `tokenizers` encode runs: added-token extraction, normalizer, pre-tokenizer, model per pre-token.
For the tokenizers this accepts (`check_bytelevel_cache`): no normalizer, no added token that is matched in text
(the project encodes special tokens as text, HFTokenizer's `encode_special_tokens=True`, so only non-special added
tokens would be), the ByteLevel pre-tokenizer with GPT-2's regex and no prefix space, a BPE model without dropout.
Then encode(text) is the concatenation of BPE(bytes(p)) over the regex's pre-tokens p, each encoded on its own.

GPT-2's regex  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+  matches every
character, and only whitespace runs (the last two alternatives) hold a space anywhere but at their start. So at a
space whose previous character is not whitespace, no pre-token crosses (the pre-token before it ends with a
non-whitespace character, the next one starts with the space) and no lookahead looks past it (`(?!\\S)` follows a
whitespace run, which ends before that non-whitespace character). Cutting a text at those spaces ("chunks": the
first word, then " word" pieces) therefore gives

    encode(text) == encode(chunk0) + encode(chunk1) + ...

with every chunk encoded by the real tokenizer (misses are encoded in one `encode_batch` call per batch). The cut
uses Python's str.isspace, a superset of the regex engine's \\s (Unicode White_Space; Python also counts
U+001C-U+001F): a space after a character either one calls whitespace is never a cut, which only makes chunks
longer. Texts without "<whitespace><space>" are cut with str.split(" "), the rest with a regex.

Natural text repeats words (Zipf), so each distinct chunk is encoded once per worker and then copied as bytes.
Measured: the first 12 MB of the benchmark corpus (medical + general English, an 8k byte-level BPE trained by
tools/train_tokenizer.py --type hf): `encode_batch` 5.1 s + 0.2 s for the ids; this cache 1.3 s, same bytes.
Tested: tests/tokenizer/test_bytelevel_cache.py compares against the tokenizer on real text and on probes around
every Unicode code point (all 1.1M: test marked slow; a sample otherwise). The first batch a cache encodes is also
checked against the tokenizer (up to VERIFY_CHARS characters), so a `tokenizers` whose regex engine behaves
otherwise fails loudly instead of writing different ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np

from .word_cache import assemble

VERIFY_CHARS = 1 << 16
_NEEDS_REGEX = re.compile(r"\s ")  # a space after whitespace: str.split(" ") would cut there
_CUT = re.compile(r"(?<=\S)(?= )")  # zero-width: before each space whose previous character is not whitespace


def check_bytelevel_cache(tokenizer_json: str) -> str | None:
    """None if the chunk cache encodes this tokenizer.json exactly (module doc), else the reason it does not."""
    try:
        cfg = json.loads(tokenizer_json)
    except ValueError as e:
        return f"not JSON ({e})"
    if cfg.get("normalizer") is not None:
        return f"normalizer {cfg['normalizer'].get('type')!r} (need none)"
    if cfg.get("truncation") is not None or cfg.get("padding") is not None:
        return "truncation or padding is set"
    pre = cfg.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel":
        return f"pre-tokenizer {pre.get('type')!r} is not ByteLevel"
    if not pre.get("use_regex", True):
        return "ByteLevel pre-tokenizer without its regex (use_regex false)"
    if pre.get("add_prefix_space", False):
        return "ByteLevel add_prefix_space is on"
    model = cfg.get("model") or {}
    if model.get("type") != "BPE":
        return f"model {model.get('type')!r} is not BPE"
    if model.get("dropout") not in (None, 0, 0.0):
        return f"BPE dropout {model.get('dropout')} (encoding is random)"
    for t in cfg.get("added_tokens") or []:
        if not t.get("special", False):
            return f"non-special added token {t.get('content')!r} (matched anywhere in text)"
    return None


def split_text(text: str) -> tuple[str, list[str]]:
    """(first chunk, the words w of the other chunks " " + w): the text cut before every space whose previous
    character is not whitespace (module doc)."""
    if _NEEDS_REGEX.search(text) is None:
        head, sep, tail = text.partition(" ")
        return head, tail.split(" ") if sep else []
    chunks = _CUT.split(text)
    return chunks[0], [c[1:] for c in chunks[1:]]


class ByteLevelChunkEncoder:
    """`encode_batch(texts, dtype)` -> (all tokens as one array, tokens per text), equal to the tokenizer's encode.

    The cache maps a chunk to the bytes of its ids in the output dtype; a document is one `bytes.join`.
    """

    def __init__(self, tokenizer_json: str, max_chunks: int = 1 << 20, verify_chars: int = VERIFY_CHARS):
        from tokenizers import Tokenizer

        reason = check_bytelevel_cache(tokenizer_json)
        if reason is not None:
            raise ValueError(f"chunk cache does not apply to this tokenizer: {reason}")
        self._tok = Tokenizer.from_str(tokenizer_json)
        self._tok.encode_special_tokens = True  # as HFTokenizer: reserved strings in text are text
        self._encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets (>= 0.20)
        self._max_chunks = max_chunks
        self._verify_left = verify_chars
        self._dtype = None
        self._heads: dict[str, bytes] = {}  # first chunk h -> ids of h, as bytes of self._dtype
        self._words: dict[str, bytes] = {}  # w -> ids of " " + w

    def _encode_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._encode(texts, add_special_tokens=False)]

    def encode_batch(self, texts: Sequence[str], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.dtype(dtype)
        if dtype != self._dtype:
            self._heads.clear()
            self._words.clear()
            self._dtype = dtype
        split = [split_text(t) for t in texts]
        heads = [h for h, _ in split]
        missing = list(set(heads).difference(self._heads))
        if missing:
            if len(self._heads) + len(missing) > self._max_chunks:
                self._heads.clear()
                missing = list(set(heads))
            self._heads.update(zip(missing, self._encode_bytes(missing, dtype)))
        docs = assemble(self._words, heads, [w for _, w in split], self._heads, self._fill, dtype)
        if self._verify_left > 0:
            self._verify(texts, docs, dtype)
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) // dtype.itemsize
        return np.frombuffer(b"".join(docs), dtype=dtype).copy(), lengths

    def _encode_bytes(self, texts: list[str], dtype: np.dtype) -> list[bytes]:
        # one tokenizer call per batch (about 11 us per chunk, measured with RAYON_NUM_THREADS=1)
        return [np.array(e, dtype=dtype).tobytes() for e in self._encode_ids(texts)]

    def _fill(self, words: set[str], dtype: np.dtype) -> None:
        cache = self._words
        missing = list(words.difference(cache))
        if len(cache) + len(missing) > self._max_chunks:
            cache.clear()  # memory bound; results do not depend on what is cached
            missing = list(words)
        cache.update(zip(missing, self._encode_bytes([" " + w for w in missing], dtype)))

    def _verify(self, texts: Sequence[str], docs: list[bytes], dtype: np.dtype) -> None:
        """The first documents (up to the verification budget) against the tokenizer itself."""
        n, size = 0, 0
        while n < len(texts) and size < self._verify_left:
            size += len(texts[n])
            n += 1
        self._verify_left -= size
        for i, ids in enumerate(self._encode_ids(list(texts[:n]))):
            if np.array(ids, dtype=dtype).tobytes() != docs[i]:
                raise RuntimeError(
                    f"chunk cache differs from the tokenizer on text {texts[i][:80]!r}: the installed tokenizers "
                    "library splits text otherwise than tokenizer/bytelevel_cache.py assumes; rerun with "
                    "--no-word-cache and report this")
