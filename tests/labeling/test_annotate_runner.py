"""Annotation runner (labeling/annotate_runner.py): exact sidecar contents, determinism across chunking and
workers, kill-and-resume byte identity, validation errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from megatron_tf import __version__
from megatron_tf.data.indexed_dataset import IndexedDataset, write_dataset
from megatron_tf.data.sidecar import (
    KIND_DOC_SCORES,
    KIND_TOKEN_MASK,
    KIND_TOKEN_SCORES,
    DocumentScores,
    TokenMask,
    TokenScores,
    quantize_scores,
    sidecar_path,
)
from megatron_tf.labeling.annotate import annotate, work_dir_for
from megatron_tf.labeling.blocklist import BlocklistLabeler
from megatron_tf.tokenizer.tokenizer import NullTokenizer
from tests.labeling.labelers import BadLabeler, HashLabeler
from tests.labeling.test_blocklist import REF_TERMS, _random_texts
from tests.proc_utils import wait_for_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = (KIND_TOKEN_SCORES, KIND_DOC_SCORES, KIND_TOKEN_MASK)


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def _null_dataset(path, n_docs=23, seed=0, vocab=50):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab - 3, int(rng.integers(0, 40))) for _ in range(n_docs)]
    docs[3] = np.zeros(0, np.int64)  # an empty document
    return write_dataset(str(path), docs, dtype=np.uint16), docs


def _read_all(prefix, kinds=KINDS, name="forget"):
    return {k: open(sidecar_path(prefix, k, name), "rb").read() for k in kinds}


def _copy_dataset(src: str, dst: str) -> str:
    for ext in (".bin", ".idx"):
        shutil.copyfile(src + ext, dst + ext)
    return dst


def test_end_to_end_exact_contents(tmp_path):
    ds, docs = _null_dataset(tmp_path / "d")
    tok = NullTokenizer(50)
    lab = HashLabeler(3)
    s = annotate(ds.path_prefix, lab, tok, write_mask_threshold=0.4, doc_frac_threshold=0.3, chunk_docs=4,
                 progress=False)
    ref_scores = lab.score_documents(docs)
    q_ref = quantize_scores(np.concatenate(ref_scores))
    ts = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds)
    np.testing.assert_array_equal(ts.q, q_ref)  # every token
    tm = TokenMask(sidecar_path(ds.path_prefix, KIND_TOKEN_MASK), ds)
    np.testing.assert_array_equal(tm.flags(0, ds.num_tokens), q_ref >= 102)  # ceil(255 * 0.4) = 102
    dsc = DocumentScores(sidecar_path(ds.path_prefix, KIND_DOC_SCORES), ds)
    assert dsc.columns == ["mean_score", "max_score", "frac_ge_0.30"]
    for d, sc in enumerate(ref_scores):
        q = quantize_scores(sc).astype(np.float64)
        want = [q.mean() / 255, q.max() / 255, (q >= 77).mean()] if q.size else [0.0, 0.0, 0.0]
        np.testing.assert_array_equal(dsc.values[d], np.array(want, dtype=np.float32), err_msg=f"document {d}")
    meta = ts.metadata
    assert meta["labeler"] == {"labeler": "hash", "salt": 3}
    assert meta["tokenizer"] == {"type": "NullTokenizer", "fingerprint": tok.fingerprint, "vocab_size": 50,
                                "special_ids": [47, 48, 49]}
    assert meta["created"] == "2023-11-14T22:13:20Z" and meta["megatron_tf_version"] == __version__
    assert tm.metadata["threshold"] == 0.4 and dsc.metadata["doc_frac_threshold"] == 0.3
    assert not os.path.exists(work_dir_for(ds.path_prefix, "forget"))
    # summary numbers against numpy
    assert s.num_tokens == ds.num_tokens == q_ref.size and s.num_documents == 23
    assert s.thresholds == [0.3, 0.4, 0.5]
    assert s.token_fraction[0.5] == pytest.approx(np.mean(q_ref >= 128))
    assert s.doc_fraction_any[0.4] == pytest.approx(np.mean([sc.size > 0 and quantize_scores(sc).max() >= 102
                                                             for sc in ref_scores]))
    assert s.doc_fraction_mean[0.5] == pytest.approx(np.mean(dsc.values[:, 0] >= 0.5))
    assert "tokens flagged" in s.format()


def test_frac_column_names_carry_the_threshold_used():
    from megatron_tf.labeling.annotate import frac_column

    assert frac_column(0.5) == ("frac_ge_0.50", 0.5)
    assert frac_column(0.25) == ("frac_ge_0.25", 0.25)
    assert frac_column(1 / 3) == ("frac_ge_0.333333", 0.333333)
    assert frac_column(0.334) == ("frac_ge_0.334", 0.334)  # not "0.33": that would read back as another q level
    with pytest.raises(ValueError, match="\\(0, 1\\]"):
        frac_column(1e-9)


def test_output_independent_of_chunk_size_and_name(tmp_path):
    ds, _ = _null_dataset(tmp_path / "a", n_docs=17, seed=5)
    outs = []
    for k, chunk in enumerate((1, 5, 1000)):
        p = _copy_dataset(ds.path_prefix, str(tmp_path / f"c{k}"))
        annotate(p, HashLabeler(), NullTokenizer(50), write_mask_threshold=0.5, chunk_docs=chunk, progress=False,
                 name="hash")
        outs.append(_read_all(p, name="hash"))
    assert outs[0] == outs[1] == outs[2]


def test_blocklist_end_to_end_on_sentencepiece(tmp_path, sp_tok):
    texts = _random_texts(40, seed=11)
    docs = [sp_tok.tokenize(t) + [sp_tok.eod] for t in texts]
    ds = write_dataset(str(tmp_path / "sp"), docs, dtype=np.uint16)
    lab = BlocklistLabeler(REF_TERMS, sp_tok.token_bytes_table())
    annotate(ds.path_prefix, lab, sp_tok, chunk_docs=7, progress=False)
    ts = TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds)
    ref = np.concatenate(lab.score_documents([np.array(d) for d in docs]))
    np.testing.assert_array_equal(ts.q, (ref * 255).astype(np.uint8))
    assert 0 < ts.q.mean() < 255
    dsc = DocumentScores(sidecar_path(ds.path_prefix, KIND_DOC_SCORES), ds)
    for d in range(len(docs)):
        a, b = ds.document_token_range(d)
        f = ref[a:b]
        np.testing.assert_array_equal(dsc.values[d], np.array([f.mean(), f.max(), (f >= 0.5).mean()], np.float32))


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from megatron_tf.labeling.annotate import annotate
from megatron_tf.labeling.blocklist import BlocklistLabeler
from megatron_tf.tokenizer.tokenizer import SentencePieceTokenizer
from tests.labeling.labelers import BlockingLabeler
from tests.labeling.test_blocklist import REF_TERMS
if __name__ == "__main__":
    tok = SentencePieceTokenizer({model!r})
    lab = BlockingLabeler(BlocklistLabeler(REF_TERMS, tok.token_bytes_table()), 4, {marker!r})
    annotate({prefix!r}, lab, tok, write_mask_threshold=0.5, chunk_docs=2, workers=1, progress=False)
"""


