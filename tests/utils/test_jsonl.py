"""JSONL reader faults: truncated zstd input, lone UTF-16 surrogates (issue 14, items 2 and 5)."""

import json

import pytest
import zstandard

from megatron_tf.utils.jsonl import InputError, LineIssue, iter_blocks, iter_texts, open_input, parse_line

RECORDS = [{"text": f"document number {i} " + "word " * (i % 17)} for i in range(886)]
DATA = b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS)


def read_all(path):
    with open_input(str(path)) as s:
        return b"".join(b.data for b in iter_blocks(s, 4096))


def zstd_frames(data, pieces):
    """`data` compressed as `pieces` concatenated frames (a valid zstd file, e.g. from pzstd)."""
    cut = [len(data) * k // pieces for k in range(pieces + 1)]
    return b"".join(zstandard.ZstdCompressor(level=3).compress(data[a:b]) for a, b in zip(cut, cut[1:]))


def test_complete_multi_frame_zstd_reads_everything(tmp_path):
    p = tmp_path / "ok.jsonl.zst"
    p.write_bytes(zstd_frames(DATA, 3))
    assert read_all(p) == DATA  # reference: the uncompressed bytes
    assert list(iter_texts([str(p)])) == [r["text"] for r in RECORDS]


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9, 0.999])
def test_truncated_zstd_is_an_error_naming_the_file(tmp_path, frac):
    # before the fix: a short read, no error (300 of 886 documents, exit status 0), or a misleading bad-JSON line
    whole = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(DATA)
    p = tmp_path / "cut.jsonl.zst"
    p.write_bytes(whole[: int(len(whole) * frac)])
    with pytest.raises(InputError, match=r"cut\.jsonl\.zst: cannot read zstd data: truncated file") as e:
        read_all(p)
    assert str(e.value).count("cannot read") == 1
    with pytest.raises(InputError, match=r"cut\.jsonl\.zst"):  # the reader tools/evaluate.py uses (text_sets)
        list(iter_texts([str(p)], on_bad_line="skip"))


def test_truncated_second_frame_is_an_error(tmp_path):
    frames = zstd_frames(DATA, 2)
    first = len(zstandard.ZstdCompressor(level=3).compress(DATA[: len(DATA) // 2]))
    p = tmp_path / "cut2.jsonl.zst"
    p.write_bytes(frames[: first + 20])  # the first frame whole, the second one begun
    with pytest.raises(InputError, match=r"cut2\.jsonl\.zst: .*unfinished"):
        read_all(p)


def test_corrupt_zstd_names_the_file(tmp_path):
    whole = bytearray(zstandard.ZstdCompressor(level=3).compress(DATA))
    whole[len(whole) // 2 : len(whole) // 2 + 64] = b"\xff" * 64
    p = tmp_path / "bad.jsonl.zst"
    p.write_bytes(bytes(whole))
    with pytest.raises(InputError, match=r"bad\.jsonl\.zst: cannot read zstd data"):
        read_all(p)


def test_lone_surrogate_is_a_bad_line():
    line = b'{"text": "a\\ud800b"}'
    assert isinstance(json.loads(line)["text"], str)  # valid JSON: the decoder accepts it
    got = parse_line(line, ("text",))
    assert isinstance(got, LineIssue) and got.kind == "bad_unicode" and "surrogate" in got.detail
    # a proper surrogate pair is a valid character
    assert parse_line(b'{"text": "a\\ud83e\\uddecb"}', ("text",)) == ["a\U0001f9ecb"]
    assert parse_line(b'{"text": "x", "other": "\\udfff"}', ("text",)) == ["x"]  # unused keys do not matter


def test_iter_texts_lone_surrogate_policies(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_bytes(b'{"text": "one"}\n{"text": "bad \\udc00"}\n{"text": "three"}\n')
    assert list(iter_texts([str(p)], on_bad_line="skip")) == ["one", "three"]
    with pytest.raises(InputError, match=r"s\.jsonl:2: key 'text' holds a lone UTF-16 surrogate"):
        list(iter_texts([str(p)]))


def test_the_evaluation_readers_refuse_a_truncated_zstd(tmp_path):
    """tools/evaluate.py reads its question sets (eval_sets.read_records) and text sets (iter_texts) through this
    reader: a cut .zst is an error there too, not a shorter evaluation set."""
    from megatron_tf.evaluation.eval_sets import read_records

    whole = zstandard.ZstdCompressor(level=3).compress(DATA)
    p = tmp_path / "mmlu.jsonl.zst"
    p.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(InputError, match=r"mmlu\.jsonl\.zst: cannot read zstd data: truncated file"):
        list(read_records(str(p)))
    p.write_bytes(whole)
    assert len(list(read_records(str(p)))) == len(RECORDS)
