"""Token ids -> the UTF-8 bytes they stand for, vectorised, with the byte span of every token.

Labelers that work on text (the blocklist, span transfer) decode a document by concatenating the bytes of its tokens
(`Tokenizer.token_bytes_table`), never by re-tokenizing: token i then covers exactly the bytes
[offsets[i], offsets[i + 1]) of the document text, so a match found in the text maps back to tokens with two
`np.searchsorted` calls. Byte-fallback tokens that are not valid UTF-8 on their own (one byte of a multi-byte
character) are fine because the whole document is decoded at once.

The table is stored flat: `data` is the concatenation of all entries, entry v is data[start[v] : start[v] + length[v]].
"""

from __future__ import annotations

import numpy as np

from ..tokenizer.tokenizer import Tokenizer


class TokenBytes:
    def __init__(self, table: list[bytes]):
        lengths = np.fromiter((len(b) for b in table), dtype=np.int64, count=len(table))
        self.start = np.zeros(len(table) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.start[1:])
        self.length = lengths
        self.data = np.frombuffer(b"".join(table), dtype=np.uint8).copy()
        self.vocab_size = len(table)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TokenBytes:
        return cls(tokenizer.token_bytes_table())

    def check_ids(self, ids: np.ndarray, where: str = "") -> None:
        if ids.size and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise ValueError(f"{where}token id {bad} is outside the tokenizer's vocabulary [0, {self.vocab_size})")

    def decode(self, ids: np.ndarray) -> tuple[bytes, np.ndarray]:
        """(document bytes, int64 offsets[len(ids) + 1]): token i is bytes [offsets[i], offsets[i + 1])."""
        ids = np.asarray(ids, dtype=np.int64)
        self.check_ids(ids)
        lens = self.length[ids]
        offsets = np.zeros(ids.size + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        total = int(offsets[-1])
        if total == 0:
            return b"", offsets
        # Output byte j of token i reads table byte start[ids[i]] + (j - offsets[i]).
        src = np.arange(total, dtype=np.int64) + np.repeat(self.start[ids] - offsets[:-1], lens)
        return self.data[src].tobytes(), offsets
