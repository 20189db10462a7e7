"""Annotation runner safety (issue 14): a re-annotation rewrites or removes the bit mask, special tokens are never
forget, one run per prefix and name (lock file naming its holder), disk-full errors name the file."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from megatron_tf.data.indexed_dataset import write_dataset
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
from megatron_tf.tokenizer.tokenizer import NullTokenizer
from tests.labeling.labelers import HashLabeler

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _null_dataset(path, n_docs=23, seed=0, vocab=50):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab - 3, int(rng.integers(0, 40))) for _ in range(n_docs)]
    return write_dataset(str(path), docs, dtype=np.uint16), docs


class FlagAllLabeler:
    """A probe that flags every token (score 1.0), special tokens included."""

    name = "flag_all"

    def describe(self) -> dict:
        return {"labeler": "flag_all"}

    def score_documents(self, docs):
        return [np.ones(len(d), np.float32) for d in docs]

def test_reannotation_rewrites_or_removes_the_bit_mask(tmp_path):
    from megatron_tf.data.filters import open_forget_flags
    from megatron_tf.data.sidecar import read_header

    ds, docs = _null_dataset(tmp_path / "d", n_docs=30)
    tok = NullTokenizer(50)
    mask, scores = sidecar_path(ds.path_prefix, KIND_TOKEN_MASK), sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES)
    annotate(ds.path_prefix, HashLabeler(1), tok, write_mask_threshold=0.5, progress=False)
    assert read_header(mask).metadata["token_scores_xxh3_64"] == read_header(scores).checksum
    # re-annotate with other labels and no mask: the old mask goes (before: it stayed and won over the new scores)
    annotate(ds.path_prefix, HashLabeler(2), tok, progress=False)
    assert not os.path.exists(mask)
    q2 = quantize_scores(np.concatenate(HashLabeler(2).score_documents(docs)))
    flags = open_forget_flags(ds, ds.fingerprint(), "forget", 0.5, True)
    assert flags.path == scores
    np.testing.assert_array_equal(flags.gather(np.array([0]), np.array([ds.num_tokens])), q2 >= 128)
    # re-annotate with a mask: rewritten, bound to the new scores, and read
    annotate(ds.path_prefix, HashLabeler(3), tok, write_mask_threshold=0.6, progress=False)
    q3 = quantize_scores(np.concatenate(HashLabeler(3).score_documents(docs)))
    assert read_header(mask).metadata["token_scores_xxh3_64"] == read_header(scores).checksum
    flags = open_forget_flags(ds, ds.fingerprint(), "forget", None, True)
    assert flags.path == mask and flags.threshold == 0.6
    np.testing.assert_array_equal(flags.gather(np.array([0]), np.array([ds.num_tokens])), q3 >= 153)


def test_special_tokens_are_never_forget(tmp_path):
    tok = NullTokenizer(50)  # 47, 48, 49 = <|endoftext|>, <|hidden|>, <|pad|>
    docs = [np.array([1, 2, 47]), np.array([48, 5, 49, 6, 47]), np.array([7])]
    ds = write_dataset(str(tmp_path / "sp"), docs, dtype=np.uint16)
    annotate(ds.path_prefix, FlagAllLabeler(), tok, write_mask_threshold=0.5, progress=False)
    ids = np.concatenate(docs)
    want = np.where(np.isin(ids, [47, 48, 49]), 0, 255)
    np.testing.assert_array_equal(TokenScores(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES), ds).q, want)
    np.testing.assert_array_equal(TokenMask(sidecar_path(ds.path_prefix, KIND_TOKEN_MASK), ds).flags(0, 9),
                                  want == 255)
    d = DocumentScores(sidecar_path(ds.path_prefix, KIND_DOC_SCORES), ds)
    np.testing.assert_array_equal(d.column("mean_score"), np.array([2 / 3, 2 / 5, 1.0], np.float32))


_HOLD_LOCK = """
import sys, time
from megatron_tf.utils.run_lock import run_lock
with run_lock(sys.argv[1], "test holder"):
    open(sys.argv[2], "w").close()
    time.sleep(120)
