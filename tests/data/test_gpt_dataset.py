"""GPT dataset indices: brute-force references, megatron-core equality, the index cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from megatron_tf.data import gpt_dataset as G
from megatron_tf.data.builder import build_gpt_datasets
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from megatron_tf.data.index_cache import cache_paths, wait_for_cache_writes

from .gpt_synth import make_prefix, random_docs, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")


def brute_sample_index(sizes, doc_index, seq_length, num_samples):
    """Walk the token stream one token at a time: entry j = (doc-index position, offset) of stream token j * seq."""
    where = [(k, o) for k, d in enumerate(doc_index) for o in range(int(sizes[d]))]
    out = [(0, 0)] + [where[j * seq_length] for j in range(1, num_samples + 1)]
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("path", ["native", "numpy", "numpy-chunk3"])  # 3: entries falling on chunk edges
def test_sample_index_matches_brute_force(seed, path, monkeypatch):
    if path == "native" and G.load_library() is None:
        pytest.skip("no C compiler for data/native.py")
    if path != "native":
        monkeypatch.setattr(G, "load_library", lambda: None)
    if path == "numpy-chunk3":
        monkeypatch.setattr(G, "_CHUNK_DOCS", 3)
    rng = np.random.default_rng(seed)
    n_docs = int(rng.integers(1, 30))
    sizes = rng.integers(1, 60, n_docs).astype(np.int32)
    sizes[rng.random(n_docs) < 0.15] = 0  # empty documents are skipped
    sizes[0] = max(sizes[0], 1)
    sizes[rng.integers(0, n_docs)] = 200  # a document much longer than seq_length
    seq = int(rng.integers(2, 40))
    epochs = int(rng.integers(1, 6))
    docs = np.arange(n_docs, dtype=np.int32)
    doc_index = G.build_document_index(docs, epochs, np.random.RandomState(seed), False)
    tpe = int(sizes.sum())
    got = G.build_sample_index(sizes, doc_index, seq, epochs, tpe)
    n = (epochs * tpe - 1) // seq
    assert got.shape == (n + 1, 2) and got.dtype == np.int32
    np.testing.assert_array_equal(got, brute_sample_index(sizes, doc_index, seq, n))


def test_epochs_and_separate_final_epoch_rule():
    # tokens_per_epoch 100, seq 10: 9 samples per epoch ((100 - 1) // 10)
    assert G.num_epochs_for(100, 10, None) == 1
    assert G.num_epochs_for(100, 10, 9) == 1       # 91 tokens needed
    assert G.num_epochs_for(100, 10, 10) == 2      # 101 tokens needed
    assert G.num_epochs_for(100, 10, 55) == 6
    # 3 epochs for 21 samples: the first 2 epochs give (200 - 1) // 10 = 19, the last 2 < int(0.8 * 9) = 7
    assert G.separate_final_epoch(100, 10, 21, 3)
    assert not G.separate_final_epoch(100, 10, 26, 3)  # 7 from the last epoch: not < 7
    assert not G.separate_final_epoch(100, 10, 5, 1)


def test_separate_final_epoch_keeps_earlier_epochs_first():
    sizes = np.full(10, 10, dtype=np.int32)  # 100 tokens per epoch, seq 10
    out = G.build_indices(sizes, np.arange(10, dtype=np.int32), 10, 21, seed=3)
    doc_index, shuffle = out["document_index"], out["shuffle_index"]
    assert len(doc_index) == 30
    # the last epoch is shuffled on its own: each of its 10 documents exactly once
    np.testing.assert_array_equal(np.sort(doc_index[20:]), np.arange(10))
    np.testing.assert_array_equal(np.sort(doc_index[:20]), np.repeat(np.arange(10), 2))
    first = ((2 * 100) - 1) // 10  # 19 samples before the final epoch, permuted among themselves
    np.testing.assert_array_equal(np.sort(shuffle[:first]), np.arange(first))
    np.testing.assert_array_equal(np.sort(shuffle[first:]), np.arange(first, len(shuffle)))


def _cfg(prefix, tmp_path, **kw):
    base = dict(data_path=[prefix], split="1,0,0", seq_length=8, seed=1234, data_cache_path=str(tmp_path / "cache"))
    base.update(kw)
    return GPTDatasetConfig(**base)


def test_samples_are_stream_windows(tmp_path):
    """Sample i = stream tokens [j*S, (j+1)*S] with j = shuffle[i], stream = documents in document-index order."""
    rng = np.random.default_rng(1)
    docs = random_docs(rng, 25)
    prefix, _ = make_prefix(tmp_path, "d", docs)
    train = build_gpt_datasets(_cfg(prefix, tmp_path), FilterConfig(), tokenizer(), [150, None, None]).train
    stream = np.concatenate([docs[d] for d in train.document_index])
    S = 8
    assert len(train) >= 150
    for i in range(len(train)):
        j = int(train.shuffle_index[i])
        s = train[i]
        np.testing.assert_array_equal(s["tokens"], stream[j * S : j * S + S])
        np.testing.assert_array_equal(s["labels"], stream[j * S + 1 : j * S + S + 1])
    # E epochs shuffled together: each document exactly E times (megatron-core shuffles the tiled array whole)
    n_docs = len(docs)
    di = np.asarray(train.document_index)
    np.testing.assert_array_equal(np.bincount(di, minlength=n_docs), np.full(n_docs, len(di) // n_docs))


def _megatron_gpt(prefix, split, sizes, seq, seed, tmp_path):
    pytest.importorskip("megatron.core")
    from collections import OrderedDict

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig as MCfg

    class Tok:  # what megatron-core's GPTDataset reads from a tokenizer
        vocab_size, eod, pad = 103, 100, 102
        unique_identifiers = OrderedDict(cls="test", vocab_size=103)

    cfg = MCfg(random_seed=seed, sequence_length=seq, blend=([prefix], None), split=split, path_to_cache=None,
               tokenizer=Tok(), reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
               create_attention_mask=False)
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, cfg).build()


@pytest.mark.megatron
@pytest.mark.parametrize("sizes,seq,seed", [
    ([40, 5, 2], 16, 1234),          # several epochs, final epoch merged
    ([1000, 30, None], 7, 5),        # many epochs
    ([None, None, None], 16, 9),     # one epoch each
])
def test_equal_to_megatron_core(tmp_path, sizes, seq, seed):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 100, int(rng.integers(1, 80))) for _ in range(60)]
    docs[7] = rng.integers(0, 100, 300)  # longer than seq_length
    prefix, _ = make_prefix(tmp_path, "d", docs)
    mc = _megatron_gpt(prefix, "80,15,5", sizes, seq, seed, tmp_path)
    ours = build_gpt_datasets(_cfg(prefix, tmp_path, split="80,15,5", seq_length=seq, seed=seed), FilterConfig(),
                              tokenizer(), sizes)
    for m, o in zip(mc, ours):
        np.testing.assert_array_equal(m.document_index, o.document_index)
        np.testing.assert_array_equal(m.sample_index, o.sample_index)
        assert m.sample_index.dtype == o.sample_index.dtype
        np.testing.assert_array_equal(m.shuffle_index, o.shuffle_index)
        assert m.shuffle_index.dtype == o.shuffle_index.dtype
        for i in range(0, len(m), max(1, len(m) // 50)):
            np.testing.assert_array_equal(m[i]["tokens"].numpy(), o[i]["tokens"])
            np.testing.assert_array_equal(m[i]["labels"].numpy(), o[i]["labels"])


@pytest.mark.megatron
def test_separate_final_epoch_equal_to_megatron_core(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 100, 10) for _ in range(10)]  # 100 tokens per epoch
    prefix, _ = make_prefix(tmp_path, "d", docs)
    mc = _megatron_gpt(prefix, "1,0,0", [21, None, None], 10, 3, tmp_path)[0]
    ours = build_gpt_datasets(_cfg(prefix, tmp_path, seq_length=10, seed=3), FilterConfig(), tokenizer(),
                              [21, None, None]).train
    np.testing.assert_array_equal(mc.document_index, ours.document_index)
    np.testing.assert_array_equal(mc.sample_index, ours.sample_index)
    np.testing.assert_array_equal(mc.shuffle_index, ours.shuffle_index)


def test_cache_reused_and_key_covers_every_input(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    docs = random_docs(rng, 30)
    prefix, _ = make_prefix(tmp_path, "d", docs)
    calls = []
    real = G.build_indices
    monkeypatch.setattr(G, "build_indices", lambda *a, **k: calls.append(1) or real(*a, **k))
    tok = tokenizer()

    def build(**kw):
        sizes = kw.pop("sizes", [50, None, None])
        ds = build_gpt_datasets(_cfg(prefix, tmp_path, **kw), FilterConfig(), tok, sizes).train
        return ds, len(calls)

    ds0, n = build()
    assert n == 1
    ds1, n = build()
    assert n == 1, "identical inputs must load the cached indices"
    assert isinstance(ds1.sample_index, np.memmap)
    np.testing.assert_array_equal(ds0.shuffle_index, ds1.shuffle_index)
    keys = {G.INDEX_VERSION}
    for kw in (dict(seed=1), dict(seq_length=9), dict(sizes=[51, None, None]), dict(split="9,1,0")):
        ds, m = build(**kw)
        assert m > n, kw  # (split "9,1,0" also builds a valid split)
        n = m
        key = cache_paths("", "gpt", ds.description, ())[1]
        assert key not in keys
        keys.add(key)
    # the dataset's content: rewrite one token of the same length -> new fingerprint -> new key
    docs[3] = docs[3].copy()
    docs[3][0] = (docs[3][0] + 1) % 100
    make_prefix(tmp_path, "d", docs)
    _, m = build()
    assert m == n + 1


INDEX_NAMES = ("document_index", "sample_index", "shuffle_index")


def _cached_train(tmp_path, seed: int):
    """(cfg, build) for a 20-document dataset with an index cache; build() returns its train split (30 samples) once
    the cache files are written (they are written in the background, index_cache.py)."""
    prefix, _ = make_prefix(tmp_path, "d", random_docs(np.random.default_rng(seed), 20))
    cfg = _cfg(prefix, tmp_path)

    def build():
        ds = build_gpt_datasets(cfg, FilterConfig(), tokenizer(), [30, None, None]).train
        wait_for_cache_writes()
        return ds
    return cfg, build


def test_cache_ignores_incomplete_entries(tmp_path):
    """A writer killed before the description was renamed into place leaves no valid-looking cache entry."""
    cfg, build = _cached_train(tmp_path, 4)
    ds = build()
    paths, desc = cache_paths(cfg.data_cache_path, "gpt", ds.description, INDEX_NAMES)
    os.remove(desc)
    with open(paths["sample_index"], "wb") as f:  # garbage where a partial write might have been
        f.write(b"junk")
    ds2 = build()
    np.testing.assert_array_equal(ds.sample_index, ds2.sample_index)
    assert os.path.isfile(desc)
    loaded = np.load(paths["sample_index"], allow_pickle=False)
    np.testing.assert_array_equal(loaded, ds.sample_index)
    assert not [f for f in os.listdir(cfg.data_cache_path) if ".tmp-" in f]


def test_too_little_data_is_a_clear_error(tmp_path):
    prefix, _ = make_prefix(tmp_path, "d", [np.array([1, 2, 3])])
    with pytest.raises(ValueError, match="not enough tokens"):
        build_gpt_datasets(_cfg(prefix, tmp_path, seq_length=8), FilterConfig(), tokenizer(), [None, None, None])


def test_cache_rebuilds_unreadable_arrays(tmp_path):
    """Description in place but an array truncated (a crash on a filesystem that lost the data): rebuilt, same
    indices, no error."""
    cfg, build = _cached_train(tmp_path, 5)
    ds = build()
    paths, _ = cache_paths(cfg.data_cache_path, "gpt", ds.description, INDEX_NAMES)
    with open(paths["shuffle_index"], "r+b") as f:
        f.truncate(20)  # inside the .npy header
    ds2 = build()
    np.testing.assert_array_equal(ds.shuffle_index, ds2.shuffle_index)
    np.testing.assert_array_equal(np.load(paths["shuffle_index"], allow_pickle=False), ds.shuffle_index)


def test_background_cache_write_is_complete_and_reused_in_process(tmp_path, monkeypatch):
    """The indices come back before their cache files are durable; a second build of the same entry in the same
    process waits for that write instead of building again, and the files hold the returned arrays."""
    import threading

    from megatron_tf.data import index_cache

    rng = np.random.default_rng(7)
    prefix, _ = make_prefix(tmp_path, "d", random_docs(rng, 20))
    cfg = _cfg(prefix, tmp_path)
    gate = threading.Event()
    real = index_cache._write_all_synced
    monkeypatch.setattr(index_cache, "_write_all_synced", lambda w: (gate.wait(30), real(w)))
    calls = []
    real_build = G.build_indices
    monkeypatch.setattr(G, "build_indices", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    ds = build_gpt_datasets(cfg, FilterConfig(), tokenizer(), [30, None, None]).train
    paths, desc = cache_paths(cfg.data_cache_path, "gpt", ds.description, INDEX_NAMES)
    assert not os.path.exists(desc)  # returned while the write waits at the gate
    threading.Timer(0.2, gate.set).start()
    ds2 = build_gpt_datasets(cfg, FilterConfig(), tokenizer(), [30, None, None]).train
    assert len(calls) == 1 and isinstance(ds2.sample_index, np.memmap)  # waited, then loaded the files
    wait_for_cache_writes()
    for name in INDEX_NAMES:
        np.testing.assert_array_equal(np.load(paths[name], allow_pickle=False), getattr(ds, name))
