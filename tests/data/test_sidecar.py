"""Forget sidecar format (megatron_tf/data/sidecar.py, docs/sidecar_format.md): bytes, thresholds, validation."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
from fractions import Fraction

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import (
    KIND_DOC_SCORES,
    KIND_TOKEN_MASK,
    KIND_TOKEN_SCORES,
    BitPacker,
    DocumentScores,
    SidecarError,
    SidecarWriter,
    TokenMask,
    TokenScores,
    dequantize_scores,
    quantize_scores,
    quantize_threshold,
    read_header,
    sidecar_path,
    token_scores_header,
    write_document_scores,
    write_token_mask,
    write_token_scores,
)
from tests.log_utils import captured_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO, "docs", "sidecar_format.md")

# The worked example of docs/sidecar_format.md: documents [11 12 13] [14 15] (uint16), scores below.
EXAMPLE_DOCS = [[11, 12, 13], [14, 15]]
EXAMPLE_SCORES = np.array([0.0, 0.2, 1.0, 0.5, 0.75], dtype=np.float32)


def _fingerprint_by_spec(prefix: str) -> bytes:
    """The documented fingerprint, written out independently of indexed_dataset.dataset_fingerprint."""
    idx = open(prefix + ".idx", "rb").read()
    binary = open(prefix + ".bin", "rb").read()
    h = hashlib.sha256(b"megatron_tf dataset fingerprint v1")
    h.update(hashlib.sha256(idx).digest())
    h.update(struct.pack("<Q", len(binary)))
    spans = [(0, 1 << 20), (max(0, len(binary) - (1 << 20)), 1 << 20)] + [(len(binary) * i // 64, 4096)
                                                                          for i in range(64)]
    for off, n in spans:
        h.update(binary[off : off + n])
    return h.digest()


def _doc_hex_block(name: str) -> bytes:
    """Bytes of the annotated dump `name` in docs/sidecar_format.md (lines 'OFFSET | hex bytes | comment')."""
    text = open(DOC, encoding="utf-8").read()
    m = re.search(rf"<!-- dump:{name} -->\n```\n(.*?)```", text, re.S)
    assert m, f"no dump {name} in {DOC}"
    out = bytearray()
    for line in m.group(1).splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not re.fullmatch(r"[0-9a-f]{6}", parts[0].strip()):
            continue
        assert int(parts[0], 16) == len(out), f"offset column of {line!r}"
        out += bytes.fromhex(parts[1])
    return bytes(out)


@pytest.fixture
def example(tmp_path):
    return write_dataset(str(tmp_path / "example"), EXAMPLE_DOCS, dtype=np.uint16)


# ---- quantization and thresholds --------------------------------------------------------------------------------
def test_quantization_round_trip_error_at_most_1_over_510():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.random(100_000, dtype=np.float32), np.array([0.0, 1.0, 0.5, 1 / 510, 509 / 510],
                                                                        np.float32)])
    q = quantize_scores(s)
    assert q.dtype == np.uint8
    err = np.abs(dequantize_scores(q).astype(np.float64) - s.astype(np.float64))
    assert err.max() <= 1 / 510 + 1e-7
    assert quantize_scores(np.array([0.0, 1.0], np.float32)).tolist() == [0, 255]
    for bad in ([-0.01], [1.01], [np.nan], [np.inf]):
        with pytest.raises(SidecarError, match="in \\[0, 1\\]"):
            quantize_scores(np.array(bad, np.float32))


def test_threshold_rule_is_ceil_255t_on_the_grid_and_between():
    for k in range(1, 256):
        assert quantize_threshold(k / 255) == k  # exactly on a level: that level counts as forget
        if k < 255:
            mid = (k + 0.5) / 255
            assert quantize_threshold(mid) == k + 1 == math.ceil(Fraction(mid) * 255)
    assert quantize_threshold(0.5) == 128
    assert quantize_threshold(1.0) == 255
    assert quantize_threshold(1e-9) == 1  # smallest positive threshold still needs q >= 1
    for bad in (0.0, -0.5, 1.0001, 2.0):
        with pytest.raises(SidecarError, match="\\(0, 1\\]"):
            quantize_threshold(bad)


def test_flags_follow_original_scores_away_from_the_quantization_step(tmp_path):
    rng = np.random.default_rng(1)
    n = 4000
    s = rng.random(n, dtype=np.float32)
    ds = write_dataset(str(tmp_path / "d"), [np.arange(n) % 100], dtype=np.uint16)
    write_token_scores(ds, quantize_scores(s), {})
    ts = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds)
    for t in (0.1, 0.25, 0.5, 0.73, 0.9, 1.0):
        flags = ts.flags(0, n, t)
        far = np.abs(s.astype(np.float64) - t) > 1 / 510 + 1e-7
        np.testing.assert_array_equal(flags[far], (s >= t)[far])
        np.testing.assert_array_equal(flags, ts.q >= math.ceil(round(255 * t, 6)))


# ---- the worked example, byte for byte --------------------------------------------------------------------------
def _xxh3(payload: bytes) -> int:
    import xxhash

    return xxhash.xxh3_64(payload).intdigest()  # the documented checksum, computed by the library directly


def test_worked_example_bytes_match_spec_and_docs(example):
    path = write_token_scores(example, quantize_scores(EXAMPLE_SCORES), {})
    assert path == example.path_prefix + ".forget.tokscores"
    meta = json.dumps({"quantization": "q = round(255 * score)"}, sort_keys=True).encode()
    assert len(meta) == 42
    payload = bytes([0, 51, 255, 128, 191])
    fixed = struct.pack("<8sHHIQQ32sQI", b"MTFSIDE\x00", 2, 1, 128, 5, 2, _fingerprint_by_spec(example.path_prefix),
                        _xxh3(payload), len(meta))
    assert len(fixed) == 76
    expected = fixed + meta + b"\x00" * (128 - 76 - 42) + payload
    data = open(path, "rb").read()
    assert data == expected
    assert data == _doc_hex_block("tokscores")
    assert example.fingerprint() == _fingerprint_by_spec(example.path_prefix).hex()
    assert read_header(path).checksum == f"{_xxh3(payload):016x}" == "a580ed3899e23088"

    mask_path = write_token_mask(example, quantize_scores(EXAMPLE_SCORES) >= 128, 0.5, {})
    mdata = open(mask_path, "rb").read()
    mmeta = b'{"bitorder": "little", "threshold": 0.5, "token_scores_xxh3_64": "a580ed3899e23088"}'
    assert mdata == (struct.pack("<8sHHIQQ32sQI", b"MTFSIDE\x00", 2, 2, 192, 5, 2,
                                 _fingerprint_by_spec(example.path_prefix), _xxh3(bytes([0b00011100])), len(mmeta))
                     + mmeta + b"\x00" * (192 - 76 - len(mmeta)) + bytes([0b00011100]))
    assert mdata == _doc_hex_block("tokmask")


def test_header_round_trip_and_payload_alignment(example):
    for meta_len in range(0, 200, 7):
        path = write_token_scores(example, np.arange(5, dtype=np.uint8), {"pad": "x" * meta_len})
        h = read_header(path)
        assert h.payload_offset % 64 == 0 and h.payload_offset >= 76 + len(json.dumps(h.metadata, sort_keys=True))
        assert h.payload_offset - 64 < 76 + len(json.dumps(h.metadata, sort_keys=True))
        assert h.metadata["pad"] == "x" * meta_len and (h.num_tokens, h.num_documents) == (5, 2)
        assert h.version == 2 and h.checksum == f"{_xxh3(bytes(range(5))):016x}"
        assert TokenScores(path, example).q.tolist() == [0, 1, 2, 3, 4]


# ---- bit masks -----------------------------------------------------------------------------------------------
def test_packbits_layout_non_multiple_of_8(tmp_path):
    flags = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1], dtype=bool)
    ds = write_dataset(str(tmp_path / "m"), [list(range(6)), list(range(7))], dtype=np.uint16)
    path = write_token_mask(ds, flags, 0.5, {})
    h = read_header(path)
    raw = open(path, "rb").read()
    assert len(raw) == h.payload_offset + 2
    assert raw[h.payload_offset :] == bytes([0x01, 0b00010011])  # bit k of byte j is token 8j + k
    tm = TokenMask(path, ds)
    np.testing.assert_array_equal(tm.flags(0, 13), flags)
    for a in range(14):
        for b in range(a, 14):
            np.testing.assert_array_equal(tm.flags(a, b), flags[a:b])


def test_mask_equals_thresholded_scores_for_every_threshold(tmp_path):
    rng = np.random.default_rng(2)
    n = 1003
    q = rng.integers(0, 256, n).astype(np.uint8)
    ds = write_dataset(str(tmp_path / "t"), [np.arange(500), np.arange(503)], dtype=np.uint16)
    write_token_scores(ds, q, {})
    ts = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds)
    for t in (0.01, 0.3, 0.5, 128 / 255, 0.99, 1.0):
        write_token_mask(ds, ts.flags(0, n, t), t, {}, name=f"m{t}")
        tm = TokenMask(sidecar_path(ds.path_prefix, KIND_TOKEN_MASK, f"m{t}"), ds)
        assert tm.threshold == t
        np.testing.assert_array_equal(tm.flags(0, n), q >= math.ceil(round(255 * t, 6)))
        for a, b in ((0, 1), (3, 17), (499, 504), (996, 1003), (8, 8)):
            np.testing.assert_array_equal(tm.flags(a, b, t), ts.flags(a, b, t))
        other = 0.2 if t != 0.2 else 0.3
        with pytest.raises(SidecarError, match="bit mask was made at threshold"):
            tm.flags(0, 5, other)


def test_streaming_writer_and_bitpacker_equal_one_shot(tmp_path):
    rng = np.random.default_rng(3)
    n = 777
    q = rng.integers(0, 256, n).astype(np.uint8)
    ds = write_dataset(str(tmp_path / "s"), [np.arange(n)], dtype=np.uint16)
    one = open(write_token_scores(ds, q, {"a": 1}), "rb").read()
    one_mask = open(write_token_mask(ds, q >= 128, 0.5, {}, name="m"), "rb").read()
    cuts = np.sort(rng.choice(np.arange(1, n), 20, replace=False))
    path = sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES, "stream")
    packer, packed = BitPacker(), []
    with SidecarWriter(path, token_scores_header(ds, {"a": 1})) as w:
        for piece in np.split(q, cuts):
            w.write(piece)
            packed.append(packer.feed(piece >= 128))
        w.commit()
    packed.append(packer.finish())
    assert open(path, "rb").read() == one
    h = read_header(sidecar_path(ds.path_prefix, KIND_TOKEN_MASK, "m"))
    assert np.concatenate(packed).tobytes() == one_mask[h.payload_offset :]
    # wrong payload sizes are refused and leave nothing behind
    bad = sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES, "bad")
    w = SidecarWriter(bad, token_scores_header(ds, {}))
    w.write(q[:-1])
    with pytest.raises(SidecarError, match="header expects 777"):
        w.commit()
    w = SidecarWriter(bad, token_scores_header(ds, {}))
    with pytest.raises(SidecarError, match="exceeds"):
        w.write(np.concatenate([q, q[:1]]))
    w.abort()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("s.bad")]


# ---- document scores ---------------------------------------------------------------------------------------------
def test_document_score_columns(example):
    cols = ["mean_score", "max_score", "frac_ge_0.50"]
    vals = np.array([[0.4, 1.0, 0.33], [0.625, 0.75, 1.0]], dtype=np.float32)
    path = write_document_scores(example, vals, cols, {"labeler": {"labeler": "x"}})
    d = DocumentScores(path, example)
    assert d.columns == cols and d.metadata["labeler"] == {"labeler": "x"}
    np.testing.assert_array_equal(d.column("max_score"), vals[:, 1])
    np.testing.assert_array_equal(d.values, vals)
    raw = open(path, "rb").read()
    assert raw[d.header.payload_offset :] == vals.astype("<f4").tobytes()  # row-major [document, column]
    with pytest.raises(SidecarError, match="no document score column 'frac_ge_0.90'"):
        d.column("frac_ge_0.90")
    with pytest.raises(SidecarError, match="float32\\[2, 3\\]"):
        write_document_scores(example, vals[:1], cols, {})


# ---- mismatches and corruption ---------------------------------------------------------------------------------
def test_mismatched_dataset_errors_name_both_files_and_values(tmp_path, example):
    path = write_token_scores(example, np.zeros(5, np.uint8), {})
    other_len = write_dataset(str(tmp_path / "six"), [[1, 2, 3], [4, 5, 6]], dtype=np.uint16)
    with pytest.raises(SidecarError) as e:
        TokenScores(path, other_len)
    msg = str(e.value)
    assert path in msg and other_len.bin_path in msg and "5 tokens" in msg and "has 6" in msg
    other_docs = write_dataset(str(tmp_path / "docs"), [[11, 12], [13], [14, 15]], dtype=np.uint16)
    with pytest.raises(SidecarError) as e:
        TokenScores(path, other_docs)
    msg = str(e.value)
    assert path in msg and other_docs.idx_path in msg and "2 documents" in msg and "has 3" in msg
    other_content = write_dataset(str(tmp_path / "content"), [[11, 12, 13], [14, 16]], dtype=np.uint16)
    with pytest.raises(SidecarError) as e:
        TokenScores(path, other_content)
    msg = str(e.value)
    assert path in msg and other_content.bin_path in msg
    assert example.fingerprint()[:16] in msg and other_content.fingerprint()[:16] in msg
    with pytest.raises(SidecarError, match="expected a token bit mask sidecar, found token scores"):
        TokenMask(path, example)


def test_corrupt_files_give_clear_errors(example):
    path = write_token_scores(example, np.arange(5, dtype=np.uint8), {})
    good = open(path, "rb").read()

    def check(data: bytes, pattern: str) -> None:
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(SidecarError, match=pattern) as e:
            TokenScores(path, example)
        assert path in str(e.value)

    check(good[:40], "truncated sidecar header: expected at least 76 bytes, found 40")
    check(b"NOTSIDE\x00" + good[8:], "bad sidecar magic")
    check(good[:8] + struct.pack("<H", 7) + good[10:],
          r"unsupported sidecar version: expected one of \[1, 2\], found 7")
    check(good[:10] + struct.pack("<H", 9) + good[12:], "unknown sidecar kind")
    check(good[:72] + struct.pack("<I", 4000) + good[76:], "corrupt sidecar header: metadata length 4000")
    check(good[:12] + struct.pack("<I", 192) + good[16:], "needs payload offset 128, header says 192")
    check(good[:76] + b"\xff" * 42 + good[118:], "corrupt sidecar metadata JSON")
    check(good[:-1], f"expected {len(good)} bytes, found {len(good) - 1}")
    check(good + b"\x00", f"expected {len(good)} bytes, found {len(good) + 1}")
    check(good[:16] + struct.pack("<Q", 6) + good[24:], "size mismatch")
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="sidecar not found"):
        TokenScores(path, example)


def test_write_validates_shapes(example):
    with pytest.raises(SidecarError, match="uint8\\[5\\]"):
        write_token_scores(example, np.zeros(4, np.uint8), {})
    with pytest.raises(SidecarError, match="uint8\\[5\\]"):
        write_token_scores(example, np.zeros(5, np.float32), {})
    with pytest.raises(SidecarError, match="bool\\[5\\]"):
        write_token_mask(example, np.zeros(6, bool), 0.5, {})
    with pytest.raises(SidecarError, match="\\(0, 1\\]"):
        write_token_mask(example, np.zeros(5, bool), 0.0, {})
    assert sidecar_path("a/b", KIND_DOC_SCORES, "n") == "a/b.n.docscores"
    assert sidecar_path("a/b", KIND_TOKEN_MASK) == "a/b.forget.tokmask"


# ---- payload checksums, version 1 files, verify_sidecars (issue 14, item 8) ------------------------------------
def _flip_payload_byte(path: str, k: int = 0) -> None:
    h = read_header(path)
    with open(path, "r+b") as f:
        f.seek(h.payload_offset + k)
        b = f.read(1)
        f.seek(h.payload_offset + k)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("kind", ["tokscores", "tokmask", "docscores"])
def test_flipped_payload_byte_is_refused_at_open_and_by_verify(example, kind):
    from megatron_tf.data.sidecar import verify_sidecars
    from megatron_tf.utils.checksum import ChecksumError

    q = quantize_scores(EXAMPLE_SCORES)
    paths = {"tokscores": write_token_scores(example, q, {}), "tokmask": write_token_mask(example, q >= 128, 0.5, {}),
             "docscores": write_document_scores(example, np.array([[0.4, 1.0], [0.6, 0.75]], np.float32),
                                                ["mean_score", "max_score"], {})}
    assert verify_sidecars(example.path_prefix) == sorted(paths.values())
    cls = {"tokscores": TokenScores, "tokmask": TokenMask, "docscores": DocumentScores}[kind]
    _flip_payload_byte(paths[kind])  # before: the flags silently changed (6.5% -> 20% forget)
    with pytest.raises(ChecksumError, match=rf"{re.escape(paths[kind])}: sidecar payload checksum mismatch"):
        cls(paths[kind], example)
    with pytest.raises(ChecksumError, match=re.escape(paths[kind])):
        verify_sidecars(example.path_prefix)
    assert verify_sidecars(example.path_prefix, name="nope") == []


def test_verification_happens_once_per_file_version(example, monkeypatch):
    import megatron_tf.data.sidecar as sc

    path = write_token_scores(example, np.arange(5, dtype=np.uint8), {})
    calls = []
    real = sc.digest_file
    monkeypatch.setattr(sc, "digest_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    TokenScores(path, example)
    TokenScores(path, example)
    assert calls == [path]
    write_token_scores(example, np.arange(1, 6, dtype=np.uint8), {})  # a new file version is checked again
    TokenScores(path, example)
    assert calls == [path, path]


def _write_v1(example, payload: bytes, kind: int = 1, meta: dict | None = None) -> str:
    """A version 1 file by the old layout (68-byte fixed header, no checksum)."""
    m = json.dumps(meta or {"quantization": "q = round(255 * score)"}, sort_keys=True).encode()
    off = (68 + len(m) + 63) // 64 * 64
    data = struct.pack("<8sHHIQQ32sI", b"MTFSIDE\x00", 1, kind, off, 5, 2, _fingerprint_by_spec(example.path_prefix),
                       len(m)) + m + b"\x00" * (off - 68 - len(m)) + payload
    path = example.path_prefix + ".forget." + {1: "tokscores", 2: "tokmask"}[kind]
    open(path, "wb").write(data)
    return path


def test_version_1_files_are_read_with_a_warning(example):
    from megatron_tf.data.sidecar import verify_sidecars

    path = _write_v1(example, bytes([0, 51, 255, 128, 191]))
    with captured_log(level=logging.WARNING) as msgs:
        ts = TokenScores(path, example)
        assert verify_sidecars(example.path_prefix) == []  # nothing it could check
    assert ts.q.tolist() == [0, 51, 255, 128, 191] and ts.header.version == 1 and ts.header.checksum is None
    assert any(path in m and "has no payload checksum" in m and "re-run tools/annotate.py" in m for m in msgs), msgs


def test_document_scores_out_of_range_are_refused(example):
    for bad, shown in ((1.5, "1.5"), (np.nan, "nan"), (-0.25, "-0.25")):
        vals = np.array([[0.5, 1.0], [bad, 0.75]], np.float32)
        path = write_document_scores(example, vals, ["mean_score", "max_score"], {})
        d = DocumentScores(path, example)
        np.testing.assert_array_equal(d.column("max_score"), vals[:, 1])
        with pytest.raises(SidecarError, match=rf"{re.escape(path)}: document score column 'mean_score' must hold "
                                               rf"finite values in \[0, 1\], found {shown} for document 1"):
            d.column("mean_score")


def test_disk_full_while_writing_names_the_file(example, monkeypatch):
    import errno

    import megatron_tf.data.sidecar as sc

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    orig_write_array = sc._write_array  # the raw file write fails, as on a full disk
    monkeypatch.setattr(sc, "_write_array", lambda f, payload, path, tmp: orig_write_array(Full(f), payload, path,
                                                                                             tmp))
    with pytest.raises(OSError) as e:
        write_token_scores(example, np.arange(5, dtype=np.uint8), {})
    path = sidecar_path(example.path_prefix, KIND_TOKEN_SCORES)
    assert e.value.errno == errno.ENOSPC and f"writing sidecar {path}" in str(e.value)
    assert "No space left on device" in str(e.value)
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".forget." in f]  # the temporary file is gone


def test_a_version_1_mask_is_unbound_beside_token_scores(example):
    from megatron_tf.data.sidecar import mask_binding_problem

    mask = _write_v1(example, bytes([0b00011100]), kind=2, meta={"bitorder": "little", "threshold": 0.5})
    h = read_header(mask)
    assert h.version == 1 and mask_binding_problem(mask, h, example.path_prefix + ".forget.tokscores") is None
    scores = write_token_scores(example, quantize_scores(EXAMPLE_SCORES), {})  # even the very flags it holds
    reason = mask_binding_problem(mask, h, scores)
    assert "records no checksum of the token scores" in reason and "format version 1" in reason
