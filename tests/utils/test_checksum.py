"""utils/checksum: XXH3-64 against the published test vector, chunked reading equals one pass, faults are named."""

import numpy as np
import pytest

from megatron_tf.utils import checksum


def test_known_vector():
    # XXH3_64bits("abc") from the xxHash reference implementation's test vectors
    assert checksum.digest_buffers([b"abc"]) == "78af5f94892f3950"
    assert checksum.digest_buffers([b"a", np.frombuffer(b"bc", np.uint8)]) == "78af5f94892f3950"


def test_file_chunks_offset_and_faults(tmp_path, monkeypatch):
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    p = tmp_path / "x.bin"
    p.write_bytes(b"HEADER" + data)
    monkeypatch.setattr(checksum, "CHUNK_BYTES", 4096)  # many chunks, last one partial
    want = checksum.digest_buffers([data])
    assert checksum.digest_file(str(p), offset=6) == want
    checksum.verify_file(str(p), want, offset=6, length=len(data))
    flipped = bytearray(p.read_bytes())
    flipped[50_000] ^= 1
    p.write_bytes(bytes(flipped))
    with pytest.raises(checksum.ChecksumError, match=r"x\.bin: payload checksum mismatch .*expected " + want):
        checksum.verify_file(str(p), want, offset=6)
    with pytest.raises(checksum.ChecksumError, match="runs past the end"):
        checksum.digest_file(str(p), offset=6, length=len(data) + 1)