@pytest.mark.slow
def test_kill_and_resume_is_byte_identical_and_workers_agree(tmp_path, sp_tok):
    texts = _random_texts(60, seed=13)
    docs = [sp_tok.tokenize(t) + [sp_tok.eod] for t in texts]
    ds = write_dataset(str(tmp_path / "killed"), docs, dtype=np.uint16)
    work = work_dir_for(ds.path_prefix, "forget")
    script = tmp_path / "slow_annotate.py"
    marker = str(tmp_path / "blocked")
    script.write_text(_KILL_SCRIPT.format(repo=REPO, model=sp_tok.path, prefix=ds.path_prefix, marker=marker))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    try:  # killed in the 5th chunk's labeling: an observable state, whatever the CPU speed
        wait_for_file(marker, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done_before = sorted(f for f in os.listdir(work) if f.endswith(".tok.npy"))
    assert len(done_before) == 4
    assert not os.path.exists(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES))
    with open(os.path.join(work, "chunk-00000029.tok.npy.tmp-stale"), "wb") as f:  # a half-written chunk
        f.write(b"partial")

    lab = BlocklistLabeler(REF_TERMS, sp_tok.token_bytes_table())
    s = annotate(ds.path_prefix, lab, sp_tok, write_mask_threshold=0.5, chunk_docs=2, progress=False)
    assert s.resumed_chunks >= len(done_before)
    assert not os.path.exists(work)
    resumed = _read_all(ds.path_prefix)

    ref1 = _copy_dataset(ds.path_prefix, str(tmp_path / "w1"))
    annotate(ref1, lab, sp_tok, write_mask_threshold=0.5, chunk_docs=2, workers=1, progress=False)
    ref2 = _copy_dataset(ds.path_prefix, str(tmp_path / "w2"))
    annotate(ref2, lab, sp_tok, write_mask_threshold=0.5, chunk_docs=2, workers=2, progress=False)
    assert resumed == _read_all(ref1) == _read_all(ref2)
    assert TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds).q.sum() > 0


