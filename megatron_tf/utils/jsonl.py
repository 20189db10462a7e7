"""Reading JSON Lines corpora: plain, gzip, xz or zstd (detected from the first bytes, not the file name).

Shared by preprocessing (megatron_tf/data/preprocess.py) and tokenizer training (megatron_tf/tokenizer/train.py).

- `open_input(path)`: a binary stream of the decompressed content; the raw (compressed) bytes read so far and their
  sha256 are available from the returned `InputStream`.
- `iter_blocks(path, block_bytes)`: the content as blocks of whole lines (split on b"\\n" only: texts may hold
  U+2028), each with the number of its first line, so errors can name `file:line`.
- `parse_line(line, keys)`: one record's texts, or a `LineIssue` (bad JSON, missing key, non-string value).
- `iter_texts(paths, key, on_bad_line)`: the texts of a list of files, for tokenizer training.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class InputError(ValueError):
    """Bad input data or an unreadable input file; the message names the file (and line)."""


def detect_compression(path: str) -> str:
    """'gzip', 'xz', 'zstd' or 'plain', from the magic bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "plain"


class _HashingReader(io.RawIOBase):
    """Counts and hashes the raw bytes a decompressor pulls from the file (sha256 of the file as stored)."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha256.update(memoryview(b)[:n])
            self.bytes_read += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class InputStream:
    """Decompressed binary content of one input file plus the hash and count of the raw bytes consumed."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise InputError(f"input file not found: {path}")
        self.path = path
        self.size = os.path.getsize(path)
        self.compression = detect_compression(path)
        self._raw = _HashingReader(open(path, "rb"))
        buffered = io.BufferedReader(self._raw, 1 << 20)
        if self.compression == "gzip":
            self._stream = gzip.GzipFile(fileobj=buffered, mode="rb")
        elif self.compression == "xz":
            self._stream = lzma.LZMAFile(buffered, mode="rb")
        elif self.compression == "zstd":
            self._stream = _ZstdFrames(buffered, path)
        else:
            self._stream = buffered

    def read(self, n: int) -> bytes:
        try:
            return self._stream.read(n)
        except InputError:  # already names the file
            raise
        except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
            raise InputError(f"{self.path}: cannot read {self.compression} data: {e}") from e

    @property
    def raw_bytes_read(self) -> int:
        return self._raw.bytes_read

    def raw_sha256(self) -> str:
        """sha256 of the whole stored file; call after reading to the end."""
        return self._raw.sha256.hexdigest()

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ZstdFrames:
    """Decompresses a sequence of zstd frames and raises when the file ends inside a frame.

    zstandard's `stream_reader` returns a short read, no error, when the input stops mid-frame (a file cut at a block
    boundary read as 300 of 886 documents with exit status 0); gzip and lzma raise EOFError there. Here each frame
    goes through its own `decompressobj`, whose `eof` says whether the frame's end was seen.
    """

    RAW_CHUNK = 1 << 20

    def __init__(self, raw, path: str):
        import zstandard

        self._raw, self._path = raw, path
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None  # the decompressor of the frame in progress; None between frames
        self._out = bytearray()
        self._raw_eof = False
        self._consumed = 0

    def _feed(self, data: bytes) -> None:
        while data:
            if self._obj is None:
                self._obj = self._dctx.decompressobj()
            self._out += self._obj.decompress(data)
            if self._obj.eof:
                data, self._obj = self._obj.unused_data, None
            else:
                data = b""

    def read(self, n: int) -> bytes:
        while len(self._out) < n and not self._raw_eof:
            chunk = self._raw.read(self.RAW_CHUNK)
            if not chunk:
                self._raw_eof = True
                if self._obj is not None:
                    raise InputError(f"{self._path}: cannot read zstd data: truncated file, the last frame is "
                                     f"unfinished after {self._consumed} compressed bytes (an interrupted copy or "
                                     "download?)")
                break
            self._consumed += len(chunk)
            try:
                self._feed(chunk)
            except Exception as e:  # zstandard.ZstdError
                raise InputError(f"{self._path}: cannot read zstd data: {e}") from e
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def close(self) -> None:
        self._raw.close()


def open_input(path: str) -> InputStream:
    return InputStream(path)


@dataclass
class Block:
    """Whole lines [first_line, first_line + num_lines) of a file; `start`/`end` are decompressed byte offsets."""

    data: bytes
    first_line: int
    num_lines: int
    start: int
    end: int
    eof: bool


def count_lines(data: bytes) -> int:
    """Lines in a block of whole lines (a last line without b'\\n' counts)."""
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def iter_blocks(stream: InputStream, block_bytes: int = 1 << 20, first_line: int = 1, offset: int = 0
                ) -> Iterator[Block]:
    """Blocks of at least `block_bytes` (or up to end of file) ending on a line boundary.

    The last block has `eof=True` (it may be empty). A line longer than `block_bytes` makes its block longer.
    `first_line`/`offset` label the blocks when the stream was already advanced (resume).
    """
    pending = b""
    line = first_line
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            n = count_lines(pending)
            yield Block(pending, line, n, offset, offset + len(pending), True)
            return
        pending += chunk
        if len(pending) < block_bytes:
            continue
        cut = pending.rfind(b"\n")
        if cut < 0:
            continue
        data, pending = pending[: cut + 1], pending[cut + 1 :]
        n = data.count(b"\n")
        yield Block(data, line, n, offset, offset + len(data), False)
        line += n
        offset += len(data)


def split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


@dataclass(frozen=True)
class LineIssue:
    kind: str  # bad_json | not_object | missing_key | not_string | bad_unicode
    detail: str


def parse_line(line: bytes, keys: Sequence[str]) -> list[str] | LineIssue:
    """The values of `keys` in one JSON line, or what is wrong with it."""
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return LineIssue("bad_json", f"invalid JSON ({e})")
    if not isinstance(rec, dict):
        return LineIssue("not_object", f"expected a JSON object, found {type(rec).__name__}")
    out = []
    for k in keys:
        v = rec.get(k)
        if v is None:
            found = "null" if k in rec else "no such key"
            return LineIssue("missing_key", f"key {k!r} missing ({found}); keys present: {sorted(rec)[:10]}")
        if not isinstance(v, str):
            return LineIssue("not_string", f"key {k!r} is {type(v).__name__}, expected a string")
        out.append(v)
    if b"\\ud" in line or b"\\uD" in line:  # only a \uD800-\uDFFF escape can yield a lone surrogate
        for k, v in zip(keys, out):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return LineIssue("bad_unicode", f"key {k!r} holds a lone UTF-16 surrogate "
                                                f"{v[e.start:e.end]!r} at character {e.start} (not valid Unicode text)")
    return out


def is_blank(line: bytes) -> bool:
    return not line or line.isspace()


def iter_texts(paths: Sequence[str], key: str = "text", on_bad_line: str = "fail",
               block_bytes: int = 1 << 22) -> Iterator[str]:
    """Texts of `key` from JSONL files in order. Bad lines raise (`fail`) or are skipped (`skip`); blank lines are
    skipped."""
    for path in paths:
        with open_input(path) as stream:
            for block in iter_blocks(stream, block_bytes):
                for i, line in enumerate(split_lines(block.data)):
                    if is_blank(line):
                        continue
                    got = parse_line(line, (key,))
                    if isinstance(got, LineIssue):
                        if on_bad_line == "fail":
                            raise InputError(f"{path}:{block.first_line + i}: {got.detail}")
                        continue
                    yield got[0]
