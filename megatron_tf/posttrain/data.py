"""Token data for the attacks, RMU and refusal training: documents, packed windows, padded rows, batches.

    docs = load_documents(["data/demo/train/medical.jsonl.xz"], tokenizer)   # list of int64 arrays (+ <eod>)
    check_disjoint(docs, eval_docs, "attack text", "evaluation text")           # no document in both
    batches = PackedBatches(docs, seq_length=256, batch_size=8, seed=1)        # infinite, reshuffled per epoch
    next(batches) -> {"tokens": [b, s], "labels": [b, s], "loss_mask": [b, s]}  (int64, int64, float32)

Packing (language-model finetuning): the documents, each already ending in `<|endoftext|>`, are concatenated into
one stream x; window i is x[i s : (i + 1) s + 1] (s = seq_length; consecutive windows share one token, as Megatron's
GPT samples), tokens = window[:-1], labels = window[1:], every label learned. The tail shorter than s + 1 is
dropped. Example: docs [5 6 E] [7 E] (E = eod), s = 2: x = 5 6 E 7 E, windows [5 6 E] [E 7 E]; the first gives
tokens (5 6) and labels (6 E).

Rows (supervised finetuning, RMU): variable-length sequences, right-padded with the pad id into one [b, s] batch;
padded positions get loss weight 0 (and a causal model never lets a real position see the padding after it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron_tf.evaluation.text_sets import TextSetSpec, iter_set_documents, open_text_set


def load_documents(paths: Sequence[str], tokenizer, *, limit: int | None = None, append_eod: bool = True
                   ) -> list[np.ndarray]:
    """Token ids of every document of JSONL files (the `text` field) and/or indexed-dataset prefixes, in order.
    JSONL documents get `<|endoftext|>` appended (append_eod), as tools/preprocess_data.py --append-eod writes them;
    indexed documents are returned as stored. `limit`: at most this many documents (the first ones)."""
    if not paths:
        raise ValueError("load_documents: no paths given")
    sources = open_text_set(TextSetSpec("documents", "forget", list(paths)), tokenizer, use_sidecar=False,
                            append_eod=append_eod)
    return [np.asarray(d.tokens, dtype=np.int64) for d in iter_set_documents(sources, limit)]


def _doc_key(doc: np.ndarray, eod: int | None) -> str:
    d = np.asarray(doc, dtype=np.int64)
    if eod is not None and d.size and d[-1] == eod:
        d = d[:-1]
    return hashlib.sha256(d.tobytes()).hexdigest()


def check_disjoint(a: Sequence[np.ndarray], b: Sequence[np.ndarray], name_a: str, name_b: str,
                   eod: int | None = None) -> None:
    """Raise if any document (its token ids, a trailing eod ignored) is in both sets."""
    keys = {_doc_key(d, eod) for d in a}
    both = [i for i, d in enumerate(b) if _doc_key(d, eod) in keys]
    if both:
        raise ValueError(f"{len(both)} of the {len(b)} documents of the {name_b} are also in the {name_a} "
                         f"(first: document {both[0]}); keep them apart")


def pack_windows(docs: Sequence[np.ndarray], seq_length: int) -> np.ndarray:
    """int64 [n, seq_length + 1]: the packed windows of the module docstring."""
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    n = (len(stream) - 1) // seq_length if len(stream) > seq_length else 0
    if n == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens: fewer than one window of {seq_length + 1}")
    idx = np.arange(n)[:, None] * seq_length + np.arange(seq_length + 1)[None, :]
    return stream[idx]


@dataclass
class Row:
    """One sequence and a 0/1 weight per position (what a weight means is up to the user: for LM rows it is the
    weight of predicting ids[j + 1] at position j; for RMU rows the weight of position j's activation)."""

    ids: list[int]
    weights: list[float]

    def __post_init__(self):
        if len(self.ids) != len(self.weights):
            raise ValueError(f"Row: {len(self.ids)} ids but {len(self.weights)} weights")


def pad_rows(rows: Sequence[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64 [b, s] right-padded with pad_id, weights float32 [b, s] with 0 on the padding)."""
    s = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), s), pad_id, dtype=torch.int64)
    w = torch.zeros((len(rows), s), dtype=torch.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.int64)
        w[i, : len(r.weights)] = torch.tensor(r.weights, dtype=torch.float32)
    return ids, w


def lm_batch(rows: Sequence[Row], pad_id: int) -> dict:
    """LM batch of rows whose weights mark the positions whose NEXT token is learned: tokens = ids[:, :-1],
    labels = ids[:, 1:], loss_mask = weights[:, :-1] (0 on padding)."""
    ids, w = pad_rows(rows, pad_id)
    return {"tokens": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous(),
            "loss_mask": w[:, :-1].contiguous()}


class RowBatches:
    """Infinite iterator over lists of `batch_size` rows, reshuffled every epoch from (seed, epoch)."""

    def __init__(self, rows: Sequence, batch_size: int, seed: int, shuffle: bool = True):
        if not rows:
            raise ValueError("RowBatches: no rows")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows, self.batch_size, self.seed, self.shuffle = list(rows), batch_size, seed, shuffle
        self.epoch, self._order, self._pos = 0, self._permutation(0), 0

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def __iter__(self):
        return self

    def __next__(self) -> list:
        out = []
        while len(out) < self.batch_size:
            if self._pos == len(self._order):
                self.epoch += 1
                self._order, self._pos = self._permutation(self.epoch), 0
            out.append(self.rows[self._order[self._pos]])
            self._pos += 1
        return out


class PackedBatches:
    """Infinite iterator of packed LM batches; the window order is a permutation drawn from (seed, epoch) (the
    windows are drawn as RowBatches draws rows)."""

    def __init__(self, docs: Sequence[np.ndarray], seq_length: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.windows = pack_windows(docs, seq_length)
        self.batch_size, self.seed = batch_size, seed
        self._windows = RowBatches(list(self.windows), batch_size, seed)

    @property
    def epoch(self) -> int:
        return self._windows.epoch

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * (self.windows.shape[1] - 1)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        w = torch.from_numpy(np.stack(next(self._windows)))
        return {"tokens": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous(),
                "loss_mask": torch.ones(w.shape[0], w.shape[1] - 1, dtype=torch.float32)}


def document_rows(docs: Sequence[np.ndarray], max_length: int, start_id: int, *, all_windows: bool = True,
                  min_tokens: int = 1) -> list[Row]:
    """RMU rows: [start_id] + up to max_length - 1 tokens of a document (the start token has weight 0, every text
    token weight 1). all_windows=False keeps only each document's first window (the WMDP reference truncates each
    text); otherwise a long document gives consecutive windows. Windows with fewer than min_tokens text tokens are
    dropped."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    n = max_length - 1
    out = []
    for d in docs:
        d = np.asarray(d, dtype=np.int64)
        starts = range(0, len(d), n) if all_windows else range(0, min(len(d), 1))
        for s in starts:
            piece = d[s : s + n].tolist()
            if len(piece) >= min_tokens:
                out.append(Row([start_id, *piece], [0.0] + [1.0] * len(piece)))
    return out
