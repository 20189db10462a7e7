"""Cloze multiple choice: batched, right-padded log-likelihoods equal an explicit loop of full-sequence float64
forwards; acc / acc_norm / stderr / chance / p_correct recomputed by hand; prompt format; left truncation."""

import math

import numpy as np
import pytest

from megatron_tf.evaluation.eval_sets import MCQSet, MCQuestion
from megatron_tf.evaluation.mcq import build_requests, cloze_context, cloze_continuation, evaluate_mcq, loglikelihoods

from .helpers import demo_tokenizer, sequence_logprobs, tiny_model

QUESTIONS = [
    MCQuestion("Which organ pumps blood?", ("The heart", "Lungs", "A kidney", "The large intestine"), 0, "mmlu",
               "anatomy"),
    MCQuestion("  What do mitochondria make? ", ("ATP", "glucose and oxygen", "DNA"), 2, "mmlu", "college_biology"),
    MCQuestion("Pick one.", ("yes", "no", "maybe", "never", "always"), 4, "medqa"),
    MCQuestion("A 45-year-old man has chest pain. Next step?", ("ECG", "Discharge home", "MRI of the knee", "Aspirin"),
               3, "mmlu", "anatomy"),
]


def test_prompt_format():
    assert cloze_context("  Why? \n") == "Question: Why?\nAnswer:"
    assert cloze_continuation(" B cells ") == " B cells"


def _explicit(model, tok, q, seq_length=None):
    """Per choice: sum of log p(continuation token | all before) from one unpadded float64 forward per choice."""
    out = []
    ctx = [tok.eod, *tok.tokenize(f"Question: {q.question.strip()}\nAnswer:")]
    for c in q.choices:
        cont = tok.tokenize(" " + c.strip())
        ids = ctx + cont
        if seq_length is not None and len(ids) > seq_length + 1:
            ids = ids[-(seq_length + 1):]
        lps = sequence_logprobs(model, ids)  # lps[j-1] = log p(ids[j] | ids[:j])
        total = 0.0
        for j in range(len(ids) - len(cont), len(ids)):
            total += lps[j - 1]
        out.append(total)
    return out


def test_loglikelihoods_match_explicit_loop_and_metrics():
    tok = demo_tokenizer()
    model = tiny_model(tok.vocab_size, seed=2)  # seed 2: acc 0.75, acc_norm 0.25 (both metrics exercised)
    ref = [_explicit(model, tok, q) for q in QUESTIONS]
    reqs = build_requests(QUESTIONS, tok, seq_length=64)
    assert not any(r.truncated for r in reqs)
    for bs in (1, 5):  # 5 rows of different lengths per batch: right padding
        lls = loglikelihoods(model, reqs, tok.pad, batch_size=bs)
        got = [[lls[k] for k, r in enumerate(reqs) if r.question == qi] for qi in range(len(QUESTIONS))]
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-11)

    metrics, scored = evaluate_mcq(model, tok, MCQSet("x", "forget", QUESTIONS), seq_length=64, batch_size=3)
    # by hand from the explicit log-likelihoods
    correct = [int(np.argmax(r)) == q.answer for q, r in zip(QUESTIONS, ref)]
    correct_norm = [int(np.argmax(np.array(r) / [len(c.strip()) for c in q.choices])) == q.answer
                    for q, r in zip(QUESTIONS, ref)]
    n = len(QUESTIONS)
    acc, acc_norm = sum(correct) / n, sum(correct_norm) / n
    assert 0 < acc < 1 and acc != acc_norm
    assert metrics["n"] == n and metrics["acc"] == acc and metrics["acc_norm"] == acc_norm
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / n))
    assert metrics["acc_norm_stderr"] == pytest.approx(math.sqrt(acc_norm * (1 - acc_norm) / n))
    assert metrics["chance"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 5 + 1 / 4) / 4)
    p = [math.exp(r[q.answer]) / sum(math.exp(v) for v in r) for q, r in zip(QUESTIONS, ref)]
    assert metrics["p_correct"] == pytest.approx(np.mean(p), rel=1e-9)
    assert metrics["per_subject"]["anatomy"]["n"] == 2
    assert [s["correct"] for s in scored] == correct


def test_left_truncation():
    tok = demo_tokenizer()
    model = tiny_model(tok.vocab_size, seed=6)
    q = QUESTIONS[3]
    L = 8  # shorter than context + answer: the question's start is cut
    reqs = build_requests([q], tok, seq_length=L)
    assert all(r.truncated and len(r.ids) == L + 1 for r in reqs)
    lls = loglikelihoods(model, reqs, tok.pad, batch_size=4)
    np.testing.assert_allclose(lls, _explicit(model, tok, q, seq_length=L), rtol=1e-11, atol=1e-11)
    with pytest.raises(ValueError, match="more than seq_length"):
        build_requests([MCQuestion("q", ("a " * 40, "b"), 0, "mmlu")], tok, seq_length=L)


def test_worked_example_of_the_docs():
    """docs/evaluation.md: ll = (-4.1, -2.0, -6.3, -3.0), gold 3 -> acc 0, acc_norm 0, p_correct 0.245."""
    from megatron_tf.evaluation.mcq import Request, mcq_metrics, score_questions

    q = MCQuestion("?", ("A", "bone marrow", "spleen", "liver"), 3, "mmlu")
    reqs = [Request(0, k, [1, 2], 1, False) for k in range(4)]
    scored = score_questions([q], reqs, np.array([-4.1, -2.0, -6.3, -3.0]))
    assert scored[0]["pred"] == 1 and scored[0]["pred_norm"] == 1
    m = mcq_metrics([q], scored)
    assert m["acc"] == 0 and m["acc_norm"] == 0 and round(m["p_correct"], 3) == 0.245 and m["chance"] == 0.25
