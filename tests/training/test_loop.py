"""The loop's --train-tokens budget under --train-tokens-count {learned, seen}: the stop iteration hand-computed
from the data's forget flags (mask hides tokens, so the two counts stop at different steps), the LR schedule on the
counted tokens, and what the checkpoint records (the count in the saved config, tokens_seen / tokens_learned in the
state, the dataset stats with the filter's thresholds)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from megatron_tf.training import pretrain
from megatron_tf.training.config import TrainingConfig
from tests.training.synth import make_data, tiny_args

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
GBS, SEQ = 8, 16  # tiny_args: 128 tokens seen per step
BUDGET = 1000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("loop"))


def _learned_per_step(ds, steps: int) -> list[int]:
    """Reference: unmasked targets of each step's 8 consumed samples, from the raw forget flags (mask: target i is
    learned iff stream token i + 1 is not forget; special tokens (eod, hidden, pad) are never forget)."""
    special = list(ds.sample_filter.special_ids)
    out = []
    for k in range(steps):
        n = 0
        for i in range(k * GBS, (k + 1) * GBS):
            text, flags = ds.raw(i)
            n += int((~(flags & ~np.isin(text, special))[1:]).sum())
        out.append(n)
    return out


@pytest.mark.parametrize("count", ["learned", "seen"])
def test_train_tokens_count(data, tmp_path, count):
    held = {}
    save = str(tmp_path / "ckpt")
    extra = ["--train-tokens", str(BUDGET), "--train-tokens-count", count, "--token-filter", "mask",
             "--forget-threshold", "0.5", "--eval-iters", "0", "--lr-decay-style", "linear", "--save", save]
    r = pretrain(tiny_args(data, iters=0, extra=extra), setup_hook=lambda t: held.setdefault("trainer", t))
    ds = held["trainer"].datasets.train
    ref = _learned_per_step(ds, 30)
    assert ref[0] < GBS * SEQ  # the mask hides some targets
    first_over = int(np.argmax(np.cumsum(ref) >= BUDGET)) + 1
    if count == "seen":
        steps = math.ceil(BUDGET / (GBS * SEQ))  # 1000 / 128 -> 8 steps, 1024 tokens seen
        assert steps == 8 and r.iteration == 8 and r.tokens_seen == 1024
        assert first_over > steps  # the learned count would have needed more steps
        progress = [GBS * SEQ * k for k in range(steps)]
    else:
        steps = first_over
        assert r.iteration == steps > 8 and r.tokens_seen == steps * GBS * SEQ
        progress = list(np.cumsum([0] + ref[: steps - 1]))
    assert r.stopped_by == "train_tokens"
    assert r.learned_per_step == ref[:steps] and r.tokens_learned == sum(ref[:steps])
    # LR schedule on the counted tokens: linear from 3e-3 (warmup 1 iteration = 128 tokens) to 3e-4 at the budget
    expect = [3e-3 * p / 128 if p <= 128 else 3e-4 + 2.7e-3 * (1 - (p - 128) / (BUDGET - 128)) for p in progress]
    np.testing.assert_allclose(r.lrs, expect, rtol=1e-12)
    # the checkpoint: the count in the saved config, both token counts in the state, the dataset stats
    d = r.last_checkpoint
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "state.json")) as f:
        state = json.load(f)
    assert cfg["configs"]["training"]["train_tokens_count"] == count
    assert (state["tokens_seen"], state["tokens_learned"]) == (steps * GBS * SEQ, sum(ref[:steps]))
    st = cfg["dataset_stats"]
    assert st["filter"]["forget_threshold"] == 0.5 and st["filter"]["token_filter"] == "mask"
    assert st["filter"]["forget_thresholds_used"] == [0.5]
    assert st["train"]["components"][0]["prefix"] == data


def test_token_filter_fraction_recorded_with_the_checkpoint(data, tmp_path):
    save = str(tmp_path / "ckpt")
    r = pretrain(tiny_args(data, iters=2, extra=["--token-filter", "remove", "--token-filter-fraction", "0.2",
                                                 "--eval-iters", "0", "--save", save]))
    with open(os.path.join(r.last_checkpoint, "config.json")) as f:
        cfg = json.load(f)
    flt = cfg["dataset_stats"]["filter"]
    assert flt["token_filter_fraction"] == 0.2 and flt["threshold_picked_by"] == "--token-filter-fraction"
    assert abs(flt["achieved_fraction"] - 0.2) <= 0.02
    assert cfg["dataset_stats"]["train"]["tokens_filtered_fraction"] == pytest.approx(flt["achieved_fraction"])
    assert cfg["configs"]["filter"]["token_filter_fraction"] == 0.2  # the flags as given


def test_train_tokens_count_flag_checked():
    assert TrainingConfig(train_iters=1).train_tokens_count == "learned"
    with pytest.raises(ValueError, match=r"--train-tokens-count must be one of \('learned', 'seen'\), got 'all'"):
        TrainingConfig(train_tokens=10, train_tokens_count="all")
