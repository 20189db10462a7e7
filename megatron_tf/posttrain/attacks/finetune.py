"""One adversarial finetuning run: full finetuning or LoRA at a constant LR, forget loss every k steps.

    curve = finetune_run(model, train_batches, eval_docs, FinetuneSettings(method="lora", lr=1e-4, ...), tokenizer)
    curve["tokens"], curve["forget_loss"]       # T_0 = 0 (before the attack), then every eval_interval steps

Loss, optimizer and step: posttrain/common.py (sum of masked per-token cross-entropy over the padded vocabulary /
number of learned tokens; AdamW, betas 0.9 / 0.95, the given weight decay on matrices only, none on 1-D tensors),
gradient clipping at 1.0, constant LR (no warmup: the attacker's cheapest setting). Evaluation: the held-out forget
text scored as tools/evaluate.py does (docs/evaluation.md: each document after <|endoftext|>, sliding windows), on
the first `eval_docs` documents, so T_0 equals the model's evaluate.py forget loss on those documents. With forget
labels (evaluation Documents with flags, e.g. from a blocklist) the curve also has `forget_token_loss`: the loss on
the forget-labeled tokens only (evaluate.py's token-level forget loss).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from megatron_tf.evaluation.domain_loss import evaluate_documents
from megatron_tf.evaluation.text_sets import Document
from megatron_tf.posttrain.common import lm_step, make_optimizer

from .lora import add_lora, lora_parameters, merge_lora


@dataclass(frozen=True)
class FinetuneSettings:
    method: str  # "full" | "lora"
    lr: float
    weight_decay: float
    seed: int
    train_iters: int
    eval_interval: int
    lora_rank: int = 8
    lora_alpha: float = 16.0
    clip_grad: float = 1.0
    bf16: bool = True

    def key(self) -> str:
        return f"{self.method}_lr{self.lr:g}_wd{self.weight_decay:g}"


def _as_document(d) -> Document:
    return d if isinstance(d, Document) else Document(np.asarray(d, dtype=np.int64))


def set_losses(model, docs: Sequence, seq_length: int, tokenizer, bf16: bool = True) -> tuple[float, float | None]:
    """(nats/token over all tokens, nats/token over forget-labeled tokens or None) of documents (token arrays or
    evaluation Documents with forget flags)."""
    m = evaluate_documents(model, (_as_document(d) for d in docs), seq_length=seq_length,
                           start_id=tokenizer.eod, pad_id=tokenizer.pad, batch_size=8, bf16=bf16)
    tl = m.get("forget_tokens", {}).get("nats_per_token")
    return float(m["nats_per_token"]), (None if tl is None else float(tl))


def forget_loss(model, docs: Sequence, seq_length: int, tokenizer, bf16: bool = True) -> float:
    return set_losses(model, docs, seq_length, tokenizer, bf16)[0]


def finetune_run(model: torch.nn.Module, batches: Iterator[dict], eval_docs: Sequence[np.ndarray],
                 s: FinetuneSettings, tokenizer, seq_length: int, *, extra_eval: dict | None = None,
                 progress: bool = True, desc: str = "attack") -> dict:
    """Finetune `model` in place (LoRA adapters merged back at the end); returns the curve dict.
    `extra_eval`: {name: docs} also scored at every evaluation (e.g. retain text)."""
    if s.method not in ("full", "lora"):
        raise ValueError(f"unknown attack method {s.method!r} (full or lora)")
    device = next(model.parameters()).device
    torch.manual_seed(s.seed)
    if s.method == "lora":
        add_lora(model, s.lora_rank, s.lora_alpha, seed=s.seed)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert {id(p) for _, p in named} == {id(p) for p in lora_parameters(model)}
    else:
        named = list(model.named_parameters())
    opt = make_optimizer(named, s.lr, s.weight_decay)
    params = [p for _, p in named]
    extra_eval = extra_eval or {}
    curve = {"tokens": [], "steps": [], "forget_loss": [], "train_loss": [], **{f"{k}_loss": [] for k in extra_eval}}
    labeled = bool(eval_docs) and all(isinstance(d, Document) and d.forget is not None for d in eval_docs)
    if labeled:
        curve["forget_token_loss"] = []

    def evaluate(step: int, tokens: int, train_loss: float | None):
        curve["steps"].append(step)
        curve["tokens"].append(tokens)
        curve["train_loss"].append(train_loss)
        loss, token_loss = set_losses(model, eval_docs, seq_length, tokenizer, s.bf16)
        curve["forget_loss"].append(loss)
        if labeled:
            curve["forget_token_loss"].append(token_loss)
        for k, docs in extra_eval.items():
            curve[f"{k}_loss"].append(forget_loss(model, docs, seq_length, tokenizer, s.bf16))

    t0 = time.time()
    evaluate(0, 0, None)
    tokens, window = 0, []
    model.train()
    bar = tqdm(range(1, s.train_iters + 1), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        batch = next(batches)
        window.append(lm_step(model, opt, params, batch, device, s.bf16, s.clip_grad))
        tokens += int(batch["loss_mask"].sum())
        if step % s.eval_interval == 0 or step == s.train_iters:
            evaluate(step, tokens, float(np.mean(window)))
            window = []
            bar.set_postfix(forget=f"{curve['forget_loss'][-1]:.3f}")
    bar.close()
    model.eval()
    if s.method == "lora":
        merge_lora(model)
    curve["elapsed_s"] = round(time.time() - t0, 2)
    if not np.all(np.isfinite(curve["forget_loss"])):
        curve["diverged"] = True
    return curve
