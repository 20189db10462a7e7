"""--reverse-documents (data/reverse.py + GPTDataset): the reversed stream equals a forward stream over documents
stored reversed, sample for sample, forget flags included."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.data.builder import build_gpt_datasets
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from megatron_tf.data.reverse import reversal_permutation, reverse_document, reversed_ranges
from tests.data.gpt_synth import EOD, forget_pattern, make_prefix, random_docs, tokenizer


def test_reverse_document_keeps_a_trailing_eod_last():
    assert reverse_document(np.array([5, 6, 7, EOD]), EOD).tolist() == [7, 6, 5, EOD]
    assert reverse_document(np.array([5, 6, 7]), EOD).tolist() == [7, 6, 5]
    assert reverse_document(np.array([5, EOD, 7, EOD]), EOD).tolist() == [7, EOD, 5, EOD]  # inner eod: content
    assert reverse_document(np.array([EOD]), EOD).tolist() == [EOD]
    assert reverse_document(np.zeros(0, np.int64), EOD).tolist() == []
    rng = np.random.default_rng(0)
    for d in random_docs(rng, 30) + random_docs(rng, 10, eod=False):
        perm = reversal_permutation(d, EOD)
        np.testing.assert_array_equal(perm[perm], np.arange(len(d)))  # an involution
        np.testing.assert_array_equal(reverse_document(reverse_document(d, EOD), EOD), d)


def test_reversed_ranges_against_the_permutation():
    rng = np.random.default_rng(1)
    for d in random_docs(rng, 20, max_len=12) + random_docs(rng, 5, max_len=12, eod=False):
        n = len(d)
        content = n - 1 if n and d[-1] == EOD else n
        rev = reverse_document(d, EOD)
        stored = np.concatenate([np.zeros(7, np.int64), d])  # the document at global offset 7
        for lo in range(n + 1):
            for hi in range(lo, n + 1):
                parts = [stored[a:b][::-1] if back else stored[a:b]
                         for a, b, back in reversed_ranges(7, n, content, lo, hi)]
                got = np.concatenate(parts) if parts else np.zeros(0, np.int64)
                np.testing.assert_array_equal(got, rev[lo:hi])


def _datasets(tmp_path, docs, q, mask_threshold, reverse, name, seq_length=16):
    prefix, _ = make_prefix(tmp_path, name, docs, q, mask_threshold=mask_threshold)
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=seq_length, seed=7,
                           data_cache_path=str(tmp_path / "cache"), reverse_documents=reverse)
    fcfg = FilterConfig(token_filter="mask", forget_threshold=0.5)
    return build_gpt_datasets(cfg, fcfg, tokenizer(), [300, None, None]).train


@pytest.mark.parametrize("mask_threshold", [None, 0.5])  # flags from token scores, and from the bit mask
def test_reversed_dataset_equals_reversed_documents(tmp_path, mask_threshold):
    rng = np.random.default_rng(3)
    docs = random_docs(rng, 25) + random_docs(rng, 8, eod=False)
    docs[4] = np.array([EOD])  # an empty document (only its eod)
    offs = np.cumsum([0] + [len(d) for d in docs])
    q = forget_pattern(rng, int(offs[-1]))
    perms = [reversal_permutation(d, EOD) for d in docs]
    rdocs = [d[p] for d, p in zip(docs, perms)]
    rq = np.concatenate([q[offs[k] : offs[k + 1]][p] for k, p in enumerate(perms)])
    got = _datasets(tmp_path, docs, q, mask_threshold, True, "fwd")
    want = _datasets(tmp_path, rdocs, rq, mask_threshold, False, "stored_reversed")
    assert len(got) == len(want) >= 300
    differs = 0
    plain = _datasets(tmp_path, docs, q, mask_threshold, False, "plain")
    for i in range(len(got)):
        a, b = got[i], want[i]
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"sample {i} key {k}")
        differs += not np.array_equal(a["tokens"], plain[i]["tokens"])
    assert differs > 0.8 * len(got)  # the option does change the samples
    # same sample structure: the reversed dataset reuses the forward indices
    np.testing.assert_array_equal(got.sample_index, plain.sample_index)


def test_reverse_documents_flag_and_multi_sequence_documents(tmp_path):
    from megatron_tf.data.indexed_dataset import IndexedDatasetBuilder
    from megatron_tf.training.arguments import parse_args

    cfgs = parse_args(["--train-iters", "1", "--reverse-documents"])
    assert cfgs.data.reverse_documents is True
    b = IndexedDatasetBuilder(str(tmp_path / "ms.bin"), dtype=np.uint16)
    b.add_document(np.arange(10), lengths=[4, 6])
    b.add_document(np.arange(12), lengths=[12])
    b.finalize(str(tmp_path / "ms.idx"))
    cfg = GPTDatasetConfig(data_path=[str(tmp_path / "ms")], split="1,0,0", seq_length=4, reverse_documents=True,
                           data_cache_path=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="one sequence per document"):
        build_gpt_datasets(cfg, FilterConfig(), tokenizer(), [None, None, None])
