"""Pretraining sampler/loader: resume from consumed_samples, data-parallel slicing, consumed index = sample index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_tf.data.builder import build_gpt_datasets
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig
from megatron_tf.data.loader import PretrainingSampler, build_pretraining_data_loader

from .gpt_synth import forget_pattern, make_prefix, random_docs, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")


def test_sampler_dp_slices_partition_each_global_batch():
    mbs, dp, total = 3, 4, 100
    per_rank = [list(PretrainingSampler(total, 0, mbs, r, dp)) for r in range(dp)]
    steps = total // (mbs * dp)
    assert all(len(b) == steps for b in per_rank)
    for step in range(steps):
        got = [i for r in range(dp) for i in per_rank[r][step]]
        assert got == list(range(step * mbs * dp, (step + 1) * mbs * dp))  # rank r gets slice r, in order


def test_sampler_resume_continues_exactly():
    mbs, dp, total = 2, 3, 61
    for r in range(dp):
        full = list(PretrainingSampler(total, 0, mbs, r, dp))
        for k in (0, 1, 4, 9):
            resumed = list(PretrainingSampler(total, k * mbs * dp, mbs, r, dp))
            assert resumed == full[k:]
    # drop_last=False: the last partial global batch is sliced like the others
    tail = list(PretrainingSampler(14, 12, 2, 0, 3, drop_last=False))
    assert tail == [[12, 13]]
    assert list(PretrainingSampler(14, 12, 2, 1, 3, drop_last=False)) == []
    with pytest.raises(ValueError, match="consumed_samples"):
        PretrainingSampler(10, 11, 1)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 40)
    prefix, _ = make_prefix(tmp, "d", docs, forget_pattern(rng, sum(len(d) for d in docs)))
    cfg = GPTDatasetConfig(data_path=[prefix], split="1,0,0", seq_length=12, seed=1, data_cache_path=str(tmp / "c"))
    fc = FilterConfig(token_filter="mask", forget_threshold=0.5, label_noise=0.2, filter_start_step=2)
    return build_gpt_datasets(cfg, fc, tokenizer(), [96, None, None], global_batch_size=8).train


def test_loader_batches_and_resume(train):
    mbs, dp = 2, 2
    full = [list(build_pretraining_data_loader(train, 0, mbs, r, dp, total_samples=96)) for r in range(dp)]
    b = full[0][0]
    assert set(b) == {"tokens", "labels", "loss_mask", "forget", "forget_labels"}
    assert b["tokens"].shape == (2, 12) and b["tokens"].dtype == torch.int64
    assert b["loss_mask"].dtype == torch.float32 and b["forget"].dtype == torch.bool
    for r in range(dp):
        for step, batch in enumerate(full[r]):
            for m in range(mbs):
                i = step * mbs * dp + r * mbs + m  # the consumed index of this sample
                ref = train[i]
                for k in batch:
                    np.testing.assert_array_equal(batch[k][m].numpy(), ref[k])
        # resume after 5 global steps (consumed_samples = 5 * global batch): identical tail, noise included
        resumed = list(build_pretraining_data_loader(train, 5 * mbs * dp, mbs, r, dp, total_samples=96))
        assert len(resumed) == len(full[r]) - 5
        for x, y in zip(resumed, full[r][5:]):
            for k in x:
                assert torch.equal(x[k], y[k])


def test_loader_with_workers_matches(train):
    ref = list(build_pretraining_data_loader(train, 8, 4, 0, 1, total_samples=40))
    got = list(build_pretraining_data_loader(train, 8, 4, 0, 1, num_workers=2, total_samples=40))
    assert len(got) == len(ref) == 8
    for x, y in zip(got, ref):
        for k in x:
            assert torch.equal(x[k], y[k])


def test_start_step_follows_consumed_index(train):
    """gbs 8, --filter-start-step 2: consumed samples 0..15 unfiltered, 16.. filtered."""
    batches = list(build_pretraining_data_loader(train, 0, 8, 0, 1, total_samples=32))
    for step, b in enumerate(batches):
        expect_mask = torch.where(b["forget_labels"], 0.0, 1.0) if step >= 2 else torch.ones_like(b["loss_mask"])
        assert torch.equal(b["loss_mask"], expect_mask)
    assert batches[3]["forget_labels"].any()
