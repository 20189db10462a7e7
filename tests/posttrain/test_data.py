"""posttrain/data.py on hand-worked cases: the packing example of its docstring, every window once per epoch in a
(seed, epoch) order, padded rows and LM batches, RMU document rows, and the disjointness check."""

import numpy as np
import pytest
import torch

from megatron_tf.posttrain.data import (
    PackedBatches,
    Row,
    RowBatches,
    check_disjoint,
    document_rows,
    lm_batch,
    pack_windows,
    pad_rows,
)

E = 9  # the eod id of these cases


def test_pack_windows_docstring_example():
    docs = [np.array([5, 6, E]), np.array([7, E])]
    assert pack_windows(docs, 2).tolist() == [[5, 6, E], [E, 7, E]]
    assert pack_windows(docs, 3).tolist() == [[5, 6, E, 7]]  # the tail shorter than s + 1 is dropped
    with pytest.raises(ValueError, match="fewer than one window of 6"):
        pack_windows(docs, 5)


def test_packed_batches_visit_every_window_once_per_epoch():
    docs = [np.arange(10 * k, 10 * k + 7) for k in range(6)]  # 42 tokens -> 10 windows of s + 1 = 5
    n, s = 10, 4
    it = PackedBatches(docs, s, batch_size=5, seed=3)
    stream = np.concatenate(docs)
    assert it.tokens_per_batch == 20
    for epoch in range(2):
        seen = []
        for _ in range(2):
            b = next(it)
            assert b["tokens"].shape == (5, s) and torch.equal(b["tokens"][:, 1:], b["labels"][:, :-1])
            assert torch.equal(b["loss_mask"], torch.ones(5, s))
            seen += [int(t[0]) for t in b["tokens"]]
        starts = sorted(int(np.nonzero(stream == t)[0][0]) for t in seen)
        assert starts == [i * s for i in range(n)], epoch  # each window exactly once
        if epoch == 0:
            first = seen
    next(it)
    assert it.epoch == 2
    again = PackedBatches(docs, s, batch_size=5, seed=3)
    assert [int(t[0]) for _ in range(2) for t in next(again)["tokens"]] == first  # the same seed, the same order
    other = PackedBatches(docs, s, batch_size=5, seed=4)
    assert [int(t[0]) for _ in range(2) for t in next(other)["tokens"]] != first


def test_row_batches_unshuffled_cycle_across_epochs():
    it = RowBatches(["a", "b", "c"], batch_size=2, seed=0, shuffle=False)
    assert [next(it) for _ in range(3)] == [["a", "b"], ["c", "a"], ["b", "c"]]
    with pytest.raises(ValueError, match="no rows"):
        RowBatches([], 1, 0)


def test_pad_rows_and_lm_batch_by_hand():
    rows = [Row([1, 2, 3], [0.0, 1.0, 0.0]), Row([4, 5], [1.0, 0.0])]
    ids, w = pad_rows(rows, pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 0]] and w.tolist() == [[0, 1, 0], [1, 0, 0]]
    b = lm_batch(rows, pad_id=0)
    assert b["tokens"].tolist() == [[1, 2], [4, 5]] and b["labels"].tolist() == [[2, 3], [5, 0]]
    assert b["loss_mask"].tolist() == [[0, 1], [1, 0]]  # row 0 learns 3 after 2, row 1 learns 5 after 4
    with pytest.raises(ValueError, match="3 ids but 2 weights"):
        Row([1, 2, 3], [1.0, 1.0])


def test_document_rows_and_disjoint():
    docs = [np.array([1, 2, 3, 4, 5]), np.array([6])]
    rows = document_rows(docs, max_length=3, start_id=E)
    assert [r.ids for r in rows] == [[E, 1, 2], [E, 3, 4], [E, 5], [E, 6]]
    assert all(r.weights == [0.0] + [1.0] * (len(r.ids) - 1) for r in rows)
    assert [r.ids for r in document_rows(docs, 3, E, all_windows=False, min_tokens=2)] == [[E, 1, 2]]
    check_disjoint(docs, [np.array([1, 2])], "a", "b")
    with pytest.raises(ValueError, match="1 of the 2 documents of the eval text are also in the train text"):
        check_disjoint([np.array([7, 8, E])], [np.array([7, 8]), np.array([1])], "train text", "eval text", eod=E)
