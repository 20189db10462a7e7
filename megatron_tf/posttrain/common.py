"""What the post-training jobs (attacks, RMU, refusal SFT) share besides their token data (posttrain/data.py).

    device = job_device("auto")                                   # torch.device; CPU: denormals flushed
    opt = make_optimizer(list(model.named_parameters()), lr=1e-4, weight_decay=0.0)
    loss = lm_step(model, opt, params, batch, device, bf16=True, clip_grad=1.0)   # one AdamW step, float loss
    models = parse_models(["none=runs/demo/ckpt/none"])           # {"none": "runs/demo/ckpt/none"}

Language-model loss: sum over the batch of the per-token cross-entropy (over the padded vocabulary, as in training)
times the loss mask, divided by the number of learned tokens (sum of the mask, at least 1): nats per learned token.
Optimizer: AdamW, betas (0.9, 0.95), eps 1e-8, the given weight decay on tensors of 2 or more dimensions (matrices),
none on 1-D tensors (biases, norms); the LR is constant (no schedule). RMU keeps its own optimizer (the WMDP
reference's plain AdamW over the selected tensors, betas from --adam-beta1/2, decay on every tensor).
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence

import torch

from megatron_tf.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_tf.utils.device import resolve_device


def job_device(name: str) -> torch.device:
    """--device as a torch.device ("auto": CUDA when torch sees a GPU, else CPU). On CPU, denormals are flushed as
    the trainer does (--flush-denormal): denormal softmax tails are slow."""
    device = torch.device(resolve_device(name))
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def lm_loss(model: torch.nn.Module, batch: dict, device: torch.device, bf16: bool = True) -> torch.Tensor:
    """Mean cross-entropy over the learned targets of an LM batch {tokens, labels, loss_mask} (module docstring);
    bf16 autocast on CUDA when `bf16`, the model's dtype elsewhere."""
    tokens, labels = batch["tokens"].to(device), batch["labels"].to(device)
    mask = batch["loss_mask"].to(device)
    use_bf16 = device.type == "cuda" and bf16
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=tokens)
    per_tok = vocab_parallel_cross_entropy(logits, labels, mask)
    return per_tok.sum() / mask.sum().clamp(min=1.0)


def make_optimizer(params: Sequence[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
                   ) -> torch.optim.AdamW:
    """AdamW of the module docstring over (name, parameter) pairs: decay on matrices, none on 1-D tensors."""
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lm_step(model: torch.nn.Module, opt: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], batch: dict,
            device: torch.device, bf16: bool, clip_grad: float) -> float:
    """One training step on an LM batch: lm_loss, backward, gradient norm clipped to clip_grad over `params` (0:
    no clipping), optimizer step. Returns the loss (nats per learned token) before the step."""
    loss = lm_loss(model, batch, device, bf16)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()
    return loss.item()


def parse_models(specs: Sequence[str], flag: str = "--models") -> dict[str, str]:
    """{name: checkpoint directory} of NAME=CHECKPOINT_DIR specs, in order; a malformed spec or a repeated name is
    an error naming `flag`."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag}: expected NAME=CHECKPOINT_DIR, got {spec!r}")
        if name in out:
            raise ValueError(f"{flag}: the name {name!r} is given twice")
        out[name] = path
    return out


def csv_text(rows: Sequence[dict], empty_header: Sequence[str] = ()) -> str:
    """CSV of dict rows, the columns those of the first row; no rows: just the `empty_header` line (nothing when
    it is empty)."""
    fields = list(rows[0]) if rows else list(empty_header)
    if not fields:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