def test_resume_checks_settings_and_redoes_damaged_chunks(tmp_path):
    ds, _ = _null_dataset(tmp_path / "r", n_docs=12)
    tok = NullTokenizer(50)
    ref = _copy_dataset(ds.path_prefix, str(tmp_path / "ref"))
    annotate(ref, HashLabeler(1), tok, chunk_docs=3, progress=False)

    work = work_dir_for(ds.path_prefix, "forget")
    from megatron_tf.labeling import annotate_runner as runner

    real_finalize = runner._finalize
    runner._finalize = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())  # die after labeling
    try:
        with pytest.raises(KeyboardInterrupt):
            annotate(ds.path_prefix, HashLabeler(1), tok, chunk_docs=3, progress=False)
    finally:
        runner._finalize = real_finalize
    assert len([f for f in os.listdir(work) if f.endswith(".tok.npy")]) == 4

    with pytest.raises(ValueError) as e:
        annotate(ds.path_prefix, HashLabeler(2), tok, chunk_docs=3, progress=False)
    msg = str(e.value)
    assert "manifest.json" in msg and "labeler" in msg and "'salt': 1" in msg and "'salt': 2" in msg
    assert "--restart" in msg
    with pytest.raises(ValueError, match="chunk_docs: work dir has 3, this run has 4"):
        annotate(ds.path_prefix, HashLabeler(1), tok, chunk_docs=4, progress=False)

    np.save(os.path.join(work, "chunk-00000001.tok.npy"), np.zeros(2, np.uint8))  # wrong size: labeled again
    s = annotate(ds.path_prefix, HashLabeler(1), tok, chunk_docs=3, progress=False)
    assert s.resumed_chunks == 3
    assert _read_all(ds.path_prefix, KINDS[:2]) == _read_all(ref, KINDS[:2])

    # --restart discards a work dir made with other settings
    runner._finalize = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            annotate(ds.path_prefix, HashLabeler(9), tok, chunk_docs=3, progress=False)
    finally:
        runner._finalize = real_finalize
    s = annotate(ds.path_prefix, HashLabeler(1), tok, chunk_docs=3, restart=True, progress=False)
    assert s.resumed_chunks == 0 and _read_all(ds.path_prefix, KINDS[:2]) == _read_all(ref, KINDS[:2])


def test_tokenizer_validation(tmp_path):
    ds, _ = _null_dataset(tmp_path / "v", n_docs=5)
    tok = NullTokenizer(50)
    meta_path = ds.path_prefix + ".meta.json"
    with open(meta_path, "w") as f:
        json.dump({"tokenizer": {"fingerprint": "ab" * 32, "vocab_size": 50, "type": "SentencePieceTokenizer"},
                   "max_token_id": 40}, f)
    with pytest.raises(ValueError) as e:
        annotate(ds.path_prefix, HashLabeler(), tok, progress=False)
    msg = str(e.value)
    assert meta_path in msg and "ab" * 32 in msg and tok.fingerprint in msg
    with open(meta_path, "w") as f:
        json.dump({"tokenizer": {"fingerprint": tok.fingerprint, "vocab_size": 50}, "max_token_id": 60}, f)
    with pytest.raises(ValueError, match="token id 60, outside the vocabulary .* \\(vocab_size 50\\)"):
        annotate(ds.path_prefix, HashLabeler(), tok, progress=False)
    with open(meta_path, "w") as f:  # a stale meta.json (other dataset) is ignored: the .bin is scanned instead
        json.dump({"dataset": {"fingerprint": "cd" * 32}, "tokenizer": {"fingerprint": "ab" * 32},
                   "max_token_id": 60}, f)
    s = annotate(ds.path_prefix, HashLabeler(), tok, progress=False)
    assert TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds).metadata["max_token_id"] == max(
        int(ds.tokens(0, ds.num_tokens).max()), 0) and s.num_documents == 5
    with open(meta_path, "w") as f:  # the preprocessing layout, matching: accepted
        json.dump({"dataset": {"fingerprint": ds.fingerprint()}, "tokenizer": tok.describe(), "max_token_id": 46}, f)
    annotate(ds.path_prefix, HashLabeler(), tok, progress=False)
    assert TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds).metadata["max_token_id"] == 46
    os.remove(meta_path)
    big = write_dataset(str(tmp_path / "big"), [[1, 2], [3, 70]], dtype=np.uint16)
    with pytest.raises(ValueError) as e:
        annotate(big.path_prefix, HashLabeler(), tok, progress=False)
    assert big.bin_path in str(e.value) and "token id 70" in str(e.value)
    assert not os.path.exists(work_dir_for(big.path_prefix, "forget"))


@pytest.mark.parametrize("mode,pattern", [("shape", "document 0 of the batch has"),
                                          ("count", "returned 2 score arrays for 3 documents"),
                                          ("range", "in \\[0, 1\\]")])
def test_bad_labeler_output_is_reported_with_the_documents(tmp_path, mode, pattern):
    ds = write_dataset(str(tmp_path / "b"), [[1, 2], [3], [4, 5, 6]], dtype=np.uint16)
    with pytest.raises(ValueError, match=pattern) as e:
        annotate(ds.path_prefix, BadLabeler(mode), NullTokenizer(10), chunk_docs=3, progress=False)
    assert "documents [0, 3)" in str(e.value) and ds.path_prefix in str(e.value)
    assert not os.path.exists(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES))


def test_empty_dataset(tmp_path):
    ds = write_dataset(str(tmp_path / "e"), [], dtype=np.uint16)
    s = annotate(ds.path_prefix, HashLabeler(), NullTokenizer(10), write_mask_threshold=0.5, progress=False)
    assert s.num_tokens == 0 and s.num_documents == 0
    reopened = IndexedDataset(ds.path_prefix)
    assert TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), reopened).q.size == 0
    assert DocumentScores(sidecar_path(ds.path_prefix, KIND_DOC_SCORES), reopened).values.shape == (0, 3)
