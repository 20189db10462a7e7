"""Knowledge probe evaluation (tools/evaluate.py --knowledge DIR/test.jsonl): cloze over the choices of every
held-out question of the synthetic probe (megatron_tf/evaluation/knowledge_probe.py), per domain.

Scoring is the multiple-choice code's (mcq.py) with the prompt used as it is, a plain sentence prefix:
    context      = <|endoftext|> + prompt.strip()
    continuation = " " + choice.strip()
`acc` is the UNNORMALISED cloze accuracy, argmax_k of the summed log-likelihood of the continuation's tokens
(lm-eval's acc): every choice string of the probe is the answer of exactly one question and a distractor of others,
so a preference for short answers cannot lift it above chance. `acc_norm` (per character), `p_correct` and the
binomial standard errors are reported as well; `chance` = mean 1 / number of choices.
"""

from __future__ import annotations

from .eval_sets import MCQSet, MCQuestion, _get, read_records
from .mcq import evaluate_mcq

PROBE_TEMPLATE = "{question}"
DOMAIN_ROLES = {"medical": "forget", "biology": "retain"}


def load_probe_questions(path: str) -> dict[str, list[MCQuestion]]:
    """{domain: questions} of a probe test file; errors name file:line, the expected and the found value."""
    out: dict[str, list[MCQuestion]] = {}
    for line, rec in read_records(path):
        where = f"{path}:{line}"
        choices = _get(rec, "choices", list, where)
        if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"{where}: field 'choices' should be a list of >= 2 non-empty strings, found "
                             f"{choices!r:.80}")
        answer = _get(rec, "answer", str, where)
        if answer not in choices:
            raise ValueError(f"{where}: answer {answer!r} is not one of the choices {choices}")
        domain = _get(rec, "domain", str, where)
        out.setdefault(domain, []).append(MCQuestion(_get(rec, "prompt", str, where), tuple(choices),
                                                     choices.index(answer), "probe", rec.get("relation")))
    if not out:
        raise ValueError(f"{path}: no questions (expected JSON Lines with domain, prompt, answer, choices)")
    return out


def evaluate_knowledge(model, tokenizer, path: str, *, seq_length: int, batch_size: int = 8, bf16: bool = True,
                       progress: bool = False) -> dict:
    """{domain: {acc, acc_norm, n, chance, p_correct, ...}} (module docstring)."""
    out = {}
    for domain, questions in sorted(load_probe_questions(path).items()):
        s = MCQSet(f"knowledge_{domain}", DOMAIN_ROLES.get(domain, "general"), questions,
                   f"knowledge probe {path}, domain {domain}")
        metrics, _ = evaluate_mcq(model, tokenizer, s, seq_length=seq_length, batch_size=batch_size, bf16=bf16,
                                  progress=progress, template=PROBE_TEMPLATE)
        metrics.pop("name", None)
        metrics.pop("per_subject", None)
        out[domain] = {"acc": metrics.pop("acc"), "n": metrics.pop("n"), "chance": metrics.pop("chance"), **metrics,
                       "scoring": "cloze, unnormalised summed log-likelihood (acc); per character (acc_norm)"}
    return out
