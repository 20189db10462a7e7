"""Megatron's indexed mmap dataset (`.bin` + `.idx`), byte for byte.

Layout of `P.idx` (all little-endian; see docs/formats.md for a worked byte-level example):

    offset  size          field
    0       9             magic b"MMIDIDX\\x00\\x00"
    9       8   <Q        version = 1
    17      1   <B        dtype code of the tokens in .bin (Megatron's DType: 1 uint8, 2 int8, 3 int16, 4 int32,
                          5 int64, 6 float64, 7 float32, 8 uint16)
    18      8   <Q        sequence_count S
    26      8   <Q        document_count D (length of document_indices = number of documents + 1)
    34      4*S int32     sequence_lengths (tokens per sequence)
    ..      8*S int64     sequence_pointers (byte offset of each sequence in .bin)
    ..      8*D int64     document_indices (sequence index where each document starts; first 0, last S)

`P.bin` is the concatenation of all sequences' tokens in the dtype above, nothing else. Megatron calls a stored
item a "sequence"; without --split-sentences every document is one sequence, so S = D - 1.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from ..utils.io import commit, sha256_file, tmp_path_for

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # 34 bytes

DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    pass


def dtype_code(dtype) -> int:
    try:
        return _CODE_OF[np.dtype(dtype)]
    except KeyError:
        raise IndexedDatasetError(f"dtype {np.dtype(dtype)} has no Megatron dtype code") from None


def optimal_dtype(vocab_size: int | None) -> type[np.number]:
    """Megatron's rule: uint16 when the vocabulary has fewer than 65500 entries, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(data_file_path(prefix)) and os.path.isfile(index_file_path(prefix))


