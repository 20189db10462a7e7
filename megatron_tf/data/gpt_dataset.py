"""GPT dataset with Megatron's sample-building algorithm (documents packed into seq_length + 1 token samples).

Same algorithm as megatron-core 0.16.1 (gpt_dataset.py + helpers.cpp), so the same data, split, seed, seq_length and
sample count give the same samples; written independently: the sample index is megatron-core's loop in a small C
helper (data/native.py), or without a C compiler a vectorised NumPy formulation (cumulative sums + counting).
Worked example: docs/gpt_dataset.md.

- document index: the split's document (sequence) ids repeated for E epochs and shuffled with
  `np.random.RandomState(seed)`; E = smallest epoch count with E * tokens_per_epoch >= num_samples * seq_length + 1.
  When E > 1 and the last epoch contributes fewer than int(0.8 * samples_per_epoch) samples, the first E - 1 epochs
  are shuffled together and the last epoch separately ("separate final epoch"), so its partial use stays uniform.
- sample index [N + 1, 2]: entry j = (position in the document index, offset in that document) of stream token
  j * seq_length, where the stream is the concatenation of the documents in document-index order. Sample j covers
  stream tokens [j * seq_length, (j + 1) * seq_length] inclusive (seq_length + 1 tokens: inputs and shifted labels),
  so consecutive samples share one token. N = (E * tokens_per_epoch - 1) // seq_length (the partial last sample is
  dropped). Entry 0 is always (0, 0).
- shuffle index: a permutation of [0, N) from the same RandomState (drawn after the document index); with a
  separate final epoch, the samples of the first E - 1 epochs and the rest are permuted separately.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..utils.logging import get_logger
from .index_cache import array_digest, load_or_build
from .indexed_dataset import IndexedDataset
from .native import load_library
from .reverse import reversed_ranges

log = get_logger(__name__)

INDEX_VERSION = "megatron_tf-gpt-indices-v1"
SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80  # megatron-core gpt_dataset.py
_CHUNK_DOCS = 1 << 16


def num_epochs_for(tokens_per_epoch: int, seq_length: int, num_samples: int | None) -> int:
    if num_samples is None:
        return 1
    needed = num_samples * seq_length + 1
    return max(1, -(-needed // tokens_per_epoch))


def separate_final_epoch(tokens_per_epoch: int, seq_length: int, num_samples: int | None, num_epochs: int) -> bool:
    if num_epochs == 1 or num_samples is None:
        return False
    sans_final = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
    from_final = num_samples - sans_final
    per_epoch = (tokens_per_epoch - 1) // seq_length
    return from_final < int(SEPARATE_FINAL_EPOCH_THRESHOLD * per_epoch)


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                         separate_final: bool) -> np.ndarray:
    """int32 [num_epochs * len(documents)]: documents tiled per epoch, shuffled (last epoch apart if separate)."""
    if separate_final and num_epochs > 1:
        first = build_document_index(documents, num_epochs - 1, rng, False)
        last = build_document_index(documents, 1, rng, False)
        return np.concatenate((first, last))
    doc_index = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)
    rng.shuffle(doc_index)
    return doc_index


def build_sample_index(sizes: np.ndarray, doc_index: np.ndarray, seq_length: int, num_epochs: int,
                       tokens_per_epoch: int) -> np.ndarray:
    """[N + 1, 2] (document-index position, offset) of stream token j * seq_length, j = 0..N (see module doc).

    megatron-core's loop in C (data/native.py mtf_sample_index: one pass over the documents, ~2.5x faster than the
    NumPy formulation on the 2-core development machine), or without a C compiler `sample_index_numpy`.
    """
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    if num_samples < 1:
        raise ValueError(f"not enough tokens for one sample: {num_epochs} epoch(s) x {tokens_per_epoch} tokens, "
                         f"seq_length {seq_length} needs at least {seq_length + 1}")
    big = max(len(doc_index), int(np.max(sizes))) > np.iinfo(np.int32).max  # megatron's int32/int64 choice
    lib = load_library()
    if lib is None:
        return sample_index_numpy(sizes, doc_index, seq_length, num_samples, np.int64 if big else np.int32)
    sizes32 = np.ascontiguousarray(sizes, dtype=np.int32)
    docs32 = np.ascontiguousarray(doc_index, dtype=np.int32)
    out = np.empty((num_samples + 1, 2), dtype=np.int64)
    if lib.mtf_sample_index(sizes32.ctypes.data, docs32.ctypes.data, len(docs32), seq_length, num_samples,
                            out.ctypes.data) != 0:
        raise AssertionError(f"sample index ran out of documents before entry {num_samples}")
    return out if big else out.astype(np.int32)


def sample_index_numpy(sizes: np.ndarray, doc_index: np.ndarray, seq_length: int, num_samples: int,
                       dtype) -> np.ndarray:
    """build_sample_index vectorised per chunk of documents: ends = cumsum(document lengths in stream order); the
    document holding stream token p is the first with end > p (searchsorted side="right", which also skips empty
    documents like the C++ loop)."""
    out = np.empty((num_samples + 1, 2), dtype=dtype)
    sizes = np.asarray(sizes)
    j, carry = 0, 0  # next entry to place; stream tokens before the chunk
    # Chunks of the document index small enough to stay in cache (one pass over 6M documents in one piece is
    # memory bound: ~4x slower, measured). Entry j goes in the chunk holding stream token j * seq.
    ends = np.empty(min(_CHUNK_DOCS, len(doc_index)), dtype=np.int64)
    c = np.empty_like(ends)
    for c0 in range(0, len(doc_index), _CHUNK_DOCS):
        lengths = sizes[doc_index[c0 : c0 + _CHUNK_DOCS]]
        m = len(lengths)
        e, cc = ends[:m], c[:m]
        np.cumsum(lengths, dtype=np.int64, out=e)
        e += carry
        last = int(e[-1])
        j_hi = min(num_samples + 1, -(-last // seq_length))  # entries with j * seq < last
        if j_hi > j:
            # k = searchsorted(ends, pos, "right") without a binary search (cache misses: ~3x slower, measured):
            # ceil(end_d / seq) entries j have j * seq < end_d, so k[j] = #{d : ceil(end_d / seq) <= j}.
            np.subtract(e, 1, out=cc)
            np.floor_divide(cc, seq_length, out=cc)
            cc += 1 - j  # >= 0: every end in this chunk is >= carry, and j = ceil(carry / seq)
            k = np.cumsum(np.bincount(cc, minlength=j_hi - j)[: j_hi - j])
            pos = np.arange(j, j_hi, dtype=np.int64) * seq_length
            out[j:j_hi, 0] = k + c0
            out[j:j_hi, 1] = pos - e[k] + lengths[k]
            j = j_hi
        carry = last
    if j != num_samples + 1:
        raise AssertionError(f"sample index filled {j} of {num_samples + 1} entries")
    out[0] = 0
    return out


def build_shuffle_index(num_first: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """Permutation of [0, num_first) followed by a permutation of [num_first, total)."""
    dtype = np.int64 if total >= np.iinfo(np.uint32).max - 1 else np.uint32
    first = np.arange(num_first, dtype=dtype)
    rng.shuffle(first)
    if num_first == total:
        return first
    last = np.arange(num_first, total, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def build_indices(sizes: np.ndarray, documents: np.ndarray, seq_length: int, num_samples: int | None,
                  seed: int) -> dict[str, np.ndarray]:
    """The three indices for the given documents (sequence ids), in megatron-core's RNG order."""
    documents = np.asarray(documents)
    tokens_per_epoch = int(np.asarray(sizes)[documents].sum(dtype=np.int64))
    if tokens_per_epoch < 2:
        raise ValueError(f"the selected {len(documents)} documents hold {tokens_per_epoch} tokens; need at least 2")
    epochs = num_epochs_for(tokens_per_epoch, seq_length, num_samples)
    separate = separate_final_epoch(tokens_per_epoch, seq_length, num_samples, epochs)
    rng = np.random.RandomState(seed)
    doc_index = build_document_index(documents, epochs, rng, separate)
    sample_index = build_sample_index(sizes, doc_index, seq_length, epochs, tokens_per_epoch)
    n = sample_index.shape[0] - 1
    first = ((epochs - 1) * tokens_per_epoch - 1) // seq_length if separate else n
    shuffle_index = build_shuffle_index(first, n, rng)
    return {"document_index": doc_index, "sample_index": sample_index, "shuffle_index": shuffle_index}


