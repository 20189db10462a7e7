"""tools/annotate.py: the command line end to end (subprocess), its flags, summary and error exits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import (
    KIND_DOC_SCORES,
    KIND_TOKEN_MASK,
    KIND_TOKEN_SCORES,
    DocumentScores,
    TokenMask,
    TokenScores,
    sidecar_path,
)
from megatron_tf.labeling.annotate import main
from megatron_tf.labeling.blocklist import BlocklistLabeler
from tests.labeling.tiny_tokenizers import CORPUS, train_sp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TERMS = os.path.join(REPO, "data", "demo", "medical_terms.txt")


def _dataset(tmp_path):
    tok = train_sp(str(tmp_path))
    docs = [tok.tokenize(t) + [tok.eod] for t in CORPUS[:10]]
    ds = write_dataset(str(tmp_path / "corpus_text_document"), docs, dtype=np.uint16)
    return tok, ds, docs


def test_cli_end_to_end(tmp_path):
    tok, ds, docs = _dataset(tmp_path)
    with open(ds.path_prefix + ".meta.json", "w") as f:
        json.dump({"tokenizer": tok.describe(), "max_token_id": int(max(max(d) for d in docs))}, f)
    cmd = [sys.executable, os.path.join(REPO, "tools", "annotate.py"), "--data-prefix", ds.path_prefix,
           "--labeler", "blocklist", "--terms", TERMS, "--tokenizer-type", "SentencePieceTokenizer",
           "--tokenizer-model", tok.path, "--write-mask-threshold", "0.5", "--doc-frac-threshold", "0.25",
           "--workers", "2", "--chunk-docs", "3", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert r.returncode == 0, r.stderr
    assert f"annotated {ds.num_tokens:,} tokens in 10 documents" in r.stdout
    ts = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds)
    lab = BlocklistLabeler.from_file(TERMS, tok)
    flags = np.concatenate(lab.score_documents([np.array(d) for d in docs])) > 0
    np.testing.assert_array_equal(ts.q, flags * 255)
    np.testing.assert_array_equal(TokenMask(sidecar_path(ds.path_prefix, KIND_TOKEN_MASK), ds).flags(
        0, ds.num_tokens), flags)
    dsc = DocumentScores(sidecar_path(ds.path_prefix, KIND_DOC_SCORES), ds)
    assert dsc.columns == ["mean_score", "max_score", "frac_ge_0.25"]
    m = re.search(r"threshold 0\.50: ([\d.]+)% of tokens flagged", r.stdout)
    assert m and abs(float(m.group(1)) - 100 * flags.mean()) < 0.006
    meta = ts.metadata
    assert meta["labeler"]["terms_file"] == "medical_terms.txt" and meta["labeler"]["num_terms"] == lab.num_terms
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint and meta["created"] == "2023-11-14T22:13:20Z"
    assert 0.05 < flags.mean() < 0.6  # the medical sentences of the corpus are flagged, not everything


def test_cli_errors_exit_2_with_a_message(tmp_path, capsys):
    tok, ds, docs = _dataset(tmp_path)
    base = ["--data-prefix", ds.path_prefix, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
            tok.path, "--no-progress"]
    assert main(base) == 2
    assert "--labeler blocklist needs --terms FILE" in capsys.readouterr().err
    with open(ds.path_prefix + ".meta.json", "w") as f:
        json.dump({"tokenizer": {"fingerprint": "0" * 64, "type": "HFTokenizer"}}, f)
    assert main([*base, "--terms", TERMS]) == 2
    err = capsys.readouterr().err
    assert "tokenizer mismatch" in err and "0" * 64 in err and tok.fingerprint in err
    assert main([*base, "--terms", TERMS, "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main([*base, "--terms", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err