def dataset_fingerprint(prefix: str) -> str:
    """sha256 identifying the exact dataset a sidecar annotates.

    Hashes the whole `.idx` (KBs to a few GB), the `.bin` size, and a sample of `.bin` content: its first and last
    1 MiB and 64 blocks of 4 KiB at evenly spaced offsets. Hashing the whole `.bin` (up to TBs) would make opening
    a dataset take minutes; the sample catches a rebuilt dataset with the same document lengths in practice.
    """
    import hashlib

    h = hashlib.sha256(b"megatron_tf dataset fingerprint v1")
    h.update(bytes.fromhex(sha256_file(index_file_path(prefix))))
    bin_path = data_file_path(prefix)
    size = os.path.getsize(bin_path)
    h.update(struct.pack("<Q", size))
    with open(bin_path, "rb") as f:
        spans = [(0, 1 << 20), (max(0, size - (1 << 20)), 1 << 20)]
        spans += [(size * i // 64, 4096) for i in range(64)]
        for off, n in spans:
            f.seek(off)
            h.update(f.read(n))
    return h.hexdigest()


class IndexReader:
    """Parses and validates a `.idx` file; arrays are zero-copy views of an mmap."""

    def __init__(self, idx_path: str):
        self.path = idx_path
        size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            raise IndexedDatasetError(
                f"{idx_path}: truncated index header: expected at least {HEADER_SIZE} bytes, found {len(header)}"
            )
        if header[:9] != INDEX_MAGIC:
            raise IndexedDatasetError(
                f"{idx_path}: bad magic: expected {INDEX_MAGIC!r} (Megatron MMIDIDX index), found {header[:9]!r}"
            )
        (version,) = struct.unpack("<Q", header[9:17])
        if version != INDEX_VERSION:
            raise IndexedDatasetError(
                f"{idx_path}: unsupported index version: expected {INDEX_VERSION}, found {version}")
        code = header[17]
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(
                f"{idx_path}: unknown dtype code: expected one of {sorted(DTYPE_CODES)}, found {code}"
            )
        self.dtype_code = code
        self.dtype = np.dtype(DTYPE_CODES[code])
        self.sequence_count, self.document_count = struct.unpack("<QQ", header[18:34])
        expected = HEADER_SIZE + 12 * self.sequence_count + 8 * self.document_count
        # Megatron's multimodal variant appends one int8 mode per sequence.
        self.multimodal = size == expected + self.sequence_count and self.sequence_count > 0
        if size != expected and not self.multimodal:
            raise IndexedDatasetError(
                f"{idx_path}: index size mismatch: header says {self.sequence_count} sequences and "
                f"{self.document_count} document indices, so expected {expected} bytes, found {size}"
            )
        self._mmap = np.memmap(idx_path, mode="r", dtype=np.uint8)
        off = HEADER_SIZE
        S, D = self.sequence_count, self.document_count
        self.sequence_lengths = self._mmap[off : off + 4 * S].view(np.int32)
        off += 4 * S
        self.sequence_pointers = self._mmap[off : off + 8 * S].view(np.int64)
        off += 8 * S
        self.document_indices = self._mmap[off : off + 8 * D].view(np.int64)
        off += 8 * D
        self.sequence_modes = self._mmap[off : off + S].view(np.int8) if self.multimodal else None
        if D < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != S:
            first = int(self.document_indices[0]) if D else None
            last = int(self.document_indices[-1]) if D else None
            raise IndexedDatasetError(
                f"{idx_path}: corrupt document_indices: expected first 0 and last {S}, found first {first} and "
                f"last {last}"
            )

    def __len__(self) -> int:
        return self.sequence_count


class IndexedDataset:
    """Reader for Megatron `.bin`/`.idx` pairs. `ds[i]` is sequence i as a numpy view of the mmap.

    Token positions: the sidecars address tokens by their position in `.bin` ("global token index"), which for
    sequence i starts at `sequence_pointers[i] // itemsize`. With our writer (and Megatron's) that equals the
    cumulative sum of the lengths; `token_offsets` is computed once and checked against the pointers.
    """

    def __init__(self, path_prefix: str, mmap: bool = True):
        self.path_prefix = path_prefix
        self.idx_path, self.bin_path = index_file_path(path_prefix), data_file_path(path_prefix)
        for p in (self.idx_path, self.bin_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"indexed dataset file not found: {p} (prefix {path_prefix})")
        self.index = IndexReader(self.idx_path)
        self.dtype = self.index.dtype
        itemsize = self.dtype.itemsize
        bin_size = os.path.getsize(self.bin_path)
        lengths = self.index.sequence_lengths
        self.num_tokens = int(lengths.sum(dtype=np.int64))
        if bin_size != self.num_tokens * itemsize:
            raise IndexedDatasetError(
                f"{self.bin_path}: size {bin_size} bytes does not match {self.idx_path}: {self.num_tokens} tokens "
                f"x {itemsize} bytes ({self.dtype}) = {self.num_tokens * itemsize} bytes expected"
            )
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ptr = self.index.sequence_pointers
        if len(ptr) and not np.array_equal(ptr, offsets[:-1] * itemsize):
            bad = int(np.flatnonzero(ptr != offsets[:-1] * itemsize)[0])
            raise IndexedDatasetError(
                f"{self.idx_path}: sequence_pointers are not contiguous: sequence {bad} points at byte {int(ptr[bad])}"
                f", expected {int(offsets[bad] * itemsize)}"
            )
        self.token_offsets = offsets  # [S+1] start token of each sequence in .bin, plus the total
        if mmap:
            self._bin = np.memmap(self.bin_path, mode="r", dtype=self.dtype) if bin_size else np.zeros(0, self.dtype)
        else:
            self._bin = np.fromfile(self.bin_path, dtype=self.dtype)

    # ---- Megatron-compatible accessors -------------------------------------------------------------------------
    @property
    def sequence_lengths(self) -> np.ndarray:
        return self.index.sequence_lengths

    @property
    def document_indices(self) -> np.ndarray:
        return self.index.document_indices

    @property
    def num_documents(self) -> int:
        return self.index.document_count - 1

    def __len__(self) -> int:
        return self.index.sequence_count

    def __getitem__(self, idx: int) -> np.ndarray:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"sequence {idx} out of range for {self.path_prefix} ({len(self)} sequences)")
        idx %= len(self)
        return self._bin[self.token_offsets[idx] : self.token_offsets[idx + 1]]

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence idx (Megatron's `IndexedDataset.get`)."""
        start = self.token_offsets[idx] + offset
        end = self.token_offsets[idx + 1] if length is None else start + length
        return self._bin[start:end]

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Global token range [start, end) of `.bin`."""
        return self._bin[start:end]

    def document_token_range(self, doc: int) -> tuple[int, int]:
        """[start, end) global token positions of document `doc` (all of its sequences)."""
        di = self.index.document_indices
        return int(self.token_offsets[di[doc]]), int(self.token_offsets[di[doc + 1]])

    def document_token_offsets(self) -> np.ndarray:
        """[D+1] global token start of each document, plus the total."""
        return self.token_offsets[self.index.document_indices]

    def fingerprint(self) -> str:
        return dataset_fingerprint(self.path_prefix)


_SCAN_BLOCK = 1 << 26  # tokens per block of the id-range scan (128 MiB of uint16): bounded memory


def token_id_range(ds: IndexedDataset) -> tuple[int, int]:
    """(smallest, largest) token id in `.bin`, (0, -1) when empty: a vectorised min/max over the memory map in blocks
    of 64 Mi tokens. Cost: one sequential read of `.bin` (benchmarks/bench_checksum.py measures it next to the
    checksum: 0.15 - 0.41 s per GB of uint16 tokens from the page cache, min and max, on the loaded 2-core
    development VM; a cold disk reads at its own speed)."""
    lo, hi = 0, -1
    for a in range(0, ds.num_tokens, _SCAN_BLOCK):
        block = np.asarray(ds.tokens(a, min(a + _SCAN_BLOCK, ds.num_tokens)))
        b_lo, b_hi = int(block.min()), int(block.max())
        lo, hi = (b_lo, b_hi) if hi < lo else (min(lo, b_lo), max(hi, b_hi))
    return lo, hi


def _first_outside(ds: IndexedDataset, vocab_size: int) -> int:
    for a in range(0, ds.num_tokens, _SCAN_BLOCK):
        block = np.asarray(ds.tokens(a, min(a + _SCAN_BLOCK, ds.num_tokens))).astype(np.int64)
        bad = np.flatnonzero((block < 0) | (block >= vocab_size))
        if bad.size:
            return a + int(bad[0])
    return -1


def check_token_ids(ds: IndexedDataset, vocab_size: int, tokenizer_name: str = "the tokenizer",
                    cache_dir: str | None = None, fingerprint: str | None = None) -> tuple[int, int]:
    """Every token id of `.bin` must lie in [0, vocab_size): the `.idx` dtype bound is not enough (a dataset made with
    a larger vocabulary fits uint16 too), and an id outside the vocabulary would fail deep inside the embedding.
    The (min, max) found is cached in `cache_dir` (index_cache, keyed by the dataset fingerprint), so the scan
    (`token_id_range`) runs once per dataset. Raises IndexedDatasetError naming `.bin`, the first bad token's
    position, document and value."""
    from .index_cache import load_or_build

    desc = {"version": "megatron_tf-token-id-range-v1", "dataset_fingerprint": fingerprint or ds.fingerprint(),
            "bin_bytes": os.path.getsize(ds.bin_path)}
    arrays, _ = load_or_build(cache_dir, "tokrange", desc, ("range",),
                              lambda: {"range": np.array(token_id_range(ds), dtype=np.int64)})
    lo, hi = (int(x) for x in arrays["range"])
    if ds.num_tokens and (lo < 0 or hi >= vocab_size):
        pos = _first_outside(ds, vocab_size)
        doc = int(np.searchsorted(ds.document_token_offsets(), pos, side="right")) - 1
        raise IndexedDatasetError(
            f"{ds.bin_path}: token id {int(ds.tokens(pos, pos + 1)[0])} at token {pos} (document {doc}) is outside "
            f"the vocabulary [0, {vocab_size}) of {tokenizer_name} (ids in the file range over [{lo}, {hi}]): "
            "the dataset was made with another tokenizer, or the file is corrupt")
    return lo, hi


class IndexedDatasetBuilder:
    """Streams documents into `.bin` and writes `.idx` on `finalize` (Megatron's IndexedDatasetBuilder, batched).

    Output goes to temporary files beside the targets; `finalize` renames the `.bin` into place first and the
    `.idx` last, so a dataset only looks valid (both files present) once it is complete. `abort` removes the
    temporaries.
    """

    def __init__(self, bin_path: str, dtype=np.int32, buffer_tokens: int = 1 << 22):
        self.bin_path = bin_path
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)  # validate early
        self._tmp_bin = tmp_path_for(bin_path)
        self._f = open(self._tmp_bin, "wb")
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._buffer_tokens = buffer_tokens
        self.sequence_lengths: list[int] = []
        self.document_indices: list[int] = [0]
        self.sequence_modes: list[int] | None = None
        self._info = np.iinfo(self.dtype) if np.issubdtype(self.dtype, np.integer) else None

    def _append(self, arr: np.ndarray) -> None:
        if self._info is not None and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._info.min or hi > self._info.max:
                raise IndexedDatasetError(
                    f"{self.bin_path}: token ids [{lo}, {hi}] do not fit dtype {self.dtype} "
                    f"[{self._info.min}, {self._info.max}]; pick a wider dtype (vocab too large?)"
                )
        self._buf.append(arr.astype(self.dtype, copy=False))
        self._buffered += arr.size
        if self._buffered >= self._buffer_tokens:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            np.concatenate(self._buf).tofile(self._f)
            self._buf, self._buffered = [], 0

    def add_item(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Add one sequence (does not end the document)."""
        arr = np.asarray(tokens)
        self._append(arr.ravel())
        self.sequence_lengths.append(int(arr.size))

    def end_document(self) -> None:
        self.document_indices.append(len(self.sequence_lengths))

    def add_document(self, tokens: Sequence[int] | np.ndarray, lengths: Iterable[int] | None = None) -> None:
        """Add a whole document; `lengths` splits it into several sequences (sentences), else one sequence."""
        arr = np.asarray(tokens).ravel()
        lengths = [arr.size] if lengths is None else [int(x) for x in lengths]
        if sum(lengths) != arr.size:
            raise IndexedDatasetError(f"add_document: lengths sum to {sum(lengths)} but {arr.size} tokens given")
        self._append(arr)
        self.sequence_lengths.extend(lengths)
        self.document_indices.append(len(self.sequence_lengths))

    def add_index(self, path_prefix: str) -> None:
        """Append another dataset (same dtype) wholesale, like Megatron's merge."""
        other = IndexedDataset(path_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"add_index: {path_prefix} has dtype {other.dtype}, this builder writes {self.dtype}"
            )
        self.flush()
        offset = len(self.sequence_lengths)
        self.sequence_lengths.extend(other.sequence_lengths.tolist())
        self.document_indices.extend((offset + other.document_indices[1:]).tolist())
        with open(other.bin_path, "rb") as f:
            while chunk := f.read(1 << 24):
                self._f.write(chunk)

    def finalize(self, idx_path: str) -> None:
        self.flush()
        self._f.close()
        tmp_idx = tmp_path_for(idx_path)
        write_index(tmp_idx, self.dtype, self.sequence_lengths, self.document_indices, self.sequence_modes)
        commit(self._tmp_bin, self.bin_path)
        commit(tmp_idx, idx_path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self._tmp_bin):
            os.remove(self._tmp_bin)


def write_index(idx_path: str, dtype, sequence_lengths, document_indices, sequence_modes=None) -> None:
    """Write a `.idx` exactly as Megatron's `_IndexWriter` does."""
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    docs = np.asarray(document_indices, dtype=np.int64)
    with open(idx_path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", dtype_code(dtype)))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(docs)))
        f.write(lengths.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(docs.tobytes(order="C"))
        if sequence_modes is not None:
            f.write(np.asarray(sequence_modes, dtype=np.int8).tobytes(order="C"))


def write_dataset(path_prefix: str, documents: Iterable[Sequence[int]], dtype=np.int32) -> IndexedDataset:
    """Convenience: write one sequence per document and return a reader."""
    b = IndexedDatasetBuilder(data_file_path(path_prefix), dtype=dtype)
    try:
        for doc in documents:
            b.add_document(doc)
        b.finalize(index_file_path(path_prefix))
    except BaseException:
        b.abort()
        raise
    return IndexedDataset(path_prefix)