def ranges_to_positions(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each range, vectorised."""
    lengths = ends - starts
    before = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - before, lengths)


class GPTDataset(torch.utils.data.Dataset):
    """Samples of one indexed dataset (a split's documents). `ds[i]` -> dict of numpy arrays (see filters.py).

    Args:
        source: the opened prefix (builder.DataSource: indexed dataset, fingerprint, forget flags).
        documents: sequence ids of the split (after the document filter), int32.
        num_samples: minimum number of samples (None: one epoch); len(ds) may be larger (whole epochs' samples).
        sample_filter: filters.SampleFilter turning raw tokens + forget flags into the sample dict.
        cache_dir: index cache directory (None: in memory).
        reverse_documents: serve every document reversed (data/reverse.py: content reversed, a trailing eod kept
            last; needs `eod_id`). The indices depend only on sequence lengths, so they are the forward ones (and
            shared with them in the cache); only the token order inside each document changes, forget flags move
            with their tokens.
    """

    def __init__(self, source, documents: np.ndarray, num_samples: int | None, seq_length: int, seed: int,
                 sample_filter, cache_dir: str | None = None, split_name: str = "train",
                 reverse_documents: bool = False, eod_id: int | None = None):
        self.source = source
        self.indexed: IndexedDataset = source.indexed
        self.documents = np.asarray(documents, dtype=np.int32)
        self.num_samples = num_samples
        self.seq_length = seq_length
        self.seed = seed
        self.sample_filter = sample_filter
        self.split_name = split_name
        self.description = {
            "version": INDEX_VERSION,
            "dataset_fingerprint": source.fingerprint,
            "documents_sha256": array_digest(self.documents),
            "num_documents": len(self.documents),
            "seq_length": seq_length,
            "num_samples": num_samples,
            "seed": seed,
            "add_extra_token_to_sequence": True,
            "separate_final_epoch_threshold": SEPARATE_FINAL_EPOCH_THRESHOLD,
        }
        t0 = time.perf_counter()
        arrays, hit = load_or_build(
            cache_dir, "gpt", self.description, ("document_index", "sample_index", "shuffle_index"),
            lambda: build_indices(self.indexed.sequence_lengths, self.documents, seq_length, num_samples, seed),
            background=True)
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]
        log.info("%s %s indices %s in %.3f s: %d documents, %d samples of %d tokens", source.prefix, split_name,
                 "loaded" if hit else "built", time.perf_counter() - t0, len(self.documents), len(self), seq_length)
        # plain ndarray views of the memmaps: np.memmap's __getitem__/__array_finalize__ cost ~2 us per slice
        self._seq_offsets = np.asarray(self.indexed.token_offsets)
        self._bin = np.asarray(self.indexed._bin)
        self._doc_index = np.asarray(self.document_index)
        self._sample_index = np.asarray(self.sample_index)
        self._shuffle_index = np.asarray(self.shuffle_index)
        self.reverse_documents = bool(reverse_documents)
        if self.reverse_documents:
            if eod_id is None:
                raise ValueError("reverse_documents needs eod_id (the tokenizer's <|endoftext|>)")
            if len(self.indexed) != self.indexed.num_documents:
                raise ValueError(f"{source.prefix}: --reverse-documents needs one sequence per document, found "
                                 f"{len(self.indexed)} sequences in {self.indexed.num_documents} documents "
                                 "(made with --split-sentences?)")
            self.eod_id = int(eod_id)

    def __len__(self) -> int:
        return int(self.sample_index.shape[0]) - 1

    def pieces(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Global token ranges [starts[k], ends[k]) of sample idx (after the shuffle), seq_length + 1 tokens."""
        j = int(self._shuffle_index[idx])
        (d0, o0), (d1, o1) = self._sample_index[j : j + 2].tolist()
        docs = self._doc_index[d0 : d1 + 1]
        starts = self._seq_offsets[docs]
        ends = self._seq_offsets[docs + 1]
        ends[-1] = starts[-1] + o1 + 1
        starts[0] += o0
        return starts, ends

    def reversed_pieces(self, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """--reverse-documents: stored ranges (starts, ends, backward) whose concatenation, each range flipped
        where `backward`, is sample idx of the reversed stream (seq_length + 1 tokens)."""
        j = int(self._shuffle_index[idx])
        (d0, o0), (d1, o1) = self._sample_index[j : j + 2].tolist()
        docs = self._doc_index[d0 : d1 + 1]
        starts = self._seq_offsets[docs]
        ends = self._seq_offsets[docs + 1]
        lengths = ends - starts
        last = self._bin[np.maximum(ends - 1, 0)]
        content = lengths - ((lengths > 0) & (last == self.eod_id))
        lo = np.zeros_like(lengths)
        hi = lengths.copy()
        lo[0] = o0
        hi[-1] = o1 + 1
        out = [r for k in range(len(docs)) for r in reversed_ranges(int(starts[k]), int(lengths[k]), int(content[k]),
                                                                    int(lo[k]), int(hi[k]))]
        a, b, back = zip(*out)
        return np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(back, bool)

    def raw(self, idx: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(tokens int64 [seq_length + 1], forget flags bool [seq_length + 1] or None) of sample idx."""
        if self.reverse_documents:
            starts, ends, backward = self.reversed_pieces(idx)
        else:
            starts, ends = self.pieces(idx)
            backward = None
        bin_ = self._bin
        if len(starts) == 1:
            text = bin_[starts[0] : ends[0]].astype(np.int64)
        else:
            text = np.concatenate([bin_[s:e] for s, e in zip(starts.tolist(), ends.tolist())], dtype=np.int64)
        flags = self.source.flags.gather(starts, ends) if self.source.flags is not None else None
        if backward is not None and backward.any():
            order = np.arange(text.shape[0], dtype=np.int64)
            pos = np.cumsum(ends - starts) - (ends - starts)
            for k in np.flatnonzero(backward).tolist():
                order[pos[k] : pos[k] + ends[k] - starts[k]] = order[pos[k] : pos[k] + ends[k] - starts[k]][::-1]
            text = text[order]
            flags = flags[order] if flags is not None else None
        return text, flags

    def get(self, idx: int, consumed_index: int | None = None) -> dict[str, np.ndarray]:
        """Sample idx; `consumed_index` (the position of this sample in the training stream) drives
        --filter-start-step and --label-noise."""
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for {self.source.prefix} {self.split_name} ({len(self)})")
        text, flags = self.raw(idx)
        return self.sample_filter.make_sample(text, flags, consumed_index)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return self.get(int(idx), int(idx))


class StepSwitchDataset(torch.utils.data.Dataset):
    """`before[i]` for consumed index i < switch_at, else `after[i]` (--filter-start-step with document filtering:
    two index sets, unfiltered and filtered)."""

    def __init__(self, before, after, switch_at: int):
        self.before, self.after, self.switch_at = before, after, int(switch_at)

    def __len__(self) -> int:
        return min(len(self.before), len(self.after))

    def get(self, idx: int, consumed_index: int | None = None) -> dict[str, np.ndarray]:
        ci = idx if consumed_index is None else consumed_index
        return (self.before if ci < self.switch_at else self.after).get(idx, consumed_index)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return self.get(int(idx), int(idx))