"""


def test_second_run_fails_naming_the_lock_holder_and_a_dead_holder_is_replaced(tmp_path):
    import socket

    from megatron_tf.labeling.annotate import lock_path_for
    from megatron_tf.utils.run_lock import LockHeld

    ds, _ = _null_dataset(tmp_path / "d", n_docs=5)
    lock, ready = lock_path_for(ds.path_prefix, "forget"), str(tmp_path / "ready")
    child = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, lock, ready], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            assert child.poll() is None and time.monotonic() < deadline, "lock holder did not start"
            time.sleep(0.05)
        with pytest.raises(LockHeld) as e:  # before: an unexplained ENOENT from the shared work directory
            annotate(ds.path_prefix, HashLabeler(), NullTokenizer(50), progress=False)
        msg = str(e.value)
        assert lock in msg and f"pid {child.pid} on host {socket.gethostname()}" in msg
        assert not os.path.exists(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES))
    finally:
        child.kill()  # SIGKILL: the lock file stays behind with a dead pid
        child.wait(timeout=30)
    assert os.path.exists(lock)
    annotate(ds.path_prefix, HashLabeler(), NullTokenizer(50), progress=False)  # stale lock: replaced
    assert os.path.exists(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES)) and not os.path.exists(lock)


def test_disk_full_errors_name_the_file(tmp_path, monkeypatch):
    import errno

    import megatron_tf.data.sidecar as sc

    ds, _ = _null_dataset(tmp_path / "d", n_docs=12)
    real_save = np.save

    def full_save(f, arr, allow_pickle=False):  # what numpy's tofile says when the disk fills up
        raise OSError(f"{arr.nbytes} requested and {arr.nbytes // 7} written")

    monkeypatch.setattr(np, "save", full_save)
    with pytest.raises(OSError) as e:
        annotate(ds.path_prefix, HashLabeler(), NullTokenizer(50), chunk_docs=4, progress=False)
    work = work_dir_for(ds.path_prefix, "forget")
    assert f"writing annotation chunk {work}/chunk-00000000.doc.npy" in str(e.value) and "requested" in str(e.value)
    monkeypatch.setattr(np, "save", real_save)

    def full(f, payload, path, tmp):
        raise sc._named(OSError(errno.ENOSPC, "No space left on device"), path, tmp)

    monkeypatch.setattr(sc, "_write_array", full)
    with pytest.raises(OSError) as e:
        annotate(ds.path_prefix, HashLabeler(), NullTokenizer(50), chunk_docs=4, progress=False)
    assert e.value.errno == errno.ENOSPC
    assert f"writing sidecar {sidecar_path(ds.path_prefix, KIND_DOC_SCORES)}" in str(e.value)
    assert not [f for f in os.listdir(tmp_path) if ".forget.tok" in f or ".forget.doc" in f]


_FSIZE_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
from megatron_tf.labeling.annotate import annotate
from megatron_tf.tokenizer.tokenizer import NullTokenizer
from tests.labeling.labelers import HashLabeler
try:
    annotate(sys.argv[1], HashLabeler(), NullTokenizer(50), chunk_docs=1000, progress=False)
except OSError as e:
    print("OSError:", e)
    sys.exit(3)
"""


def test_a_real_write_limit_names_the_file(tmp_path):
    """No monkeypatching: the kernel refuses writes past RLIMIT_FSIZE (EFBIG), as a full disk refuses them (ENOSPC);
    numpy's own message is only "N requested and M written"."""
    rng = np.random.default_rng(0)
    ds = write_dataset(str(tmp_path / "big"), [rng.integers(0, 47, 3000) for _ in range(4)], dtype=np.uint16)
    p = subprocess.run([sys.executable, "-c", _FSIZE_LIMITED, ds.path_prefix, "8192"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 3, p.stderr[-2000:]
    work = work_dir_for(ds.path_prefix, "forget")
    assert f"writing annotation chunk {work}/chunk-00000000.tok.npy (12000 bytes) failed" in p.stdout, p.stdout
