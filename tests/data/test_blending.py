"""Blending (weights, greedy index, megatron-core equality) and splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_tf.data import blend_greedy, native
from megatron_tf.data.blending import (
    _two_exhaustive,
    build_blending_indices,
    build_exhaustive_blending_indices,
    component_sizes,
    parse_blend,
)
from megatron_tf.data.builder import build_gpt_datasets, split_matrix, split_range
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from tests.log_utils import captured_log

from .gpt_synth import make_prefix, random_docs, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")


def test_parse_blend():
    assert parse_blend(["a"]) == (["a"], None)
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend(["0.3", "a", "0.7", "b"]) == (["a", "b"], [0.3, 0.7])
    assert parse_blend(["3", "a", "x", "b"]) == (["3", "a", "x", "b"], None)
    assert parse_blend(None) is None


def test_component_sizes_overshoot():
    # megatron-core: ceil(ceil(size * w) * 1.005)
    assert component_sizes([0.3, 0.7], 1000, 0.005) == [302, 704]
    assert component_sizes([0.3, 0.7], 1000) == [300, 700]


@pytest.mark.parametrize("weights,size", [([0.3, 0.7], 5000), ([0.5, 0.5], 1001), ([0.1, 0.2, 0.3, 0.4], 4000),
                                          ([1 / 3, 1 / 3, 1 / 3], 999), ([0.999, 0.001], 3000)])
def test_blending_greedy_properties(weights, size):
    w = np.array(weights) / np.sum(weights)
    didx, sidx = build_blending_indices(w.tolist(), size)
    assert didx.dtype == np.int16 and sidx.dtype == np.int64 and len(didx) == size
    counts = np.zeros(len(w), dtype=np.int64)
    for s in range(size):  # prefix counts stay within 1 of w * s; sample ids count up per dataset
        assert sidx[s] == counts[didx[s]]
        counts[didx[s]] += 1
        assert np.all(np.abs(counts - w * (s + 1)) <= 1.0 + 1e-9)
    assert np.all(np.abs(counts - w * size) <= 1.0)


def test_exhaustive_blend_takes_everything():
    sizes = [7, 0, 30, 13]
    didx, sidx = build_exhaustive_blending_indices(sizes)
    assert len(didx) == sum(sizes)
    for i, n in enumerate(sizes):
        np.testing.assert_array_equal(sidx[didx == i], np.arange(n))


def reference_greedy(weights, size):
    """The greedy rule written out sample by sample (the library's former Python loop), independent of the library's
    code paths: the argmax of w_i * max(s, 1) - c_i in float64, first index on ties."""
    w = [float(x) for x in weights]
    counts = [0] * len(w)
    picks, taken = [], []
    for s in range(size):
        sd = s if s > 1 else 1.0
        errs = [w[i] * sd - counts[i] for i in range(len(w))]
        best = errs.index(max(errs))  # first maximum
        picks.append(best)
        taken.append(counts[best])
        counts[best] += 1
    return np.array(picks, np.int16), np.array(taken, np.int64)


def reference_exhaustive(sizes):
    """Every sample once: the greedy with weights size_i / total over the datasets not yet used up (never one of
    length 0)."""
    total = sum(sizes)
    w = [n / float(total) for n in sizes]
    counts = [0] * len(sizes)
    picks, taken = [], []
    for s in range(total):
        sd = s if s > 1 else 1.0
        live = [i for i in range(len(sizes)) if counts[i] < sizes[i]]
        errs = [w[i] * sd - counts[i] for i in live]
        best = live[errs.index(max(errs))]
        picks.append(best)
        taken.append(counts[best])
        counts[best] += 1
    return np.array(picks, np.int16), np.array(taken, np.int64)


def random_weights(rng, n):
    """Random, small-integer (many exact and near ties in float64) or decimal weights, normalised."""
    kind = int(rng.integers(0, 3))
    if kind == 0:
        w = rng.random(n) + 1e-3
    elif kind == 1:
        w = rng.integers(1, 4, n).astype(np.float64)
    else:
        w = rng.choice([0.1, 0.2, 0.25, 0.3, 0.5, 0.7], n)
    return (w / w.sum()).tolist()


@pytest.fixture(params=["native", "python"])
def greedy_path(request, monkeypatch):
    """Run a test with the compiled helper and again with the no-compiler path (NumPy for two datasets, the library's
    Python loop for more)."""
    if request.param == "python":
        monkeypatch.setattr(native, "_lib", None)
        monkeypatch.setattr(native, "_tried", True)
    elif native.load_library() is None:
        pytest.skip(f"no C compiler: {native.library_error()}")
    return request.param


def test_greedy_equals_reference_on_random_weights(greedy_path):
    rng = np.random.default_rng(11)
    cases = [([0.5, 0.5], 1001), ([0.3, 0.7], 2000), ([0.7, 0.3], 2000), ([1 / 3, 1 / 3, 1 / 3], 999),
             ([0.25, 0.25, 0.5], 800), ([0.2] * 5, 1000), ([1e-9, 1 - 1e-9], 300)]
    for t in range(36 if greedy_path == "native" else 14):
        n = [2, 2, 3, 4, 7, 40][t % 6]
        cases.append((random_weights(rng, n), int(rng.integers(1, 2500 if n < 40 else 400))))
    for w, size in cases:
        d, s = build_blending_indices(w, size)
        d_ref, s_ref = reference_greedy(w, size)
        assert d.dtype == np.int16 and s.dtype == np.int64
        np.testing.assert_array_equal(d, d_ref, err_msg=f"weights {w}, size {size}")
        np.testing.assert_array_equal(s, s_ref, err_msg=f"weights {w}, size {size}")


def test_exhaustive_equals_reference(greedy_path):
    rng = np.random.default_rng(12)
    cases = [[7, 0, 30, 13], [5, 5], [1, 1000], [3, 0], [0, 4, 4], [10, 20, 30, 40]]
    for t in range(24 if greedy_path == "native" else 10):
        n = [2, 2, 3, 6, 25][t % 5]
        sizes = rng.integers(0 if t % 3 == 0 else 1, 300, n)
        sizes[int(rng.integers(0, n))] += 1  # not all zero
        cases.append(sizes.tolist())
    for sizes in cases:
        d, s = build_exhaustive_blending_indices(sizes)
        d_ref, s_ref = reference_exhaustive(sizes)
        np.testing.assert_array_equal(d, d_ref, err_msg=f"sizes {sizes}")
        np.testing.assert_array_equal(s, s_ref, err_msg=f"sizes {sizes}")


def test_two_dataset_numpy_path_equals_reference():
    """The NumPy formulation itself (blend_greedy.two_dataset_positions), on many two-dataset weightings including
    exact ties (w = 1/2, 1/4, ...) and decimal weights whose float64 errors tie only nearly."""
    rng = np.random.default_rng(13)
    weights = [[0.5, 0.5], [0.25, 0.75], [0.75, 0.25], [0.3, 0.7], [0.7, 0.3], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55],
               [1 / 3, 2 / 3], [0.999, 0.001]] + [random_weights(rng, 2) for _ in range(30)]
    for w in weights:
        size = int(rng.integers(1, 6000))
        got = blend_greedy.two_dataset_indices(w[0], w[1], size)
        assert got is not None, w
        d_ref, s_ref = reference_greedy(w, size)
        np.testing.assert_array_equal(got[0], d_ref, err_msg=f"weights {w}, size {size}")
        np.testing.assert_array_equal(got[1], s_ref, err_msg=f"weights {w}, size {size}")
    for sizes in ([5, 5], [1, 1000], [299, 3], [17, 40], [64, 64]):
        got = _two_exhaustive(sizes, [0, 1], sum(sizes))
        assert got is not None
        d_ref, s_ref = reference_exhaustive(sizes)
        np.testing.assert_array_equal(got[0], d_ref, err_msg=f"sizes {sizes}")
        np.testing.assert_array_equal(got[1], s_ref, err_msg=f"sizes {sizes}")
    # a weight within a few float spacings of 1 breaks the monotonicity the proof needs: the path declines
    assert blend_greedy.two_dataset_positions(1e-18, 1.0, 1000) is None


@pytest.mark.megatron
def test_blending_indices_equal_megatron_core():
    pytest.importorskip("megatron.core")
    from megatron.core.datasets import helpers

    rng = np.random.default_rng(0)
    for n in (2, 2, 3, 5, 60):
        for _ in range(3):
            w = rng.random(n) + 0.01
            w = (w / w.sum()).tolist()
            size = int(rng.integers(100, 200000 if n < 60 else 20000))
            d_ref = np.zeros(size, np.int16)
            s_ref = np.zeros(size, np.int64)
            helpers.build_blending_indices(d_ref, s_ref, np.array(w), n, size, False)
            d, s = build_blending_indices(w, size)
            np.testing.assert_array_equal(d, d_ref)
            np.testing.assert_array_equal(s, s_ref)
            if n == 2:  # the NumPy formulation too
                d, s = blend_greedy.two_dataset_indices(w[0], w[1], size)
                np.testing.assert_array_equal(d, d_ref)
                np.testing.assert_array_equal(s, s_ref)
    for w in ([0.5, 0.5], [0.25, 0.25, 0.5]):  # exact ties
        d_ref = np.zeros(1000, np.int16)
        s_ref = np.zeros(1000, np.int64)
        helpers.build_blending_indices(d_ref, s_ref, np.array(w), len(w), 1000, False)
        np.testing.assert_array_equal(build_blending_indices(w, 1000)[0], d_ref)
    for sizes in ([17, 5, 40], [3000, 7001], [1, 50000], *(rng.integers(1, 20000, n) for n in (2, 3, 9))):
        sizes = np.asarray(sizes, dtype=np.int64)
        d_ref = np.zeros(sizes.sum(), np.int16)
        s_ref = np.zeros(sizes.sum(), np.int64)
        helpers.build_exhaustive_blending_indices(d_ref, s_ref, sizes, len(sizes))
        d, s = build_exhaustive_blending_indices(sizes.tolist())
        np.testing.assert_array_equal(d, d_ref)
        np.testing.assert_array_equal(s, s_ref)
        if len(sizes) == 2:
            d, s = _two_exhaustive(sizes.tolist(), [0, 1], int(sizes.sum()))
            np.testing.assert_array_equal(d, d_ref)
            np.testing.assert_array_equal(s, s_ref)


@pytest.fixture(scope="module")
def two_prefixes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blend")
    rng = np.random.default_rng(5)
    a, _ = make_prefix(tmp, "a", random_docs(rng, 50, 60))
    b, _ = make_prefix(tmp, "b", random_docs(rng, 90, 30))
    return tmp, a, b


def test_blend_respects_weights(two_prefixes):
    tmp, a, b = two_prefixes
    cfg = GPTDatasetConfig(data_path=["3", a, "7", b], split="90,8,2", seq_length=16, seed=1,
                           data_cache_path=str(tmp / "cache"))
    res = build_gpt_datasets(cfg, FilterConfig(), tokenizer(), [1000, 40, 10])
    train = res.train
    assert len(train) == math.ceil(1000 * 0.3) + math.ceil(1000 * 0.7)
    counts = np.bincount([int(train[i]["dataset_id"]) for i in range(len(train))], minlength=2)
    assert counts.tolist() == [300, 700]
    # each blended sample is the component's sample
    for i in range(0, len(train), 37):
        d, j = int(train.dataset_index[i]), int(train.dataset_sample_index[i])
        np.testing.assert_array_equal(train[i]["tokens"], train.datasets[d][j]["tokens"])
    assert len(train.datasets[0]) >= 302 and len(train.datasets[1]) >= 704  # 0.5% overshoot requested


@pytest.mark.megatron
@pytest.mark.parametrize("weighted,sizes", [(True, [700, 50, 9]), (False, [300, 20, 5]), (False, [None] * 3)])
def test_blend_equal_to_megatron_core(two_prefixes, weighted, sizes):
    pytest.importorskip("megatron.core")
    from collections import OrderedDict

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig as MCfg

    class Tok:
        vocab_size, eod, pad = 103, 100, 102
        unique_identifiers = OrderedDict(cls="test", vocab_size=103)

    tmp, a, b = two_prefixes
    # path_to_cache=None: megatron-core's BlendedDataset cache path needs torch.distributed initialised
    mcfg = MCfg(random_seed=1234, sequence_length=16, blend=([a, b], [0.3, 0.7] if weighted else None),
                split="90,8,2", path_to_cache=None, tokenizer=Tok(), reset_position_ids=False,
                reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    mc = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, mcfg).build()
    data_path = ["0.3", a, "0.7", b] if weighted else [a, b]
    ours = build_gpt_datasets(GPTDatasetConfig(data_path=data_path, split="90,8,2", seq_length=16, seed=1234,
                                               data_cache_path=str(tmp / "cache")), FilterConfig(), tokenizer(), sizes)
    for m, o in zip(mc, ours):
        np.testing.assert_array_equal(m.dataset_index, o.dataset_index)
        np.testing.assert_array_equal(m.dataset_sample_index, o.dataset_sample_index)
        for i in range(len(m)):
            np.testing.assert_array_equal(m[i]["tokens"].numpy(), o[i]["tokens"])


def test_split_matrix_and_ranges():
    m = split_matrix("969,30,1")
    assert m[0] == (0.0, pytest.approx(0.969)) and m[1][0] == pytest.approx(0.969)
    assert m[2][1] == pytest.approx(1.0)
    assert split_matrix("1,0,0") == [(0.0, 1.0), None, None]
    assert split_matrix("98,2") == [(0.0, 0.98), (0.98, 1.0), None]
    # document ranges: [round(a * N), round(b * N)), contiguous, covering everything
    n = 1003
    r = [split_range(x, n) for x in split_matrix("969,30,1")]
    assert r[0][0] == 0 and r[0][1] == r[1][0] and r[1][1] == r[2][0] and r[2][1] == n
    assert r[0] == (0, round(0.969 * n))
    with pytest.raises(ValueError):
        split_matrix("1,2,3,4")


def test_splits_use_disjoint_document_ranges(two_prefixes):
    tmp, a, _ = two_prefixes
    res = build_gpt_datasets(GPTDatasetConfig(data_path=[a], split="80,15,5", seq_length=8, seed=3,
                                              data_cache_path=str(tmp / "cache")), FilterConfig(), tokenizer(),
                             [None, None, None])
    got = [set(np.asarray(d.document_index).tolist()) for d in res]
    assert got == [set(range(0, 40)), set(range(40, 48)), set(range(48, 50))]


def test_separate_split_paths(two_prefixes):
    tmp, a, b = two_prefixes
    cfg = GPTDatasetConfig(train_data_path=["1", a, "1", b], valid_data_path=[b], seq_length=8, seed=3,
                           data_cache_path=str(tmp / "cache"))
    res = build_gpt_datasets(cfg, FilterConfig(), tokenizer(), [200, None, 10])
    assert res.test is None
    assert [d.source.prefix for d in res.train.datasets] == [a, b]
    assert res.valid.source.prefix == b and len(set(np.asarray(res.valid.document_index).tolist())) == 90
    with pytest.raises(ValueError, match="mutually exclusive"):
        GPTDatasetConfig(data_path=[a], train_data_path=[b])


def test_document_filter_that_empties_a_component(tmp_path):
    """A blend component whose every document the document filter drops leaves the blend with a warning (the other
    weights take its share, its stats still count it); a single dataset emptied that way is a clear error."""

    from megatron_tf.data.builder import AllDocumentsFiltered

    rng = np.random.default_rng(9)
    docs_a, docs_b = random_docs(rng, 40, 40), random_docs(rng, 60, 30)
    qa = np.full(sum(len(d) for d in docs_a), 255, np.uint8)  # every token of a is forget: document score 1
    qb = np.zeros(sum(len(d) for d in docs_b), np.uint8)
    a, _ = make_prefix(tmp_path, "a", docs_a, qa, doc_scores=True)
    b, _ = make_prefix(tmp_path, "b", docs_b, qb, doc_scores=True)
    fcfg = FilterConfig(token_filter="document", document_threshold=0.5)
    cfg = GPTDatasetConfig(data_path=["3", a, "7", b], split="1,0,0", seq_length=16, seed=1,
                           data_cache_path=str(tmp_path / "cache"))
    with captured_log("megatron_tf.data.builder") as records:
        res = build_gpt_datasets(cfg, fcfg, tokenizer(), [200, None, None])
    train = res.train
    assert len(train.datasets) == 1 and train.datasets[0].source.prefix == b
    assert len(train) == 200 and {int(train[i]["dataset_id"]) for i in range(0, 200, 7)} == {0}
    err = "\n".join(records)
    assert f"{a}: --token-filter document" in err and "drops all 40 documents" in err and "weight 3" in err
    st = res.stats["train"]
    assert st["documents"] == 100 and st["documents_filtered"] == 40
    # the same filter on `a` alone, and on a blend where everything goes
    with pytest.raises(AllDocumentsFiltered, match=r"a: --token-filter document .*drops all 40 documents"):
        build_gpt_datasets(GPTDatasetConfig(data_path=[a], split="1,0,0", seq_length=16, seed=1,
                                            data_cache_path=str(tmp_path / "cache")), fcfg, tokenizer(),
                           [10, None, None])
    with pytest.raises(ValueError, match="drops every document of every dataset"):
        build_gpt_datasets(GPTDatasetConfig(data_path=[a, a], split="1,0,0", seq_length=16, seed=1,
                                            data_cache_path=str(tmp_path / "cache")), fcfg, tokenizer(),
                           [10, None, None])
