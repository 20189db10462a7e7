"""Multiple choice by cloze scoring (the lm-evaluation-harness convention for base models).

For a question q with choices c_1..c_K, the model scores each answer STRING as a continuation of the prompt:

    context      = <|endoftext|> + "Question: " + q.strip() + "\\nAnswer:"
    continuation = " " + c_k.strip()
    ll_k = sum of log p(token | everything before it) over the continuation's tokens

The context and the continuation are tokenized separately and concatenated, so the context ids are the same for
every choice and only the continuation's tokens are scored (the leading <|endoftext|> id puts the model in its
start-of-document state, as in the loss evaluation). A sequence longer than seq_length + 1 tokens loses tokens from
the LEFT of the context (the question's start), as lm-eval does; they are counted as `truncated`.

Metrics over n questions (docs/evaluation.md):
    acc       = mean [argmax_k ll_k == gold]
    acc_norm  = mean [argmax_k ll_k / chars_k == gold], chars_k = len(c_k.strip()) in Python characters (lm-eval's
                acc_norm: the answer text, the delimiter space not counted; at least 1)
    stderr    = sqrt(p (1 - p) / n) for p = acc or acc_norm (binomial)
    chance    = mean 1 / K (0.25 with four options, 0.2 for MedQA's five)
    p_correct = mean softmax_k(ll_k)[gold], a smooth score that moves before accuracy does in small models
Ties go to the first choice (numpy argmax).

Batching: one row per (question, choice), sorted by length (longest first) so batches pad little; right padding
with the tokenizer's pad id; only real positions are scored (megatron_tf/evaluation/scoring.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .eval_sets import MCQSet, MCQuestion
from .scoring import eval_mode, token_logprobs

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
DELIMITER = " "


def cloze_context(question: str, template: str = PROMPT_TEMPLATE) -> str:
    return template.format(question=question.strip())


def cloze_continuation(choice: str) -> str:
    return DELIMITER + choice.strip()


@dataclass
class Request:
    question: int
    choice: int
    ids: list[int]  # context + continuation
    n_cont: int  # scored tokens at the end
    truncated: bool


def build_requests(questions: Sequence[MCQuestion], tokenizer, seq_length: int,
                   template: str = PROMPT_TEMPLATE) -> list[Request]:
    """One request per (question, choice); `template` formats the context ("{question}": a plain sentence prefix,
    as the knowledge probe uses)."""
    out = []
    for qi, q in enumerate(questions):
        ctx = [tokenizer.eod, *tokenizer.tokenize(cloze_context(q.question, template))]
        for ci, c in enumerate(q.choices):
            cont = list(tokenizer.tokenize(cloze_continuation(c)))
            if not cont:
                raise ValueError(f"question {q.qid}: choice {ci} {c!r} tokenizes to nothing")
            if len(cont) > seq_length:
                raise ValueError(f"question {q.qid}: choice {ci} has {len(cont)} tokens, more than seq_length "
                                 f"{seq_length}")
            ids = ctx + cont
            cut = len(ids) > seq_length + 1
            out.append(Request(qi, ci, ids[-(seq_length + 1):] if cut else ids, len(cont), cut))
    return out


def loglikelihoods(model, requests: Sequence[Request], pad_id: int, batch_size: int = 16, bf16: bool = True,
                   progress: bool = False, desc: str = "mcq") -> np.ndarray:
    """float64 [len(requests)]: summed log-probability of each request's continuation tokens."""
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].ids), i))
    out = np.zeros(len(requests), dtype=np.float64)
    with eval_mode(model):
        for a in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress,
                      dynamic_ncols=True):
            idx = order[a : a + batch_size]
            rows = [requests[i].ids for i in idx]
            lps = token_logprobs(model, [r[:-1] for r in rows], [r[1:] for r in rows], pad_id, bf16)
            for i, lp in zip(idx, lps):
                out[i] = float(lp[-requests[i].n_cont:].sum())
    return out


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


def score_questions(questions: Sequence[MCQuestion], requests: Sequence[Request], lls: np.ndarray) -> list[dict]:
    """Per question: log-likelihoods of the choices, predictions and correctness."""
    per_q: list[list[float]] = [[0.0] * len(q.choices) for q in questions]
    truncated = [False] * len(questions)
    for r, ll in zip(requests, lls):
        per_q[r.question][r.choice] = float(ll)
        truncated[r.question] |= r.truncated
    out = []
    for q, ll, cut in zip(questions, per_q, truncated):
        ll_arr = np.asarray(ll)
        chars = np.asarray([max(1, len(c.strip())) for c in q.choices], dtype=np.float64)
        pred, pred_norm = int(np.argmax(ll_arr)), int(np.argmax(ll_arr / chars))
        p = np.exp(ll_arr - ll_arr.max())
        out.append({"qid": q.qid, "subject": q.subject, "answer": q.answer, "loglikelihoods": ll,
                    "pred": pred, "pred_norm": pred_norm, "correct": pred == q.answer,
                    "correct_norm": pred_norm == q.answer, "p_correct": float(p[q.answer] / p.sum()),
                    "truncated": cut})
    return out


def mcq_metrics(questions: Sequence[MCQuestion], scored: Sequence[dict]) -> dict:
    n = len(scored)
    if n == 0:
        raise ValueError("mcq_metrics: no questions")
    acc = sum(s["correct"] for s in scored) / n
    acc_norm = sum(s["correct_norm"] for s in scored) / n
    out = {"n": n, "acc": acc, "acc_stderr": _stderr(acc, n), "acc_norm": acc_norm,
           "acc_norm_stderr": _stderr(acc_norm, n),
           "chance": float(np.mean([1.0 / len(q.choices) for q in questions])),
           "p_correct": float(np.mean([s["p_correct"] for s in scored])),
           "truncated": int(sum(s["truncated"] for s in scored))}
    subjects = sorted({q.subject for q in questions if q.subject is not None})
    if len(subjects) > 1:
        per = {}
        for subj in subjects:
            rows = [s for s in scored if s["subject"] == subj]
            per[subj] = {"n": len(rows), "acc": sum(r["correct"] for r in rows) / len(rows),
                         "acc_norm": sum(r["correct_norm"] for r in rows) / len(rows)}
        out["per_subject"] = per
    return out


def evaluate_mcq(model, tokenizer, mcq_set: MCQSet, *, seq_length: int, batch_size: int = 16, bf16: bool = True,
                 progress: bool = False, template: str = PROMPT_TEMPLATE) -> tuple[dict, list[dict]]:
    """(metrics, per-question records) of one set."""
    reqs = build_requests(mcq_set.questions, tokenizer, seq_length, template)
    lls = loglikelihoods(model, reqs, tokenizer.pad, batch_size, bf16, progress, desc=mcq_set.name)
    scored = score_questions(mcq_set.questions, reqs, lls)
    metrics = {"name": mcq_set.name, "role": mcq_set.role, "description": mcq_set.description,
               **mcq_metrics(mcq_set.questions, scored)}
    return metrics, scored
