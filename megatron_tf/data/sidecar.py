"""Forget sidecars: per-token and per-document forget scores stored beside a Megatron `.bin`/`.idx` pair.

The `.idx` is never modified. For a dataset prefix `P` and an annotation name `N` (default "forget"):

    P.N.tokscores   uint8 per token, in `.bin` order: q = round(255 * score); one annotation pass serves every
                    threshold (1 byte/token)
    P.N.tokmask     packed bits per token (little-endian bit order within each byte) for one fixed threshold
                    (1 bit/token: a 1T-token corpus needs 125 GB instead of 1-4 TB)
    P.N.docscores   float32 [num_documents, C] per-document scores; column names in the metadata
                    (for the document-filtering baseline)

Every sidecar starts with the same header (little-endian; worked example in docs/sidecar_format.md):

    offset  size  field
    0       8     magic b"MTFSIDE\\x00"
    8       2     <H version = 1
    10      2     <H kind: 1 = token scores (uint8), 2 = token bit mask, 3 = document scores (float32)
    12      4     <I payload offset (header + metadata, padded to a multiple of 64 bytes)
    16      8     <Q num_tokens of the annotated dataset
    24      8     <Q num_documents of the annotated dataset
    32      32    dataset fingerprint: raw sha256 over the .idx, the .bin size and sampled .bin content
                  (indexed_dataset.dataset_fingerprint)
    64      4     <I metadata length M
    68      M     metadata, UTF-8 JSON (labeler, threshold, columns, tool version, ...)
    ..            zero padding up to the payload offset
    payload       kind 1: uint8[num_tokens]; kind 2: uint8[ceil(num_tokens / 8)]; kind 3: float32[num_documents * C]

Thresholds are applied at load time: a token is forget iff q >= quantize_threshold(t) = ceil(255 * t), so t = 0.5
marks q >= 128, i.e. stored scores >= 128/255. A threshold of 0 would mark everything; thresholds must be in (0, 1].
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from ..utils.io import commit, tmp_path_for
from .indexed_dataset import IndexedDataset, dataset_fingerprint

SIDECAR_MAGIC = b"MTFSIDE\x00"
SIDECAR_VERSION = 1
KIND_TOKEN_SCORES, KIND_TOKEN_MASK, KIND_DOC_SCORES = 1, 2, 3
KIND_NAMES = {KIND_TOKEN_SCORES: "token scores", KIND_TOKEN_MASK: "token bit mask", KIND_DOC_SCORES: "document scores"}
SUFFIX = {KIND_TOKEN_SCORES: "tokscores", KIND_TOKEN_MASK: "tokmask", KIND_DOC_SCORES: "docscores"}
_FIXED = struct.Struct("<8sHHIQQ32sI")  # 68 bytes
ALIGN = 64


class SidecarError(ValueError):
    pass


def sidecar_path(prefix: str, kind: int, name: str = "forget") -> str:
    return f"{prefix}.{name}.{SUFFIX[kind]}"


def quantize_scores(scores: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 q = round(255 * p). Round-trip error <= 1/510."""
    s = np.asarray(scores, dtype=np.float32)
    if s.size and (not np.isfinite(s).all() or s.min() < 0 or s.max() > 1):
        raise SidecarError("scores must be finite and in [0, 1]")
    return np.rint(s * 255.0).astype(np.uint8)


def dequantize_scores(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float32) / 255.0


def quantize_threshold(threshold: float) -> int:
    """Smallest q counted as forget at `threshold`: ceil(255 * t), computed robustly against float noise."""
    if not 0.0 < threshold <= 1.0:
        raise SidecarError(f"forget threshold must be in (0, 1], got {threshold}")
    return max(1, int(math.ceil(round(255.0 * threshold, 6))))  # a tiny T > 0 must not mark q = 0 tokens


