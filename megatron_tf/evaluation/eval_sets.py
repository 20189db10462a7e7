"""Multiple-choice eval sets: loaders for MMLU, MedQA and MedMCQA JSON Lines records and the forget / retain /
general splits.

Record formats (JSONL, plain or compressed; ../shared/data/README.md and data/demo/eval/):
    MMLU     {"subject", "question", "choices": [4 strings], "answer": "A".."D"}            (idx optional)
    MedQA    {"question", "options": {"A": .., .., "E": ..}, "answer_idx": "C", "answer"}    (idx optional)
    MedMCQA  {"subject", "question", "options": {"A": .., "D": ..}, "answer_idx": "B", "answer"}
Options are ordered by their letter. A bad record raises an error naming file:line, the expected and the found value.

Sets (`build_mcq_sets`), with the suggested splits of ../shared/data/README.md:
    medmcqa       forget   MedMCQA dev without the Dental subject (1,318 of 4,183 questions are dental)
    medqa         forget   MedQA (USMLE, 5 options)
    mmlu_medical  forget   MMLU anatomy, clinical_knowledge, college_medicine, medical_genetics,
                           professional_medicine, virology
    mmlu_biology  retain   MMLU college_biology, high_school_biology
    mmlu_other    general  every other MMLU subject (minus any excluded ones)
`limit` keeps at most N questions per set, chosen in the order of sha256(question id) (a stable, subject-mixed
sample; the kept questions stay in file order). The question id hashes the content (source, question, options),
so a question keeps its id when copied into another file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from megatron_tf.utils.jsonl import InputError, is_blank, iter_blocks, open_input, split_lines

MMLU_MEDICAL_SUBJECTS = ("anatomy", "clinical_knowledge", "college_medicine", "medical_genetics",
                         "professional_medicine", "virology")
MMLU_BIOLOGY_SUBJECTS = ("college_biology", "high_school_biology")
MEDMCQA_EXCLUDED_SUBJECTS = ("Dental",)
ROLES = ("forget", "retain", "general")


@dataclass(frozen=True)
class MCQuestion:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    source: str  # mmlu | medqa | medmcqa
    subject: str | None = None
    qid: str = ""

    def __post_init__(self):
        if not self.qid:
            h = hashlib.sha256("\x1f".join([self.source, self.question, *self.choices]).encode("utf-8"))
            object.__setattr__(self, "qid", f"{self.source}:{h.hexdigest()[:16]}")


@dataclass
class MCQSet:
    name: str
    role: str
    questions: list[MCQuestion] = field(default_factory=list)
    description: str = ""


def read_records(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) of every non-blank line."""
    with open_input(path) as stream:
        for block in iter_blocks(stream, 1 << 22):
            for i, line in enumerate(split_lines(block.data)):
                if is_blank(line):
                    continue
                where = f"{path}:{block.first_line + i}"
                try:
                    rec = json.loads(line)
                except (ValueError, UnicodeDecodeError) as e:
                    raise InputError(f"{where}: invalid JSON ({e})") from e
                if not isinstance(rec, dict):
                    raise InputError(f"{where}: expected a JSON object, found {type(rec).__name__}")
                yield block.first_line + i, rec


def _get(rec: dict, key: str, kind, where: str):
    if key not in rec:
        raise InputError(f"{where}: missing field {key!r} (fields present: {sorted(rec)})")
    v = rec[key]
    if not isinstance(v, kind):
        raise InputError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}, found "
                         f"{type(v).__name__} {str(v)[:60]!r}")
    return v


def _letter_index(letter, n: int, where: str, key: str) -> int:
    if isinstance(letter, int) and not isinstance(letter, bool) and 0 <= letter < n:
        return letter
    if isinstance(letter, str) and len(letter) == 1 and 0 <= ord(letter.upper()) - ord("A") < n:
        return ord(letter.upper()) - ord("A")
    raise InputError(f"{where}: field {key!r} should be a letter A..{chr(ord('A') + n - 1)} (or an index < {n}), "
                     f"found {letter!r}")


def _options(rec: dict, where: str) -> tuple[str, ...]:
    opts = _get(rec, "options", dict, where)
    letters = sorted(opts)
    expect = [chr(ord("A") + i) for i in range(len(letters))]
    if letters != expect or len(letters) < 2:
        raise InputError(f"{where}: field 'options' should have keys {expect[:max(2, len(expect))]} (A, B, ...), "
                         f"found {letters}")
    for k in letters:
        if not isinstance(opts[k], str):
            raise InputError(f"{where}: option {k} should be a string, found {type(opts[k]).__name__}")
    return tuple(opts[k] for k in letters)


