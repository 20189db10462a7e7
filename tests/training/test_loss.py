"""The objective: sum of masked CE over the GLOBAL learned-token count (float64 references), fully masked batches,
microbatch invariance in the trainer, `mask` (zero logit gradient on forget targets), `remove` (the model never sees
a forget token), and --train-tokens (stops at the learned-token budget; LR schedule on learned tokens)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import write_token_scores
from megatron_tf.training import pretrain
from megatron_tf.training.loss import loss_scale, microbatch_objective
from tests.training.synth import EOD, HIDDEN, make_data, tiny_args

pytestmark = pytest.mark.filterwarnings("ignore:.*meta.json not found")
V = 40


def _reference(logits, labels, masks):
    """float64 full-batch loss and logit gradients: sum(w CE) / max(1, sum w)."""
    x = torch.cat(logits).double().detach().requires_grad_(True)
    ce = F.cross_entropy(x.reshape(-1, V), torch.cat(labels).reshape(-1), reduction="none")
    w = torch.cat(masks).reshape(-1).double()
    loss = (ce * w).sum() / w.sum().clamp(min=1)
    loss.backward()
    return loss.item(), x.grad


def _microbatches(masks, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(2, 5, V, generator=g) for _ in masks]
    labels = [torch.randint(0, V, (2, 5), generator=g) for _ in masks]
    return logits, labels


@pytest.mark.parametrize("dp", [1, 2])
def test_global_count_normalisation_equals_full_batch(dp):
    g = torch.Generator().manual_seed(1)
    masks = [(torch.rand(2, 5, generator=g) < p).float() for p in (0.9, 0.3, 0.0, 0.6)]  # one fully masked
    logits, labels = _microbatches(masks)
    ref_loss, ref_grad = _reference(logits, labels, masks)
    count = torch.tensor([sum(float(m.sum()) for m in masks)], dtype=torch.float64)
    scale = loss_scale(count, dp)
    total, grads = 0.0, []
    for lg, lb, m in zip(logits, labels, masks):  # dp "ranks" each back-propagate dp * local sum / global count
        x = lg.clone().requires_grad_(True)
        handle, s = microbatch_objective(x, lb, m, scale)
        torch.autograd.backward(*handle)
        total += float(s)
        grads.append(x.grad / dp)  # DDP averages over the dp ranks
    assert total / float(count) == pytest.approx(ref_loss, rel=1e-6)
    torch.testing.assert_close(torch.cat(grads).double(), ref_grad, rtol=1e-5, atol=1e-8)
    # per-microbatch means would weight microbatches equally: a different (wrong) loss
    per_mb = np.mean([float((F.cross_entropy(lg.reshape(-1, V), lb.reshape(-1), reduction="none") * m.reshape(-1))
                            .sum() / m.sum()) for lg, lb, m in zip(logits, labels, masks) if m.sum() > 0])
    assert abs(per_mb - ref_loss) > 1e-3


def test_fully_masked_batch_gives_zero_not_nan():
    masks = [torch.zeros(2, 5) for _ in range(3)]
    logits, labels = _microbatches(masks)
    scale = loss_scale(torch.zeros(1, dtype=torch.float64), 1)
    for lg, lb, m in zip(logits, labels, masks):
        x = lg.clone().requires_grad_(True)
        handle, s = microbatch_objective(x, lb, m, scale)
        torch.autograd.backward(*handle)
        assert float(s) == 0.0 and float(handle[0].detach()) == 0.0
        assert torch.count_nonzero(x.grad) == 0


def test_trainer_fully_masked_batches(tmp_path):
    """Every target is forget: losses are exactly 0 (not NaN), nothing is learned, grad norm 0."""
    docs = [np.arange(1, 30) % 100 for _ in range(40)]
    ds = write_dataset(str(tmp_path / "all"), docs, dtype=np.uint16)
    write_token_scores(ds, np.full(ds.num_tokens, 255, dtype=np.uint8), {"labeler": "test"})
    r = pretrain(tiny_args(str(tmp_path / "all"), iters=2, extra=["--token-filter", "mask", "--forget-threshold",
                                                                    "0.5", "--eval-iters", "0"]))
    assert r.losses == [0.0, 0.0] and r.grad_norms == [0.0, 0.0] and r.tokens_learned == 0
    assert r.tokens_seen == 2 * 8 * 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("loss"))


def test_microbatch_split_does_not_change_the_step(data):
    """4 microbatches of 2 vs 1 of 8 (mask filter: microbatches hold different learned counts): same step."""
    extra = ["--token-filter", "mask", "--forget-threshold", "0.5", "--eval-iters", "0"]
    a = pretrain(tiny_args(data, iters=3, mbs=2, extra=extra))
    b = pretrain(tiny_args(data, iters=3, mbs=8, extra=extra))
    assert a.learned_per_step == b.learned_per_step and 0 < a.learned_per_step[0] < 8 * 16
    torch.testing.assert_close(a.losses, b.losses, rtol=1e-6, atol=0)
    torch.testing.assert_close(a.grad_norms, b.grad_norms, rtol=1e-5, atol=0)


def _capture(trainer, store):
    """Record each step's batches and the logits' gradients / the embedding's inputs."""
    orig = trainer.next_batches

    def next_batches():
        batches = orig()
        store["batches"].extend(batches)
        return batches

    trainer.next_batches = next_batches

    def fwd_hook(module, args, kwargs, out):
        if out.requires_grad:
            out.register_hook(lambda grad: store["logit_grads"].append(grad.detach().clone()))

    trainer.module.register_forward_hook(fwd_hook, with_kwargs=True)
    trainer.module.embedding.word_embeddings.register_forward_pre_hook(
        lambda m, args: store["embedding_inputs"].append(args[0].t().clone()))  # the embedding takes ids as [s, b]


