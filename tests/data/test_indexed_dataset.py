"""Megatron .bin/.idx: exact bytes of the worked example in docs/formats.md, round trips, errors, megatron-core."""

import os
import struct

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import (
    DTYPE_CODES,
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    dataset_exists,
    optimal_dtype,
    write_dataset,
)

# docs/formats.md, "Worked example": uint16 tokens; document 0 = one sequence [17, 42, 1],
# document 1 = two sequences [7, 300] and [1] (as Megatron's --split-sentences writes them).
EXAMPLE_IDX_HEX = """
4d 4d 49 44 49 44 58 00 00                      magic "MMIDIDX\\0\\0"
01 00 00 00 00 00 00 00                         version 1
08                                              dtype code 8 = uint16
03 00 00 00 00 00 00 00                         sequence_count S = 3
03 00 00 00 00 00 00 00                         document_count = D + 1 = 3
03 00 00 00 02 00 00 00 01 00 00 00             sequence_lengths int32 [3, 2, 1]
00 00 00 00 00 00 00 00 06 00 00 00 00 00 00 00 0a 00 00 00 00 00 00 00   sequence_pointers int64 [0, 6, 10]
00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00   document_indices int64 [0, 1, 3]
"""
EXAMPLE_BIN_HEX = "11 00 2a 00 01 00 07 00 2c 01 01 00"  # 17 42 1 | 7 300 | 1, uint16 little-endian


def _hex(text: str) -> bytes:
    out = []
    for line in text.strip().splitlines():
        for tok in line.split():
            if len(tok) != 2 or not all(c in "0123456789abcdef" for c in tok):
                break  # start of the comment
            out.append(int(tok, 16))
    return bytes(out)


def _write_example(prefix: str) -> None:
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    b.add_document([17, 42, 1])
    b.add_item([7, 300])
    b.add_item([1])
    b.end_document()
    b.finalize(prefix + ".idx")


def test_worked_example_exact_bytes(tmp_path):
    prefix = str(tmp_path / "example")
    _write_example(prefix)
    expected_idx = _hex(EXAMPLE_IDX_HEX)
    assert len(expected_idx) == 94
    assert open(prefix + ".idx", "rb").read() == expected_idx
    assert open(prefix + ".bin", "rb").read() == _hex(EXAMPLE_BIN_HEX)
    ds = IndexedDataset(prefix)
    assert ds.num_documents == 2 and len(ds) == 3 and ds.num_tokens == 6
    assert ds[1].tolist() == [7, 300]
    assert ds.document_token_range(1) == (3, 6)
    assert ds.document_token_offsets().tolist() == [0, 3, 6]
    assert ds.tokens(2, 5).tolist() == [1, 7, 300]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # temporaries renamed away


