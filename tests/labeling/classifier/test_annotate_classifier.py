"""`tools/annotate.py --labeler classifier` through the annotation runner: exact sidecar contents, sharded equals
single-process byte for byte, kill + resume equals an uninterrupted run, cost accounting in the summary."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from megatron_tf.data.sidecar import (
    KIND_DOC_SCORES,
    KIND_TOKEN_MASK,
    KIND_TOKEN_SCORES,
    TokenScores,
    quantize_scores,
    sidecar_path,
)
from megatron_tf.labeling.annotate import AnnotateConfig, annotate, main, run, work_dir_for
from megatron_tf.labeling.classifier.config import ClassifierOptions
from megatron_tf.labeling.classifier.labeler import ClassifierLabeler
from tests.labeling.classifier.helpers import tiny_artifact, tiny_dataset, tokenizer
from tests.proc_utils import wait_for_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KINDS = (KIND_TOKEN_SCORES, KIND_DOC_SCORES, KIND_TOKEN_MASK)


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("cls") / "cls", layer=1, window=16, context=5)


def _copy(src: str, dst: str) -> str:
    for ext in (".bin", ".idx"):
        shutil.copyfile(src + ext, dst + ext)
    return dst


def _read(prefix: str, name: str = "forget") -> dict:
    return {k: open(sidecar_path(prefix, k, name), "rb").read() for k in KINDS}


def _cfg(prefix: str, workers: int) -> AnnotateConfig:
    return AnnotateConfig(data_prefix=prefix, labeler="classifier", tokenizer_type="NullTokenizer", vocab_size=64,
                          workers=workers, chunk_docs=4, write_mask_threshold=0.5, progress=False)


@pytest.mark.slow
def test_sharded_equals_single_process_and_the_scores(tmp_path, artifact):
    ds, docs = tiny_dataset(tmp_path / "d", n=22, seed=3)
    opts = ClassifierOptions(classifier=artifact, classifier_device="cpu", classifier_batch_tokens=64,
                             classifier_group_tokens=60)
    one = _copy(ds.path_prefix, str(tmp_path / "one"))
    two = _copy(ds.path_prefix, str(tmp_path / "two"))
    s1 = run(_cfg(one, 1), opts)  # 1 process with all CPU threads
    s2 = run(_cfg(two, 2), opts)  # 2 spawned workers, threads split between them
    assert _read(one) == _read(two)
    want = quantize_scores(np.concatenate(ClassifierLabeler(artifact, device="cpu", batch_tokens=64,
                                                            group_tokens=60).score_documents(docs)))
    q = TokenScores(sidecar_path(one, KIND_TOKEN_SCORES), ds).q
    np.testing.assert_array_equal(q, want)
    assert len(np.unique(q)) > 50  # many quantisation levels exercised
    assert "annotation compute" in s1.format() and s1.notes == s2.notes


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from megatron_tf.labeling.classifier.labeler import ClassifierLabeler
from megatron_tf.labeling.annotate import annotate
from megatron_tf.tokenizer.tokenizer import NullTokenizer
from tests.labeling.labelers import BlockingLabeler
if __name__ == "__main__":
    lab = BlockingLabeler(ClassifierLabeler({artifact!r}, device="cpu", batch_tokens=64), 3, {marker!r})
    annotate({prefix!r}, lab, NullTokenizer(64), write_mask_threshold=0.5, chunk_docs=2, workers=1, progress=False)
"""


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, artifact):
    ds, _ = tiny_dataset(tmp_path / "k", n=30, seed=4)
    work = work_dir_for(ds.path_prefix, "forget")
    script = tmp_path / "slow.py"
    marker = str(tmp_path / "blocked")
    script.write_text(_KILL_SCRIPT.format(repo=REPO, artifact=artifact, prefix=ds.path_prefix, marker=marker))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    try:  # killed in the 4th chunk's labeling: an observable state, whatever the CPU speed
        wait_for_file(marker, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done_before = [f for f in os.listdir(work) if f.endswith(".tok.npy")]
    assert len(done_before) == 3
    assert not os.path.exists(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES))
    lab = ClassifierLabeler(artifact, device="cpu", batch_tokens=64)
    s = annotate(ds.path_prefix, lab, tokenizer(), write_mask_threshold=0.5, chunk_docs=2, progress=False)
    assert s.resumed_chunks >= len(done_before)
    ref = _copy(ds.path_prefix, str(tmp_path / "ref"))
    annotate(ref, lab, tokenizer(), write_mask_threshold=0.5, chunk_docs=2, progress=False)
    assert _read(ds.path_prefix) == _read(ref)


def test_cli_reports_cost_and_checks_the_tokenizer(tmp_path, artifact, capsys):
    ds, _ = tiny_dataset(tmp_path / "c", n=6, seed=5)
    base = ["--data-prefix", ds.path_prefix, "--labeler", "classifier", "--classifier", artifact,
            "--tokenizer-type", "NullTokenizer", "--classifier-device", "cpu", "--no-progress",
            "--classifier-batch-tokens", "64"]
    assert main(base + ["--vocab-size", "64", "--pretrain-params", "1e6", "--pretrain-tokens", "1e4"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs/token" in out and "of the pretraining compute of an N = 1e+06 model" in out
    acc = ClassifierLabeler(artifact, device="cpu").cost(np.diff(ds.document_token_offsets()))
    assert f"{acc['flops'] / (6 * 1e6 * 1e4):.4%}" in out
    os.remove(sidecar_path(ds.path_prefix, KIND_TOKEN_SCORES))
    assert main(base + ["--vocab-size", "80"]) == 2
    assert "tokenizer fingerprint" in capsys.readouterr().err
    assert main(base[:4] + ["--tokenizer-type", "NullTokenizer", "--vocab-size", "64"]) == 2
    assert "--classifier DIR" in capsys.readouterr().err
