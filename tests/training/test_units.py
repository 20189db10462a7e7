"""Trainer pieces in isolation: the CLI (Megatron names, shared --seq-length/--seed), the LR schedule (worked
example of lr_schedule.py), weight-decay groups, the global gradient norm and clipping (= torch's on one process),
the 1F1B order and memory bound, MFU."""

import math

import pytest
import torch

from megatron_tf.model import ModelConfig, build_gpt_stage
from megatron_tf.training import build_parser, parse_args
from megatron_tf.training.lr_schedule import LRScheduleConfig, build_lr_schedule
from megatron_tf.training.metrics import PEAK_BF16_FLOPS, mfu, peak_flops
from megatron_tf.training.optimizer import clip_grads_, global_grad_norm, norm_params, param_groups
from megatron_tf.training.schedule import forward_backward_1f1b

MEGATRON_FLAGS = [
    "--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--micro-batch-size",
    "--global-batch-size", "--train-iters", "--lr", "--min-lr", "--lr-warmup-iters", "--lr-decay-iters",
    "--lr-decay-style", "--weight-decay", "--adam-beta1", "--adam-beta2", "--adam-eps", "--clip-grad", "--data-path",
    "--split", "--tokenizer-type", "--tokenizer-model", "--save", "--load", "--save-interval", "--eval-interval",
    "--eval-iters", "--log-interval", "--tensor-model-parallel-size", "--pipeline-model-parallel-size",
    "--sequence-parallel", "--seed", "--bf16", "--token-filter", "--forget-threshold", "--train-tokens",
    "--cross-entropy-impl", "--deepspeed", "--deepspeed_config", "--exit-interval", "--tensorboard-dir",
    "--wandb-project", "--lr-warmup-fraction", "--ckpt-step", "--no-load-optim", "--finetune", "--eval-data-path",
]


def test_cli_has_megatron_flags_and_shares_seq_length_and_seed():
    parser = build_parser()  # argparse raises on any flag defined twice
    flags = {s for a in parser._actions for s in a.option_strings}
    missing = [f for f in MEGATRON_FLAGS if f not in flags]
    assert not missing
    cfgs = parse_args(["--seq-length", "64", "--seed", "9", "--train-iters", "3", "--num-layers", "3",
                       "--lr-decay-style", "linear", "--data-path", "a", "--token-filter", "mask"])
    assert (cfgs.data.seq_length, cfgs.data.seed, cfgs.model.num_layers) == (64, 9, 3)
    assert cfgs.lr.lr_decay_style == "linear" and cfgs.filter.token_filter == "mask" and cfgs.data.data_path == ["a"]
    with pytest.raises(ValueError, match="--train-iters or --train-tokens"):
        parse_args(["--seq-length", "8"])


def test_lr_schedule_worked_example():
    cfg = LRScheduleConfig(lr=1e-3, min_lr=1e-4, lr_warmup_iters=10, lr_decay_iters=110, lr_decay_style="cosine")
    s = build_lr_schedule(cfg, 200, None, 1)
    assert [s(p) for p in (0, 5, 10)] == pytest.approx([0.0, 5e-4, 1e-3], abs=0, rel=1e-12)
    assert s(60) == pytest.approx(5.5e-4, rel=1e-12)
    assert s(110) == pytest.approx(1e-4, rel=1e-12) and s(200) == 1e-4
    lin = build_lr_schedule(LRScheduleConfig(lr=1.0, min_lr=0.0, lr_decay_style="linear"), 100, None, 1)
    assert lin(25) == pytest.approx(0.75)
    const = build_lr_schedule(LRScheduleConfig(lr=2.0, lr_warmup_iters=4, lr_decay_style="constant"), 9, None, 1)
    assert (const(2), const(8)) == (1.0, 2.0)
    tok = build_lr_schedule(LRScheduleConfig(lr=1.0, lr_warmup_iters=2, lr_decay_style="linear"), None, 1000, 100)
    assert (tok.unit, tok.warmup, tok.decay) == ("tokens", 200.0, 1000.0)  # warmup iters x tokens per iteration
    assert tok(600) == pytest.approx(0.5)


def _model(**kw):
    cfg = ModelConfig(num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=32, vocab_size=50,
                      make_vocab_size_divisible_by=16, **kw)
    return build_gpt_stage(cfg, seed=3)


def test_weight_decay_groups_exclude_norms_and_1d():
    m = _model()
    groups, names = param_groups(m, 0.1)
    decay = {n for n, p in m.named_parameters() if any(p is q for q in groups[0]["params"])}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(m.get_parameter(n).dim() >= 2 for n in decay)
    assert {n for n in names if "layernorm" in n}.isdisjoint(decay)
    assert len(names) == len(list(m.parameters()))


def test_global_norm_and_clipping_equal_torch_single_process():
    a, b = _model(), _model()
    ids = torch.randint(0, 50, (2, 8))
    for m in (a, b):
        (m(input_ids=ids) ** 2).mean().backward()
    norm = global_grad_norm(norm_params(a, 0, False))
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1)
    assert float(norm) == pytest.approx(float(ref), rel=1e-6)
    clip_grads_(list(a.parameters()), norm, 0.1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    # replicated (non-TP) parameters count on TP rank 0 only
    assert len(norm_params(a, 1, False)) == sum(getattr(p, "tensor_model_parallel", False) for p in a.parameters())


class _FakeP2P:
    """Stands in for the neighbours: returns fresh tensors, records the order of operations."""

    def __init__(self, log):
        self.log = log

    def _t(self):
        return torch.ones(3)

    def recv_forward(self):
        return self._t()

    def send_forward(self, t):
        pass

    def recv_backward(self):
        return self._t()

    def send_backward(self, t):
        pass

    def send_forward_recv_backward(self, t):
        return self._t()

    def send_backward_recv_forward(self, t):
        return self._t()


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_1f1b_order_and_live_activations(rank):
    pp, m = 4, 8
    log, live, peak = [], set(), [0]

    def forward_step(i, x):
        log.append(f"F{i}")
        live.add(i)
        peak[0] = max(peak[0], len(live))
        w = torch.full((3,), float(i + 1), requires_grad=True)
        out = (x * w) if x is not None else w * 2

        def on_backward(g, i=i):
            log.append(f"B{i}")
            live.discard(i)

        if rank == pp - 1:
            out = out.sum()
            out.register_hook(on_backward)
            return (out, None)
        out.register_hook(on_backward)
        return out

    forward_backward_1f1b(forward_step, m, _FakeP2P(log), rank, pp)
    warmup = pp - rank - 1
    expect = [f"F{i}" for i in range(warmup)]
    for i in range(m - warmup):
        expect += [f"F{warmup + i}", f"B{i}"]
    expect += [f"B{i}" for i in range(m - warmup, m)]
    assert log == expect
    assert peak[0] == pp - rank  # at most pp - rank microbatches' activations alive (GPipe: all 8)


def test_mfu_formula_and_peaks():
    assert peak_flops(torch.device("cpu"), True) is None
    assert mfu(1000.0, 6e9, 2, 1e12) == pytest.approx(3.0)
    assert mfu(1000.0, 6e9, 1, None) is None
    assert math.isclose(dict(PEAK_BF16_FLOPS)["H100"], 989e12)
