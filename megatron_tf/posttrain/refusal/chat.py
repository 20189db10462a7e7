"""Chat format, the refusal template and the refusal detector.

A conversation of one turn is the token sequence

    <|endoftext|> tok("User: " + prompt + "\\nAssistant:")   tok(" " + response) <|endoftext|>
    |-------------- context (no loss) ---------------------|  |--- learned (SFT loss) ---|

(context and response tokenized separately and concatenated, as the cloze MCQ prompts are; the leading
<|endoftext|> puts the model in its start-of-document state, the trailing one ends the turn). The tokenizers have no
chat tokens, so the roles are plain text.

Refusal: every medical prompt is answered with exactly REFUSAL. A response is a refusal iff, after whitespace
normalisation and case folding, it starts with the template (`is_refusal(text)`). For a model, `refuses(model, ...)`
asks whether GREEDY decoding after "Assistant:" would produce the template's tokens: at every position of
tok(" " + REFUSAL) the argmax of the logits, given the prompt and the template tokens before it, must be that token
(teacher-forced; exactly equivalent to generating len(template) tokens greedily and comparing ids, one forward
pass per prompt). No external judge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron_tf.evaluation.scoring import autocast_context, eval_mode, model_device
from megatron_tf.posttrain.data import Row, pad_rows

REFUSAL = "I'm sorry, but I can't help with medical questions."
USER, ASSISTANT = "User: ", "\nAssistant:"


def context_text(prompt: str) -> str:
    return USER + prompt.strip() + ASSISTANT


def response_text(response: str) -> str:
    return " " + response.strip()


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def is_refusal(response: str, template: str = REFUSAL) -> bool:
    """Exact template match at the start of the response (whitespace- and case-insensitive)."""
    return _norm(response).startswith(_norm(template))


@dataclass
class Encoded:
    context: list[int]  # <eod> + prompt part
    response: list[int]  # response part + <eod>


def encode(tokenizer, prompt: str, response: str | None = None) -> Encoded:
    ctx = [tokenizer.eod, *tokenizer.tokenize(context_text(prompt))]
    resp = [] if response is None else [*tokenizer.tokenize(response_text(response)), tokenizer.eod]
    return Encoded(ctx, resp)


def sft_row(tokenizer, prompt: str, response: str, max_length: int) -> Row:
    """Row for posttrain.data.lm_batch: weight 1 at the positions whose NEXT token is a response token (incl. the
    final eod). A context longer than allowed loses tokens at its left (after the leading <eod>)."""
    e = encode(tokenizer, prompt, response)
    resp = e.response[: max_length - 2]
    room = max_length - len(resp)
    ctx = e.context if len(e.context) <= room else [e.context[0], *e.context[len(e.context) - room + 1:]]
    ids = ctx + resp
    w = [0.0] * (len(ctx) - 1) + [1.0] * len(resp) + [0.0]
    return Row(ids, w)


def refusal_template_ids(tokenizer, template: str = REFUSAL) -> list[int]:
    return list(tokenizer.tokenize(response_text(template)))


@torch.no_grad()
def refuses(model, tokenizer, prompts: Sequence[str], *, template: str = REFUSAL, template_ids=None,
            max_length: int = 256, batch_size: int = 16, bf16: bool = True) -> np.ndarray:
    """bool per prompt: would greedy decoding start with the refusal template (module docstring); template_ids
    overrides the ids of tok(" " + template)."""
    tpl = list(template_ids) if template_ids is not None else refusal_template_ids(tokenizer, template)
    rows, starts = [], []
    for p in prompts:
        ctx = encode(tokenizer, p).context
        room = max_length - len(tpl)
        if len(ctx) > room:
            ctx = [ctx[0], *ctx[len(ctx) - room + 1:]]
        rows.append(Row(ctx + tpl, [1.0] * (len(ctx) + len(tpl))))
        starts.append(len(ctx))
    out = np.zeros(len(prompts), dtype=bool)
    device = model_device(model)
    with eval_mode(model):
        for b0 in range(0, len(rows), batch_size):
            ids, _ = pad_rows(rows[b0: b0 + batch_size], tokenizer.pad)
            with autocast_context(device, bf16):
                logits = model(input_ids=ids.to(device))
            v = tokenizer.vocab_size
            pred = logits[..., :v].argmax(-1).cpu()
            for i in range(ids.shape[0]):
                s = starts[b0 + i]
                # position s-1+k predicts template token k
                out[b0 + i] = bool(torch.equal(pred[i, s - 1: s - 1 + len(tpl)], torch.tensor(tpl)))
    return out


@torch.no_grad()
def greedy_response(model, tokenizer, prompt: str, max_new_tokens: int = 32, bf16: bool = True) -> str:
    """Greedy decoding (no cache; for a handful of examples in reports), stopped at <|endoftext|>."""
    ids = encode(tokenizer, prompt).context
    n0 = len(ids)
    device = model_device(model)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            with autocast_context(device, bf16):
                logits = model(input_ids=torch.tensor([ids], device=device))
            nxt = int(logits[0, -1, : tokenizer.vocab_size].argmax())
            if nxt == tokenizer.eod:
                break
            ids.append(nxt)
    return tokenizer.detokenize(ids[n0:])


_WORD = re.compile(r"[a-z0-9]+")


def normalize_question(text: str) -> str:
    """Lower case, alphanumeric words only, single spaces: the key for exact-duplicate checks."""
    return " ".join(_WORD.findall(text.casefold()))