@dataclass
class SidecarHeader:
    kind: int
    num_tokens: int
    num_documents: int
    fingerprint: str  # hex
    metadata: dict = field(default_factory=dict)
    payload_offset: int = 0
    version: int = SIDECAR_VERSION

    def payload_nbytes(self) -> int:
        if self.kind == KIND_TOKEN_SCORES:
            return self.num_tokens
        if self.kind == KIND_TOKEN_MASK:
            return (self.num_tokens + 7) // 8
        return 4 * self.num_documents * len(self.metadata.get("columns", []))

    def encode(self) -> bytes:
        meta = json.dumps(self.metadata, sort_keys=True).encode("utf-8")
        size = _FIXED.size + len(meta)
        self.payload_offset = (size + ALIGN - 1) // ALIGN * ALIGN
        fixed = _FIXED.pack(SIDECAR_MAGIC, self.version, self.kind, self.payload_offset, self.num_tokens,
                            self.num_documents, bytes.fromhex(self.fingerprint), len(meta))
        return fixed + meta + b"\x00" * (self.payload_offset - size)


def read_header(path: str) -> SidecarHeader:
    """Parse and validate a sidecar header; errors name the file and the expected and found values."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sidecar not found: {path}")
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(_FIXED.size)
        if len(raw) < _FIXED.size:
            raise SidecarError(f"{path}: truncated sidecar header: expected at least {_FIXED.size} bytes, "
                               f"found {len(raw)}")
        magic, version, kind, payload_off, ntok, ndoc, fp, mlen = _FIXED.unpack(raw)
        if magic != SIDECAR_MAGIC:
            raise SidecarError(f"{path}: bad sidecar magic: expected {SIDECAR_MAGIC!r}, found {magic!r}")
        if version != SIDECAR_VERSION:
            raise SidecarError(f"{path}: unsupported sidecar version: expected {SIDECAR_VERSION}, found {version}")
        if kind not in KIND_NAMES:
            raise SidecarError(f"{path}: unknown sidecar kind: expected one of {sorted(KIND_NAMES)}, found {kind}")
        aligned = (_FIXED.size + mlen + ALIGN - 1) // ALIGN * ALIGN
        if payload_off != aligned or payload_off > file_size:
            raise SidecarError(f"{path}: corrupt sidecar header: metadata length {mlen} needs payload offset "
                               f"{aligned}, header says {payload_off} (file has {file_size} bytes)")
        meta_raw = f.read(mlen)
    try:
        meta = json.loads(meta_raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError(f"{path}: corrupt sidecar metadata JSON: {e}") from e
    h = SidecarHeader(kind, ntok, ndoc, fp.hex(), meta, payload_off, version)
    expected = payload_off + h.payload_nbytes()
    if file_size != expected:
        raise SidecarError(f"{path}: sidecar size mismatch: header says {KIND_NAMES[kind]} for {ntok} tokens / "
                           f"{ndoc} documents, so expected {expected} bytes, found {file_size}")
    return h


def _check_matches(path: str, h: SidecarHeader, ds: IndexedDataset, fingerprint: str, kind: int) -> None:
    if h.kind != kind:
        raise SidecarError(f"{path}: expected a {KIND_NAMES[kind]} sidecar, found {KIND_NAMES[h.kind]}")
    if h.num_tokens != ds.num_tokens:
        raise SidecarError(
            f"sidecar {path} does not match dataset {ds.bin_path}: sidecar has {h.num_tokens} tokens, "
            f"dataset has {ds.num_tokens}")
    if h.num_documents != ds.num_documents:
        raise SidecarError(
            f"sidecar {path} does not match dataset {ds.idx_path}: sidecar has {h.num_documents} documents, "
            f"dataset has {ds.num_documents}")
    if h.fingerprint != fingerprint:
        raise SidecarError(
            f"sidecar {path} does not match dataset {ds.idx_path} + {ds.bin_path}: sidecar fingerprint "
            f"{h.fingerprint[:16]}..., dataset fingerprint {fingerprint[:16]}... (the dataset was rebuilt or the "
            "sidecar belongs to another dataset; re-run tools/annotate.py)")


class SidecarWriter:
    """Streams a sidecar: header first, then payload pieces in order, into a temporary file beside `path`.

    `commit()` checks that exactly `header.payload_nbytes()` payload bytes were written, fsyncs and renames into
    place; `abort()` (or an exception inside `with`) removes the temporary file. For payloads larger than memory.
    """

    def __init__(self, path: str, header: SidecarHeader):
        self.path, self.header = path, header
        self._tmp = tmp_path_for(path)
        self._f = open(self._tmp, "wb")
        self._f.write(header.encode())
        self.written = 0

    def write(self, payload: np.ndarray) -> None:
        payload = np.ascontiguousarray(payload)
        self.written += payload.nbytes
        if self.written > self.header.payload_nbytes():
            raise SidecarError(f"{self.path}: payload exceeds the {self.header.payload_nbytes()} bytes the header "
                               "announces")
        payload.tofile(self._f)

    def commit(self) -> str:
        self._f.close()
        if self.written != self.header.payload_nbytes():
            self.abort()
            raise SidecarError(f"{self.path}: payload has {self.written} bytes, header expects "
                               f"{self.header.payload_nbytes()}")
        commit(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> SidecarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class BitPacker:
    """Packs a stream of bool arrays of any lengths into the little-endian bit layout of one `np.packbits` call."""

    def __init__(self):
        self._carry = np.zeros(0, dtype=bool)

    def feed(self, flags: np.ndarray) -> np.ndarray:
        bits = np.concatenate([self._carry, np.asarray(flags, dtype=bool)])
        whole = bits.size // 8 * 8
        self._carry = bits[whole:]
        return np.packbits(bits[:whole], bitorder="little")

    def finish(self) -> np.ndarray:
        out = np.packbits(self._carry, bitorder="little")  # zero-padded last byte
        self._carry = np.zeros(0, dtype=bool)
        return out


def write_sidecar(path: str, header: SidecarHeader, payload: np.ndarray) -> None:
    """Write header + payload atomically (temporary name, fsync, rename)."""
    payload = np.ascontiguousarray(payload)
    blob = header.encode()
    if payload.nbytes != header.payload_nbytes():
        raise SidecarError(f"{path}: payload has {payload.nbytes} bytes, header expects {header.payload_nbytes()}")
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            payload.tofile(f)
        commit(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _Sidecar:
    kind: int

    def __init__(self, path: str, dataset: IndexedDataset, fingerprint: str | None = None):
        self.path = path
        self.header = read_header(path)
        _check_matches(path, self.header, dataset, fingerprint or dataset.fingerprint(), self.kind)
        self.metadata = self.header.metadata
        self._raw = np.memmap(path, mode="r", dtype=np.uint8, offset=self.header.payload_offset,
                              shape=(self.header.payload_nbytes(),)) if self.header.payload_nbytes() else \
            np.zeros(0, np.uint8)


class TokenScores(_Sidecar):
    """uint8 per-token scores. `flags(start, end, threshold)` -> bool forget flags for global tokens [start, end)."""

    kind = KIND_TOKEN_SCORES

    @property
    def q(self) -> np.ndarray:
        return self._raw

    def scores(self, start: int, end: int) -> np.ndarray:
        return dequantize_scores(self._raw[start:end])

    def flags(self, start: int, end: int, threshold: float) -> np.ndarray:
        return self._raw[start:end] >= quantize_threshold(threshold)


class TokenMask(_Sidecar):
    """Packed 1-bit forget flags for the threshold recorded in the metadata."""

    kind = KIND_TOKEN_MASK

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    def flags(self, start: int, end: int, threshold: float | None = None) -> np.ndarray:
        if threshold is not None and quantize_threshold(threshold) != quantize_threshold(self.threshold):
            raise SidecarError(f"{self.path}: bit mask was made at threshold {self.threshold}, asked for {threshold}")
        if end <= start:
            return np.zeros(0, dtype=bool)
        b0, b1 = start // 8, (end + 7) // 8
        bits = np.unpackbits(self._raw[b0:b1], bitorder="little")
        return bits[start - 8 * b0 : end - 8 * b0].astype(bool)


class DocumentScores(_Sidecar):
    kind = KIND_DOC_SCORES

    def __init__(self, path: str, dataset: IndexedDataset, fingerprint: str | None = None):
        super().__init__(path, dataset, fingerprint)
        self.columns: list[str] = list(self.metadata["columns"])
        self.values = self._raw.view(np.float32).reshape(self.header.num_documents, len(self.columns))

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise SidecarError(f"{self.path}: no document score column {name!r}; available: {self.columns}")
        return self.values[:, self.columns.index(name)]


def make_header(dataset: IndexedDataset, kind: int, metadata: dict, fingerprint: str | None = None) -> SidecarHeader:
    return SidecarHeader(kind, dataset.num_tokens, dataset.num_documents, fingerprint or dataset_fingerprint(
        dataset.path_prefix), dict(metadata))


def token_scores_header(dataset: IndexedDataset, metadata: dict, fingerprint: str | None = None) -> SidecarHeader:
    meta = {"quantization": "q = round(255 * score)", **metadata}
    return make_header(dataset, KIND_TOKEN_SCORES, meta, fingerprint)


def token_mask_header(dataset: IndexedDataset, threshold: float, metadata: dict,
                      fingerprint: str | None = None) -> SidecarHeader:
    quantize_threshold(threshold)
    meta = {"threshold": float(threshold), "bitorder": "little", **metadata}
    return make_header(dataset, KIND_TOKEN_MASK, meta, fingerprint)


def document_scores_header(dataset: IndexedDataset, columns: list[str], metadata: dict,
                           fingerprint: str | None = None) -> SidecarHeader:
    meta = {**metadata, "columns": list(columns)}
    return make_header(dataset, KIND_DOC_SCORES, meta, fingerprint)


def write_token_scores(dataset: IndexedDataset, q: np.ndarray, metadata: dict, name: str = "forget",
                       fingerprint: str | None = None) -> str:
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.shape != (dataset.num_tokens,):
        raise SidecarError(f"token scores must be uint8[{dataset.num_tokens}], got {q.dtype}{list(q.shape)}")
    path = sidecar_path(dataset.path_prefix, KIND_TOKEN_SCORES, name)
    write_sidecar(path, token_scores_header(dataset, metadata, fingerprint), q)
    return path


def write_token_mask(dataset: IndexedDataset, flags: np.ndarray, threshold: float, metadata: dict,
                     name: str = "forget", fingerprint: str | None = None) -> str:
    flags = np.asarray(flags, dtype=bool)
    if flags.shape != (dataset.num_tokens,):
        raise SidecarError(f"token mask must be bool[{dataset.num_tokens}], got {list(flags.shape)}")
    path = sidecar_path(dataset.path_prefix, KIND_TOKEN_MASK, name)
    write_sidecar(path, token_mask_header(dataset, threshold, metadata, fingerprint),
                  np.packbits(flags, bitorder="little"))
    return path


def write_document_scores(dataset: IndexedDataset, values: np.ndarray, columns: list[str], metadata: dict,
                          name: str = "forget", fingerprint: str | None = None) -> str:
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (dataset.num_documents, len(columns)):
        raise SidecarError(f"document scores must be float32[{dataset.num_documents}, {len(columns)}], "
                           f"got {list(values.shape)}")
    path = sidecar_path(dataset.path_prefix, KIND_DOC_SCORES, name)
    write_sidecar(path, document_scores_header(dataset, columns, metadata, fingerprint), values)
    return path
