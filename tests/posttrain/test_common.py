"""posttrain/common.py against independent references: the LM loss equals a float64 log-softmax cross-entropy, one
AdamW step equals the hand-written first Adam step (decoupled decay on matrices only), lm_step clips the gradient
to the given norm, and the small parsers / writers on hand cases."""

import copy
import csv
import io

import pytest
import torch

from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import build_gpt_stage
from megatron_tf.posttrain import common
from megatron_tf.posttrain.common import csv_text, job_device, lm_loss, lm_step, make_optimizer, parse_models


def tiny_model(seed=0):
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64,
                      make_vocab_size_divisible_by=64, max_position_embeddings=32)
    return build_gpt_stage(cfg, seed=seed).float().eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (3, 9), generator=g)
    mask = torch.ones(3, 8)
    mask[1, 5:] = 0.0  # padding at the end of row 1
    mask[2] = 0.0  # a row with nothing learned
    return {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": mask}


def reference_loss(model, b) -> float:
    """sum_t m_t (-log softmax(logits_t)[label_t]) / sum_t m_t, in float64 from the model's logits."""
    with torch.no_grad():
        logits = model(input_ids=b["tokens"]).double()
    nll = -torch.log_softmax(logits, -1).gather(-1, b["labels"].unsqueeze(-1)).squeeze(-1)
    m = b["loss_mask"].double()
    return float((nll * m).sum() / m.sum())


def test_lm_loss_equals_float64_cross_entropy():
    model, b = tiny_model(), batch()
    got = lm_loss(model, b, torch.device("cpu"))
    assert got.item() == pytest.approx(reference_loss(model, b), rel=1e-5)
    empty = {**b, "loss_mask": torch.zeros(3, 8)}
    assert lm_loss(model, empty, torch.device("cpu")).item() == 0.0  # no learned token: 0, not NaN


def test_make_optimizer_first_step_by_hand():
    """AdamW's first step with bias correction: p <- p (1 - lr wd) - lr g / (|g| + eps) (m_hat = g, v_hat = g^2);
    the 1-D tensor gets no decay."""
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([0.25, -1.0], dtype=torch.float64))
    gw = torch.tensor([[0.1, -0.3], [2.0, 0.0]], dtype=torch.float64)
    gb = torch.tensor([-0.5, 0.02], dtype=torch.float64)
    lr, wd, eps = 0.01, 0.1, 1e-8
    opt = make_optimizer([("w", w), ("b", b)], lr, wd)
    assert [(g["weight_decay"], g["betas"]) for g in opt.param_groups] == [(wd, (0.9, 0.95)), (0.0, (0.9, 0.95))]
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), w0 * (1 - lr * wd) - lr * gw / (gw.abs() + eps), rtol=0, atol=1e-12)
    torch.testing.assert_close(b.detach(), b0 - lr * gb / (gb.abs() + eps), rtol=0, atol=1e-12)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_lm_step_returns_the_loss_and_clips_the_gradient(clip):
    """With SGD at lr 1 the update is minus the (clipped) gradient, which the test computes itself on a copy."""
    model, b = tiny_model(), batch(1)
    ref = copy.deepcopy(model)
    loss_ref = lm_loss(ref, b, torch.device("cpu"))
    loss_ref.backward()
    grads = {n: p.grad.double() for n, p in ref.named_parameters()}
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads.values())))
    assert clip == 0.0 or norm > clip  # the clip is active
    scale = min(1.0, clip / norm) if clip else 1.0
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    params = list(model.parameters())
    got = lm_step(model, torch.optim.SGD(params, lr=1.0), params, b, torch.device("cpu"), True, clip)
    assert got == pytest.approx(reference_loss(ref, b), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), before[n] - scale * grads[n], rtol=1e-4, atol=1e-6)


def test_parse_models():
    assert parse_models(["none=a/b", "rmu=c=d"]) == {"none": "a/b", "rmu": "c=d"}
    assert list(parse_models(["z=1", "a=2"])) == ["z", "a"]  # the given order
    for bad in (["justapath"], ["=path"], ["name="]):
        with pytest.raises(ValueError, match="--models: expected NAME=CHECKPOINT_DIR"):
            parse_models(bad)
    with pytest.raises(ValueError, match="--x: the name 'a' is given twice"):
        parse_models(["a=1", "a=2"], flag="--x")


def test_csv_text():
    rows = [{"metric": "loss/forget", "before": 3.25, "after": None}, {"metric": "acc", "before": 0.5, "after": 1}]
    text = csv_text(rows)
    assert text.splitlines()[0] == "metric,before,after"
    assert list(csv.DictReader(io.StringIO(text))) == [{"metric": "loss/forget", "before": "3.25", "after": ""},
                                                       {"metric": "acc", "before": "0.5", "after": "1"}]
    assert csv_text([]) == ""
    assert csv_text([], empty_header=["empty"]) == "empty\r\n"


def test_job_device(monkeypatch):
    calls = []
    monkeypatch.setattr(common.torch, "set_flush_denormal", calls.append)
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert job_device("auto") == torch.device("cpu") and calls == [True]
    assert job_device("cpu") == torch.device("cpu") and calls == [True, True]
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    assert job_device("auto") == torch.device("cuda") and calls == [True, True]  # no flush off the CPU
