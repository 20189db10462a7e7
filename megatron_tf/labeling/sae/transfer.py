"""Label transfer from reference-LM tokens to training tokens through character spans, with an exact byte map.

A training document is decoded from its token ids with the tokenizer's byte table (`TokenBytes`): token i covers
bytes [off[i], off[i+1]). Those bytes need not be valid UTF-8 (a byte-fallback piece can be cut off at a document end,
and a dataset may hold anything), but the reference tokenizer needs a `str`. `document_text` decodes with
errors="surrogateescape" (each invalid byte becomes exactly one lone surrogate U+DC80+b) to get the exact
character -> byte map, then replaces those surrogates with U+FFFD: one character per invalid byte, so the map stays
exact and the text is valid for any tokenizer (Rust `tokenizers` refuses lone surrogates).

The reference tokenizer returns [start, end) character spans per token. A forget reference token marks its
characters; a training token is forget iff its byte span overlaps the byte span of a forget character
(`blocklist.mark_spans`). Empty spans (special tokens, the empty end-of-document token) never mark and are never
marked. Worked example (docs/sae_labels.md): text "Take aspirin." with reference tokens "Take", " asp", "irin", "."
and forget reference tokens " asp" and "irin" (characters 4..12); training tokens "Take a", "spir", "in." cover bytes
0..6, 6..10, 10..13: all three overlap characters 4..12, so all three are forget.
"""

from __future__ import annotations

import re

import numpy as np

from ..blocklist import char_to_byte_offsets, mark_spans

_REPLACEMENT = "\ufffd"
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of an invalid byte


def document_text(data: bytes) -> tuple[str, np.ndarray | None]:
    """(text, c2b): text valid for any tokenizer, and int64 c2b[len(text) + 1] giving the byte offset of each
    character in `data` (None when `data` is ASCII and the map is the identity)."""
    s = data.decode("utf-8", errors="surrogateescape")
    c2b = char_to_byte_offsets(s)
    if c2b is not None:
        s = _ESCAPED.sub(_REPLACEMENT, s)
    return s, c2b


def char_spans_to_bytes(starts: np.ndarray, ends: np.ndarray, c2b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if c2b is None:
        return starts, ends
    return c2b[starts], c2b[ends]


def transfer_labels(ref_offsets: np.ndarray, ref_forget: np.ndarray, c2b: np.ndarray | None,
                    train_offsets: np.ndarray) -> np.ndarray:
    """bool per training token: its byte span overlaps a forget reference token's character span.

    ref_offsets: int [R, 2] character spans of the reference tokens in the document text; ref_forget: bool [R];
    c2b: the text's character -> byte map (None = identity); train_offsets: int64 [N + 1] byte offsets of the N
    training tokens.
    """
    ref_offsets = np.asarray(ref_offsets, dtype=np.int64).reshape(-1, 2)
    ref_forget = np.asarray(ref_forget, dtype=bool)
    if ref_forget.shape != (ref_offsets.shape[0],):
        raise ValueError(f"{ref_forget.shape[0]} labels for {ref_offsets.shape[0]} reference tokens")
    sel = ref_offsets[ref_forget]
    sel = sel[sel[:, 1] > sel[:, 0]]
    b0, b1 = char_spans_to_bytes(sel[:, 0], sel[:, 1], c2b)
    return mark_spans(np.asarray(train_offsets, dtype=np.int64), b0, b1)
