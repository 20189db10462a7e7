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
    8       2     <H version = 2 (version 1, without the checksum field, is still read: see below)
    10      2     <H kind: 1 = token scores (uint8), 2 = token bit mask, 3 = document scores (float32)
    12      4     <I payload offset (header + metadata, padded to a multiple of 64 bytes)
    16      8     <Q num_tokens of the annotated dataset
    24      8     <Q num_documents of the annotated dataset
    32      32    dataset fingerprint: raw sha256 over the .idx, the .bin size and sampled .bin content
                  (indexed_dataset.dataset_fingerprint)
    64      8     <Q payload checksum: XXH3-64 of the payload bytes (utils/checksum.py; hex form = 16 digits)
    72      4     <I metadata length M
    76      M     metadata, UTF-8 JSON (labeler, threshold, columns, tool version, ...)
    ..            zero padding up to the payload offset
    payload       kind 1: uint8[num_tokens]; kind 2: uint8[ceil(num_tokens / 8)]; kind 3: float32[num_documents * C]

A bit mask written from token scores records their payload checksum in its metadata ("token_scores_xxh3_64"); the
loader (data/filters.py) ignores a mask whose recorded checksum is not that of the P.N.tokscores beside it (stale
mask of an earlier annotation). Version 1 files (68-byte fixed header, no checksum, no binding) are read with a
warning; a version 1 mask is never trusted beside token scores. Payloads are verified at open, once per process
(`verify_payload`; cost in benchmarks/bench_checksum.py) and by `verify_sidecars(prefix)` (tools/verify.py).

Thresholds are applied at load time: a token is forget iff q >= quantize_threshold(t) = ceil(255 * t), so t = 0.5
marks q >= 128, i.e. stored scores >= 128/255. A threshold of 0 would mark everything; thresholds must be in (0, 1].
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from ..utils.checksum import ALGORITHM, ChecksumError, digest_file, new_hasher
from ..utils.io import commit, tmp_path_for
from ..utils.logging import get_logger
from .indexed_dataset import IndexedDataset, dataset_fingerprint

log = get_logger(__name__)

SIDECAR_MAGIC = b"MTFSIDE\x00"
SIDECAR_VERSION = 2
READABLE_VERSIONS = (1, 2)
BINDING_KEY = "token_scores_xxh3_64"  # in a bit mask's metadata: checksum of the token scores it was derived from
KIND_TOKEN_SCORES, KIND_TOKEN_MASK, KIND_DOC_SCORES = 1, 2, 3
KIND_NAMES = {KIND_TOKEN_SCORES: "token scores", KIND_TOKEN_MASK: "token bit mask", KIND_DOC_SCORES: "document scores"}
SUFFIX = {KIND_TOKEN_SCORES: "tokscores", KIND_TOKEN_MASK: "tokmask", KIND_DOC_SCORES: "docscores"}
_FIXED = struct.Struct("<8sHHIQQ32sQI")  # 76 bytes (version 2)
_FIXED_V1 = struct.Struct("<8sHHIQQ32sI")  # 68 bytes (version 1: no payload checksum)
CHECKSUM_OFFSET = 64
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
    checksum: str | None = None  # XXH3-64 of the payload, 16 hex digits; None in version 1 files

    def payload_nbytes(self) -> int:
        if self.kind == KIND_TOKEN_SCORES:
            return self.num_tokens
        if self.kind == KIND_TOKEN_MASK:
            return (self.num_tokens + 7) // 8
        return 4 * self.num_documents * len(self.metadata.get("columns", []))

    def encode(self) -> bytes:
        """Version 2 bytes; a checksum of None is written as 0 (SidecarWriter patches it in at commit)."""
        meta = json.dumps(self.metadata, sort_keys=True).encode("utf-8")
        size = _FIXED.size + len(meta)
        self.payload_offset = (size + ALIGN - 1) // ALIGN * ALIGN
        self.version = SIDECAR_VERSION
        fixed = _FIXED.pack(SIDECAR_MAGIC, self.version, self.kind, self.payload_offset, self.num_tokens,
                            self.num_documents, bytes.fromhex(self.fingerprint), int(self.checksum or "0", 16),
                            len(meta))
        return fixed + meta + b"\x00" * (self.payload_offset - size)