def test_mask_zeroes_the_logit_gradient_of_forget_targets(data):
    store = {"batches": [], "logit_grads": [], "embedding_inputs": []}
    pretrain(tiny_args(data, iters=2, extra=["--token-filter", "mask", "--forget-threshold", "0.5", "--eval-iters",
                                             "0"]), setup_hook=lambda t: _capture(t, store))
    assert len(store["logit_grads"]) == len(store["batches"]) == 8
    forget_targets = 0
    for b, grad in zip(store["batches"], store["logit_grads"]):
        f = b["forget_labels"]
        assert torch.equal(b["loss_mask"], (~f).float())
        assert torch.count_nonzero(grad[f]) == 0  # exactly zero on every vocabulary entry
        assert bool((grad[~f].abs().sum(-1) > 0).all())  # and non-zero on every learned target
        forget_targets += int(f.sum())
    assert forget_targets > 20


def test_remove_never_feeds_a_forget_token(data):
    store = {"batches": [], "logit_grads": [], "embedding_inputs": []}
    holder = {}
    pretrain(tiny_args(data, iters=2, extra=["--token-filter", "remove", "--forget-threshold", "0.5",
                                             "--eval-iters", "0"]),
             setup_hook=lambda t: (_capture(t, store), holder.update(trainer=t)))
    ds = holder["trainer"].datasets.train
    inputs = torch.cat(store["embedding_inputs"])  # every id the model received, [samples, s]
    assert inputs.shape == (16, 16)
    replaced = 0
    for i in range(inputs.shape[0]):  # consumed sample i is dataset index i (one DP rank)
        raw, flags = ds.raw(i)
        raw, flags = torch.from_numpy(raw[:-1]), torch.from_numpy(flags[:-1])
        flags &= ~torch.isin(raw, torch.tensor([EOD, HIDDEN, EOD + 2]))  # special tokens are never forget (hidden)
        assert torch.equal(inputs[i], torch.where(flags, torch.full_like(raw, HIDDEN), raw))
        replaced += int(flags.sum())
    assert replaced > 20 and int((inputs == HIDDEN).sum()) == replaced


def test_train_tokens_stops_at_the_learned_budget(data):
    budget = 1500
    extra = ["--forget-threshold", "0.5", "--eval-iters", "0", "--lr-decay-style", "linear"]
    none = pretrain(tiny_args(data, iters=0, extra=["--train-tokens", str(budget), *extra]))
    mask = pretrain(tiny_args(data, iters=0, extra=["--train-tokens", str(budget), "--token-filter", "mask",
                                                    *extra]))
    for r in (none, mask):
        assert r.stopped_by == "train_tokens"
        assert r.tokens_learned == sum(r.learned_per_step)
        assert r.tokens_learned >= budget > r.tokens_learned - r.learned_per_step[-1]  # first step past the budget
        # LR schedule on learned tokens: linear from 3e-3 (warmup 1 iteration = 128 tokens) to 3e-4 at the budget
        before = np.cumsum([0] + r.learned_per_step[:-1])
        expect = [3e-3 * p / 128 if p <= 128 else 3e-4 + 2.7e-3 * (1 - (p - 128) / (budget - 128)) for p in before]
        np.testing.assert_allclose(r.lrs, expect, rtol=1e-12)
    assert none.learned_per_step[0] == 128  # nothing masked: every target learned
    assert len(mask.iterations) > len(none.iterations)  # the filtered arm needs more steps for the same budget