def load_mmlu(path: str) -> list[MCQuestion]:
    out = []
    for line, rec in read_records(path):
        where = f"{path}:{line}"
        choices = _get(rec, "choices", list, where)
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise InputError(f"{where}: field 'choices' should be a list of >= 2 strings, found {choices!r:.80}")
        out.append(MCQuestion(_get(rec, "question", str, where), tuple(choices),
                              _letter_index(rec.get("answer"), len(choices), where, "answer"), "mmlu",
                              _get(rec, "subject", str, where)))
    return out


def load_medqa(path: str) -> list[MCQuestion]:
    out = []
    for line, rec in read_records(path):
        where = f"{path}:{line}"
        choices = _options(rec, where)
        out.append(MCQuestion(_get(rec, "question", str, where), choices,
                              _letter_index(rec.get("answer_idx"), len(choices), where, "answer_idx"), "medqa"))
    return out


def load_medmcqa(path: str) -> list[MCQuestion]:
    out = []
    for line, rec in read_records(path):
        where = f"{path}:{line}"
        choices = _options(rec, where)
        out.append(MCQuestion(_get(rec, "question", str, where), choices,
                              _letter_index(rec.get("answer_idx"), len(choices), where, "answer_idx"), "medmcqa",
                              _get(rec, "subject", str, where)))
    return out


def select(questions: Sequence[MCQuestion], limit: int | None) -> list[MCQuestion]:
    """At most `limit` questions, the first ones in sha256(qid) order, returned in their original order."""
    if limit is None or limit >= len(questions):
        return list(questions)
    ranked = sorted(range(len(questions)),
                    key=lambda i: (hashlib.sha256(questions[i].qid.encode()).hexdigest(), i))
    return [questions[i] for i in sorted(ranked[:limit])]


def split_mmlu(questions: Sequence[MCQuestion], forget_subjects: Sequence[str] = MMLU_MEDICAL_SUBJECTS,
               retain_subjects: Sequence[str] = MMLU_BIOLOGY_SUBJECTS, exclude_subjects: Sequence[str] = ()
               ) -> dict[str, list[MCQuestion]]:
    """{'mmlu_medical': forget subjects, 'mmlu_biology': retain subjects, 'mmlu_other': the rest not excluded}."""
    f, r, x = set(forget_subjects), set(retain_subjects), set(exclude_subjects)
    if f & r:
        raise ValueError(f"MMLU subjects both forget and retain: {sorted(f & r)}")
    out: dict[str, list[MCQuestion]] = {"mmlu_medical": [], "mmlu_biology": [], "mmlu_other": []}
    for q in questions:
        if q.subject in f:
            out["mmlu_medical"].append(q)
        elif q.subject in r:
            out["mmlu_biology"].append(q)
        elif q.subject not in x:
            out["mmlu_other"].append(q)
    return out


def build_mcq_sets(mmlu: str | None = None, medqa: str | None = None, medmcqa: str | None = None, *,
                   mmlu_forget_subjects: Sequence[str] = MMLU_MEDICAL_SUBJECTS,
                   mmlu_retain_subjects: Sequence[str] = MMLU_BIOLOGY_SUBJECTS,
                   mmlu_exclude_subjects: Sequence[str] = (),
                   medmcqa_exclude_subjects: Sequence[str] = MEDMCQA_EXCLUDED_SUBJECTS,
                   limit: int | None = None) -> list[MCQSet]:
    """The sets of the module docstring for the files given (a missing file's sets are left out)."""
    sets = []
    if medmcqa:
        x = set(medmcqa_exclude_subjects)
        qs = [q for q in load_medmcqa(medmcqa) if q.subject not in x]
        sets.append(MCQSet("medmcqa", "forget", select(qs, limit),
                           f"MedMCQA without subjects {sorted(x)}" if x else "MedMCQA"))
    if medqa:
        sets.append(MCQSet("medqa", "forget", select(load_medqa(medqa), limit), "MedQA (USMLE)"))
    if mmlu:
        parts = split_mmlu(load_mmlu(mmlu), mmlu_forget_subjects, mmlu_retain_subjects, mmlu_exclude_subjects)
        desc = {"mmlu_medical": f"MMLU {', '.join(mmlu_forget_subjects)}",
                "mmlu_biology": f"MMLU {', '.join(mmlu_retain_subjects)}",
                "mmlu_other": "MMLU, all other subjects" + (
                    f" except {', '.join(mmlu_exclude_subjects)}" if mmlu_exclude_subjects else "")}
        for name, role in (("mmlu_medical", "forget"), ("mmlu_biology", "retain"), ("mmlu_other", "general")):
            sets.append(MCQSet(name, role, select(parts[name], limit), desc[name]))
    for s in sets:
        if not s.questions:
            raise ValueError(f"multiple-choice set {s.name!r} is empty ({s.description}); check the file and the "
                             "subject lists")
    return sets
