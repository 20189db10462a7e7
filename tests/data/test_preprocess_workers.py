"""Preprocessing workers (data/preprocess_workers.py): the orjson fast path parses every line as utils/jsonl's
parse_line does (values, bad-line kinds and details), and HF byte-level BPE preprocessing through the chunk cache
writes the tokenizer's own ids, for any worker count and block size."""

import json
import os

import numpy as np
import pytest

from megatron_tf.data import preprocess_workers as pw
from megatron_tf.data.indexed_dataset import IndexedDataset
from megatron_tf.data.preprocess import PreprocessConfig, preprocess
from megatron_tf.tokenizer.tokenizer import HFTokenizer
from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer
from tests.data.test_preprocess import SP_MODEL, TEXTS, corpus, write_jsonl
from tests.log_utils import captured_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LINES = [b'{"text": "a", "text": "b"}', b'{"text": NaN}', b'{"text": "x", "n": NaN}', b'\xef\xbb\xbf{"text": "bom"}',
         b'{"text": "\\ud800"}', b'{"text": "\\ud83d\\ude00 ok"}', b'{"text": "\\u0000"}', b'{"text": 1}',
         b'{"text": null}', b'{"other": "x"}', b'["text"]', b'"text"', b"{bad", b'{"text": "\xff"}',
         b'{"text": "x", "big": 123456789012345678901234567890}', b'{"text": "tab\\tand \\"quotes\\""}', b"  ",
         b'{"text": "caf\xc3\xa9 \xe6\x97\xa5"}', b'{"text": "a"} trailing']


def _encode(lines, monkeypatch, fast: bool):
    if not fast:
        monkeypatch.setattr(pw, "_orjson_loads", None)
    tok = pw.build_spec_tokenizer({"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": SP_MODEL,
                                   "vocab_size": None, "tokenizer_threads": 1})
    enc = pw.BlockEncoder(tok, ["text"], False, "keep", "skip", np.dtype(np.int32), 100)
    res = enc.encode(b"\n".join(lines) + b"\n", 1)
    monkeypatch.undo()
    return res.tokens[0].tolist(), res.lengths[0].tolist(), res.issue_counts, res.issues, res.blank


def test_fast_json_path_equals_parse_line(monkeypatch):
    pytest.importorskip("orjson")
    assert _encode(LINES, monkeypatch, True) == _encode(LINES, monkeypatch, False)
    assert pw._fast_parse(b'{"text": "\\ud800"}', ("text",)) is None  # left to parse_line, which reports it


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf") / "tokenizer.json")
    train_tokenizer(TrainTokenizerConfig(input=[os.path.join(REPO, "data", "demo", "train", "general.jsonl.xz")],
                                         output=out, type="hf", vocab_size=700, num_threads=1))
    return out


def preprocess_log():
    """The preprocess logger's messages."""
    return captured_log("megatron_tf.preprocess")


def _run(tmp_path, src, tok_path, name, **kw):
    cfg = PreprocessConfig(input=[str(src)], output_prefix=str(tmp_path / name), tokenizer_type="HFTokenizer",
                           tokenizer_model=tok_path, append_eod=True, **kw)
    preprocess(cfg)
    return str(tmp_path / name) + "_text_document"


def test_hf_byte_level_preprocessing_equals_the_tokenizer(tmp_path, hf_json):
    recs = corpus(200) + [{"text": t} for t in ("  two  spaces \n indented", "\u00a0 nbsp \u3000 ideographic")]
    src = write_jsonl(tmp_path / "c.jsonl", recs)
    tok = HFTokenizer(hf_json)
    expected = [ids + [tok.eod] for ids in (tok.tokenize(r["text"]) for r in recs)]
    with preprocess_log() as log:
        base = _run(tmp_path, src, hf_json, "wc", workers=1)
    assert "word cache: on (exact for this tokenizer)" in log
    ds = IndexedDataset(base)
    assert [ds[i].tolist() for i in range(len(ds))] == expected
    ref = {ext: open(base + ext, "rb").read() for ext in (".bin", ".idx")}
    for name, kw in {"w2": {"workers": 2, "batch_bytes": 3000}, "nowc": {"word_cache": False}}.items():
        p = _run(tmp_path, src, hf_json, name, **kw)
        assert {ext: open(p + ext, "rb").read() for ext in (".bin", ".idx")} == ref, name


def test_hf_tokenizer_the_cache_cannot_serve_is_encoded_directly(tmp_path, hf_json):
    cfg = json.load(open(hf_json))
    cfg["pre_tokenizer"]["add_prefix_space"] = True
    edited = tmp_path / "prefix.json"
    edited.write_text(json.dumps(cfg))
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    with preprocess_log() as log:
        p = _run(tmp_path, src, str(edited), "x")
    assert "word cache: off (ByteLevel add_prefix_space is on)" in log
    tok = HFTokenizer(str(edited))
    ds = IndexedDataset(p)
    assert [ds[i].tolist() for i in range(len(ds))] == [tok.tokenize(t) + [tok.eod] for t in TEXTS]