def read_header(path: str) -> SidecarHeader:
    """Parse and validate a sidecar header; errors name the file and the expected and found values."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sidecar not found: {path}")
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(_FIXED.size)
        if len(raw) < 12:
            raise SidecarError(f"{path}: truncated sidecar header: expected at least {_FIXED.size} bytes, "
                               f"found {len(raw)}")
        magic, version, kind = struct.unpack_from("<8sHH", raw)
        if magic != SIDECAR_MAGIC:
            raise SidecarError(f"{path}: bad sidecar magic: expected {SIDECAR_MAGIC!r}, found {magic!r}")
        if version not in READABLE_VERSIONS:
            raise SidecarError(f"{path}: unsupported sidecar version: expected one of {list(READABLE_VERSIONS)}, "
                               f"found {version}")
        fixed = _FIXED if version == 2 else _FIXED_V1
        if len(raw) < fixed.size:
            raise SidecarError(f"{path}: truncated sidecar header: expected at least {fixed.size} bytes, "
                               f"found {len(raw)}")
        if version == 2:
            _, _, _, payload_off, ntok, ndoc, fp, checksum, mlen = fixed.unpack(raw)
            checksum = f"{checksum:016x}"
        else:
            _, _, _, payload_off, ntok, ndoc, fp, mlen = fixed.unpack(raw[: fixed.size])
            checksum = None
        if kind not in KIND_NAMES:
            raise SidecarError(f"{path}: unknown sidecar kind: expected one of {sorted(KIND_NAMES)}, found {kind}")
        aligned = (fixed.size + mlen + ALIGN - 1) // ALIGN * ALIGN
        if payload_off != aligned or payload_off > file_size:
            raise SidecarError(f"{path}: corrupt sidecar header: metadata length {mlen} needs payload offset "
                               f"{aligned}, header says {payload_off} (file has {file_size} bytes)")
        f.seek(fixed.size)
        meta_raw = f.read(mlen)
    try:
        meta = json.loads(meta_raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError(f"{path}: corrupt sidecar metadata JSON: {e}") from e
    h = SidecarHeader(kind, ntok, ndoc, fp.hex(), meta, payload_off, version, checksum)
    expected = payload_off + h.payload_nbytes()
    if file_size != expected:
        raise SidecarError(f"{path}: sidecar size mismatch: header says {KIND_NAMES[kind]} for {ntok} tokens / "
                           f"{ndoc} documents, so expected {expected} bytes, found {file_size}")
    return h


_VERIFIED: dict[tuple, float] = {}  # (realpath, size, mtime_ns, checksum) -> seconds the check took


def verify_payload(path: str, header: SidecarHeader | None = None, *, force: bool = False) -> bool:
    """Check the payload against the header's XXH3-64, reading it in 8 MiB chunks; once per process per file version
    (same path, size and mtime) unless `force`. Raises ChecksumError naming the file; returns False (with a
    warning) for a version 1 file, which has no checksum."""
    h = header or read_header(path)
    if h.checksum is None:
        log.warning("%s: sidecar format version %d has no payload checksum, so it cannot be verified; re-run "
                    "tools/annotate.py to rewrite it as version %d", path, h.version, SIDECAR_VERSION)
        return False
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, h.checksum)
    if key in _VERIFIED and not force:
        return True
    t0 = time.perf_counter()
    found = digest_file(path, h.payload_offset, h.payload_nbytes())
    if found != h.checksum:
        raise ChecksumError(f"{path}: sidecar payload checksum mismatch ({ALGORITHM}): header says {h.checksum}, "
                            f"payload has {found} (the file was modified or corrupted after it was written; "
                            "re-run tools/annotate.py)")
    _VERIFIED[key] = time.perf_counter() - t0
    log.info("%s: payload checksum %s verified (%d bytes, %.3f s)", path, h.checksum, h.payload_nbytes(),
             _VERIFIED[key])
    return True


def verify_sidecars(prefix: str, name: str | None = None) -> list[str]:
    """Verify every sidecar P.<name>.{tokscores,tokmask,docscores} of dataset prefix P (all names when `name` is
    None): header, payload checksum, and that a bit mask is bound to the token scores beside it. Returns the paths
    whose checksum was verified (version 1 files are skipped with a warning); raises ChecksumError or SidecarError
    naming the file. Does not open the dataset (see `_Sidecar` for the dataset match)."""
    pattern = f"{glob.escape(prefix)}.{glob.escape(name) if name else '*'}."
    paths = sorted(p for k in SUFFIX.values() for p in glob.glob(pattern + k))
    checked = []
    for p in paths:
        h = read_header(p)
        if verify_payload(p, h, force=True):
            checked.append(p)
        if h.kind == KIND_TOKEN_MASK:
            scores = p[: -len(SUFFIX[KIND_TOKEN_MASK])] + SUFFIX[KIND_TOKEN_SCORES]
            reason = mask_binding_problem(p, h, scores)
            if reason is not None:
                raise SidecarError(f"{p}: stale bit mask: {reason}")
    return checked


def mask_binding_problem(mask_path: str, mask_header: SidecarHeader, scores_path: str) -> str | None:
    """Why the bit mask cannot be trusted beside the token scores `scores_path`, or None when it is bound to them
    (or no token scores exist). Compares header fields only (no payload read)."""
    if not os.path.isfile(scores_path):
        return None
    bound = mask_header.metadata.get(BINDING_KEY)
    if bound is None:
        return (f"it records no checksum of the token scores it was derived from (format version "
                f"{mask_header.version}), so it may belong to an earlier annotation than {scores_path}")
    sh = read_header(scores_path)
    if sh.checksum != bound:
        return (f"it was derived from token scores with {ALGORITHM} {bound}, but {scores_path} has "
                f"{sh.checksum} (re-annotated since)")
    return None


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


def _write_array(f, payload: np.ndarray, path: str, tmp: str) -> None:
    """Write a contiguous array; an OSError (disk full, quota) names the sidecar and its temporary file."""
    try:
        f.write(memoryview(payload.reshape(-1)).cast("B"))
    except OSError as e:
        raise _named(e, path, tmp) from e


def _named(e: OSError, path: str, tmp: str) -> OSError:
    msg = f"writing sidecar {path} (temporary file {tmp}) failed: {e.strerror or e}"
    return OSError(e.errno, msg) if e.errno else OSError(msg)


class SidecarWriter:
    """Streams a sidecar: header first, then payload pieces in order, into a temporary file beside `path`.

    `commit()` checks that exactly `header.payload_nbytes()` payload bytes were written, writes the payload's
    XXH3-64 (hashed while streaming) into the header, fsyncs and renames into place; `abort()` (or an exception inside
    `with`) removes the temporary file. For payloads larger than memory.
    """

    def __init__(self, path: str, header: SidecarHeader):
        self.path, self.header = path, header
        self._tmp = tmp_path_for(path)
        self._f = open(self._tmp, "wb")
        self._hash = new_hasher()
        try:
            self._f.write(header.encode())
        except OSError as e:
            self.abort()
            raise _named(e, path, self._tmp) from e
        self.written = 0

    def write(self, payload: np.ndarray) -> None:
        payload = np.ascontiguousarray(payload)
        self.written += payload.nbytes
        if self.written > self.header.payload_nbytes():
            raise SidecarError(f"{self.path}: payload exceeds the {self.header.payload_nbytes()} bytes the header "
                               "announces")
        self._hash.update(memoryview(payload.reshape(-1)).cast("B"))
        _write_array(self._f, payload, self.path, self._tmp)

    @property
    def checksum(self) -> str:
        """XXH3-64 of the payload written so far (16 hex digits)."""
        return self._hash.hexdigest()

    def commit(self) -> str:
        if self.written != self.header.payload_nbytes():
            self.abort()
            raise SidecarError(f"{self.path}: payload has {self.written} bytes, header expects "
                               f"{self.header.payload_nbytes()}")
        self.header.checksum = self.checksum
        try:
            self._f.seek(CHECKSUM_OFFSET)
            self._f.write(struct.pack("<Q", self._hash.intdigest()))
            self._f.close()
        except OSError as e:
            self.abort()
            raise _named(e, self.path, self._tmp) from e
        commit(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError:  # the buffered bytes cannot be written either (disk full): the file goes anyway
                pass
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
    """Write header + payload (with its checksum) atomically (temporary name, fsync, rename)."""
    payload = np.ascontiguousarray(payload)
    if payload.nbytes != header.payload_nbytes():
        raise SidecarError(f"{path}: payload has {payload.nbytes} bytes, header expects {header.payload_nbytes()}")
    with SidecarWriter(path, header) as w:
        w.write(payload)
        w.commit()


class _Sidecar:
    kind: int

    def __init__(self, path: str, dataset: IndexedDataset, fingerprint: str | None = None, verify: bool = True):
        """`verify`: check the payload checksum now (once per process and file version; `verify_payload`)."""
        self.path = path
        self.header = read_header(path)
        _check_matches(path, self.header, dataset, fingerprint or dataset.fingerprint(), self.kind)
        self.metadata = self.header.metadata
        self.verified = verify_payload(path, self.header) if verify else False
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

    def __init__(self, path: str, dataset: IndexedDataset, fingerprint: str | None = None, verify: bool = True):
        super().__init__(path, dataset, fingerprint, verify)
        self.columns: list[str] = list(self.metadata["columns"])
        self.values = self._raw.view("<f4").reshape(self.header.num_documents, len(self.columns))
        self._checked: set[str] = set()

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise SidecarError(f"{self.path}: no document score column {name!r}; available: {self.columns}")
        col = self.values[:, self.columns.index(name)]
        if name not in self._checked:  # document scores lie in [0, 1]; 4 bytes per document, read once
            bad = np.flatnonzero(~((col >= 0.0) & (col <= 1.0)))
            if bad.size:
                raise SidecarError(f"{self.path}: document score column {name!r} must hold finite values in [0, 1], "
                                   f"found {col[bad[0]]} for document {bad[0]} ({bad.size} such documents)")
            self._checked.add(name)
        return col


def make_header(dataset: IndexedDataset, kind: int, metadata: dict, fingerprint: str | None = None) -> SidecarHeader:
    return SidecarHeader(kind, dataset.num_tokens, dataset.num_documents, fingerprint or dataset_fingerprint(
        dataset.path_prefix), dict(metadata))


def token_scores_header(dataset: IndexedDataset, metadata: dict, fingerprint: str | None = None) -> SidecarHeader:
    meta = {"quantization": "q = round(255 * score)", **metadata}
    return make_header(dataset, KIND_TOKEN_SCORES, meta, fingerprint)


def token_mask_header(dataset: IndexedDataset, threshold: float, metadata: dict,
                      fingerprint: str | None = None, token_scores_checksum: str | None = None) -> SidecarHeader:
    """`token_scores_checksum`: XXH3-64 of the token scores payload the mask was derived from (binds the mask)."""
    quantize_threshold(threshold)
    meta = {"threshold": float(threshold), "bitorder": "little", **metadata}
    if token_scores_checksum is not None:
        meta[BINDING_KEY] = token_scores_checksum
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
    """Write P.name.tokmask. When P.name.tokscores exists and `flags` are exactly its flags at `threshold`, the
    mask is bound to it (its payload checksum goes into the metadata); otherwise the mask is unbound, and the loader
    ignores it beside token scores."""
    flags = np.asarray(flags, dtype=bool)
    if flags.shape != (dataset.num_tokens,):
        raise SidecarError(f"token mask must be bool[{dataset.num_tokens}], got {list(flags.shape)}")
    path = sidecar_path(dataset.path_prefix, KIND_TOKEN_MASK, name)
    scores_path = sidecar_path(dataset.path_prefix, KIND_TOKEN_SCORES, name)
    binding = None
    if os.path.isfile(scores_path):
        try:
            scores = TokenScores(scores_path, dataset, fingerprint)
        except (SidecarError, ChecksumError) as e:  # another dataset's or a corrupt file: nothing to bind to
            log.warning("%s: not binding the mask to %s: %s", path, scores_path, e)
            scores = None
        if scores is not None and np.array_equal(scores.flags(0, dataset.num_tokens, threshold), flags):
            binding = scores.header.checksum
        elif scores is not None:
            log.warning("%s: the flags are not those of %s at threshold %s: the mask is written unbound (ignored "
                        "beside those token scores)", path, scores_path, threshold)
    write_sidecar(path, token_mask_header(dataset, threshold, metadata, fingerprint, binding),
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