def test_docs_formats_md_holds_the_same_example():
    """The hex dump in docs/formats.md is the one this test checks."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "formats.md")
    text = open(path, encoding="utf-8").read()
    for line in EXAMPLE_IDX_HEX.strip().splitlines():
        assert line.split("  ")[0].strip() in text


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_round_trip_every_dtype(tmp_path, code):
    dtype = np.dtype(DTYPE_CODES[code])
    rng = np.random.default_rng(code)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        make = lambda n: rng.integers(info.min, info.max, size=n, endpoint=True, dtype=dtype)
    else:
        make = lambda n: rng.standard_normal(n).astype(dtype)
    docs = [make(int(n)) for n in rng.integers(0, 50, size=40)]
    prefix = str(tmp_path / f"d{code}")
    ds = write_dataset(prefix, docs, dtype=dtype)
    raw = open(prefix + ".idx", "rb").read()
    assert raw[17] == code
    assert struct.unpack("<QQ", raw[18:34]) == (40, 41)
    assert os.path.getsize(prefix + ".bin") == sum(len(d) for d in docs) * dtype.itemsize
    assert ds.dtype == dtype and len(ds) == 40
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    lengths = np.array([len(d) for d in docs])
    np.testing.assert_array_equal(ds.document_token_offsets(), np.concatenate([[0], np.cumsum(lengths)]))


def test_optimal_dtype_rule():
    assert optimal_dtype(8192) is np.uint16
    assert optimal_dtype(65499) is np.uint16
    assert optimal_dtype(65500) is np.int32


# ---- errors name the file and the expected and found values -----------------------------------------------------
@pytest.fixture
def example(tmp_path):
    prefix = str(tmp_path / "example")
    _write_example(prefix)
    return prefix


def _corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_truncated_header(example):
    with open(example + ".idx", "r+b") as f:
        f.truncate(20)
    with pytest.raises(IndexedDatasetError, match=r"example\.idx.*truncated.*expected at least 34 bytes, found 20"):
        IndexedDataset(example)


def test_bad_magic(example):
    _corrupt(example + ".idx", 0, b"XXXX")
    with pytest.raises(IndexedDatasetError, match=r"example\.idx: bad magic: expected .*MMIDIDX.*found b'XXXXIDX"):
        IndexedDataset(example)


def test_bad_version(example):
    _corrupt(example + ".idx", 9, struct.pack("<Q", 2))
    with pytest.raises(IndexedDatasetError, match=r"example\.idx: unsupported index version: expected 1, found 2"):
        IndexedDataset(example)


def test_unknown_dtype_code(example):
    _corrupt(example + ".idx", 17, bytes([9]))
    with pytest.raises(IndexedDatasetError, match=r"example\.idx: unknown dtype code: expected one of .*found 9"):
        IndexedDataset(example)


def test_index_size_mismatch(example):
    with open(example + ".idx", "ab") as f:
        f.write(b"\0" * 5)
    with pytest.raises(IndexedDatasetError, match=r"example\.idx: index size mismatch.*expected 94 bytes, found 99"):
        IndexedDataset(example)


def test_bin_size_mismatch(example):
    with open(example + ".bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(IndexedDatasetError,
                       match=r"example\.bin: size 10 bytes does not match .*example\.idx: 6 tokens x 2 bytes .* = 12"):
        IndexedDataset(example)


def test_corrupt_document_indices(example):
    _corrupt(example + ".idx", 94 - 8, struct.pack("<q", 2))
    with pytest.raises(IndexedDatasetError, match=r"corrupt document_indices: expected first 0 and last 3, found "
                                                  r"first 0 and last 2"):
        IndexedDataset(example)


def test_non_contiguous_pointers(example):
    _corrupt(example + ".idx", 46 + 8, struct.pack("<q", 8))
    with pytest.raises(IndexedDatasetError, match=r"sequence 1 points at byte 8, expected 6"):
        IndexedDataset(example)


def test_missing_file_names_it(example):
    os.remove(example + ".bin")
    with pytest.raises(FileNotFoundError, match=r"example\.bin"):
        IndexedDataset(example)


def test_token_out_of_dtype_range(tmp_path):
    b = IndexedDatasetBuilder(str(tmp_path / "x.bin"), dtype=np.uint16)
    with pytest.raises(IndexedDatasetError, match=r"x\.bin: token ids \[0, 70000\] do not fit dtype uint16"):
        b.add_document([0, 70000])
    b.abort()
    assert os.listdir(tmp_path) == []


# ---- merge -------------------------------------------------------------------------------------------------------
def test_add_index_merge_equals_single_write(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 8000, size=int(n)).astype(np.uint16) for n in rng.integers(1, 30, size=25)]
    write_dataset(str(tmp_path / "a"), docs[:10], dtype=np.uint16)
    write_dataset(str(tmp_path / "b"), docs[10:], dtype=np.uint16)
    write_dataset(str(tmp_path / "whole"), docs, dtype=np.uint16)
    b = IndexedDatasetBuilder(str(tmp_path / "merged.bin"), dtype=np.uint16)
    b.add_index(str(tmp_path / "a"))
    b.add_index(str(tmp_path / "b"))
    b.finalize(str(tmp_path / "merged.idx"))
    for ext in (".bin", ".idx"):
        assert open(tmp_path / f"merged{ext}", "rb").read() == open(tmp_path / f"whole{ext}", "rb").read()


def test_add_index_dtype_mismatch(tmp_path):
    write_dataset(str(tmp_path / "a"), [[1, 2]], dtype=np.int32)
    b = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    with pytest.raises(IndexedDatasetError, match=r"a has dtype int32, this builder writes uint16"):
        b.add_index(str(tmp_path / "a"))
    b.abort()


def test_incomplete_write_is_not_a_dataset(tmp_path):
    b = IndexedDatasetBuilder(str(tmp_path / "x.bin"), dtype=np.int32)
    b.add_document([1, 2, 3])
    b.flush()
    assert not dataset_exists(str(tmp_path / "x"))
    b.abort()
    assert os.listdir(tmp_path) == []


# ---- megatron-core interoperability -----------------------------------------------------------------------------
@pytest.mark.megatron
def test_megatron_core_reads_ours_and_writes_the_same_bytes(tmp_path):
    mc = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 60000, size=int(n)).tolist() for n in rng.integers(1, 40, size=30)]
    ours = str(tmp_path / "ours")
    write_dataset(ours, docs, dtype=np.uint16)
    theirs = str(tmp_path / "theirs")
    builder = mc.IndexedDatasetBuilder(theirs + ".bin", dtype=np.uint16)
    for d in docs:
        builder.add_document(d, [len(d)])
    builder.finalize(theirs + ".idx")
    for ext in (".bin", ".idx"):
        assert open(ours + ext, "rb").read() == open(theirs + ext, "rb").read()
    m = mc.IndexedDataset(ours)
    assert len(m) == len(docs)
    np.testing.assert_array_equal(m.document_indices, np.arange(len(docs) + 1))
    for i, d in enumerate(docs):
        assert m[i].tolist() == d
    # and the worked example (multi-sequence document) through megatron-core's reader
    _write_example(str(tmp_path / "example"))
    m = mc.IndexedDataset(str(tmp_path / "example"))
    assert [m[i].tolist() for i in range(3)] == [[17, 42, 1], [7, 300], [1]]
    assert m.document_indices.tolist() == [0, 1, 3]


@pytest.mark.megatron
def test_we_read_megatron_core_multi_sequence_documents(tmp_path):
    mc = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    prefix = str(tmp_path / "theirs")
    builder = mc.IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    builder.add_document([5, 6, 7, 8], [1, 3])
    builder.add_document([], [])  # Megatron-LM's preprocess_data.py writes an empty text like this
    builder.add_document([9], [1])
    builder.finalize(prefix + ".idx")
    ds = IndexedDataset(prefix)
    assert ds.num_documents == 3 and len(ds) == 3
    assert [ds.document_token_range(d) for d in range(3)] == [(0, 4), (4, 4), (4, 5)]
    assert ds[1].tolist() == [6, 7, 8]


# ---- token ids against the vocabulary (issue 14, item 6) ---------------------------------------------------------
def test_check_token_ids_names_the_file_position_and_document(tmp_path, monkeypatch):
    import megatron_tf.data.indexed_dataset as idm
    from megatron_tf.data.indexed_dataset import IndexedDatasetError, check_token_ids, token_id_range

    docs = [[1, 2, 3], [4, 5], [6, 700, 8, 900]]  # fits uint16; ids 700 and 900 are outside a 512-token vocabulary
    ds = write_dataset(str(tmp_path / "d"), docs, dtype=np.uint16)
    assert token_id_range(ds) == (1, 900)
    with pytest.raises(IndexedDatasetError) as e:
        check_token_ids(ds, 512, "tok.model", cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    assert ds.bin_path in msg and "token id 700 at token 6 (document 2)" in msg and "[0, 512) of tok.model" in msg
    assert check_token_ids(ds, 901, cache_dir=str(tmp_path / "cache")) == (1, 900)
    # the range is cached by dataset fingerprint: a second open does not scan .bin again
    monkeypatch.setattr(idm, "token_id_range", lambda ds: pytest.fail("scanned .bin again"))
    assert check_token_ids(ds, 901, cache_dir=str(tmp_path / "cache")) == (1, 900)
    # negative ids (signed dtypes) are outside too
    neg = write_dataset(str(tmp_path / "n"), [[3, -2, 5]], dtype=np.int32)
    monkeypatch.undo()
    with pytest.raises(IndexedDatasetError, match=r"token id -2 at token 1 \(document 0\)"):
        check_token_ids(neg, 10)
    empty = write_dataset(str(tmp_path / "e"), [], dtype=np.uint16)
    assert check_token_ids(empty, 10) == (0, -1)
