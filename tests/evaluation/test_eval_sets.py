"""MMLU / MedQA / MedMCQA loaders on records written here (plain and xz), the domain splits, --limit selection, and
errors that name file:line."""

import json
import lzma

import pytest

from megatron_tf.evaluation.eval_sets import (
    build_mcq_sets,
    load_medmcqa,
    load_medqa,
    load_mmlu,
    select,
    split_mmlu,
)
from megatron_tf.utils.jsonl import InputError

from .helpers import write_jsonl

MMLU = [
    {"subject": "anatomy", "idx": 0, "question": "Q0?", "choices": ["a", "b", "c", "d"], "answer": "B"},
    {"subject": "college_biology", "idx": 0, "question": "Q1?", "choices": ["a", "b", "c", "d"], "answer": "D"},
    {"subject": "virology", "idx": 1, "question": "Q2?", "choices": ["w", "x", "y", "z"], "answer": "A"},
    {"subject": "abstract_algebra", "idx": 0, "question": "Q3?", "choices": ["0", "4", "2", "6"], "answer": "C"},
    {"subject": "nutrition", "idx": 0, "question": "Q4?", "choices": ["e", "f", "g", "h"], "answer": "A"},
    {"subject": "high_school_biology", "idx": 5, "question": "Q5?", "choices": ["1", "2", "3", "4"], "answer": "A"},
]
MEDQA = [{"idx": 0, "question": "A 30-year-old...", "options": {"A": "x", "B": "y", "C": "z", "D": "u", "E": "v"},
          "answer_idx": "E", "answer": "v"}]
MEDMCQA = [
    {"subject": "Anaesthesia", "question": "M0?", "options": {"A": "p", "B": "q", "C": "r", "D": "s"},
     "answer_idx": "C", "answer": "r"},
    {"subject": "Dental", "question": "M1?", "options": {"A": "p", "B": "q", "C": "r", "D": "s"},
     "answer_idx": "A", "answer": "p"},
]


def _xz(path, records):
    with lzma.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_loaders(tmp_path):
    mm = load_mmlu(_xz(tmp_path / "mmlu.jsonl.xz", MMLU))
    assert [(q.subject, q.answer, q.choices) for q in mm[:2]] == [("anatomy", 1, ("a", "b", "c", "d")),
                                                                   ("college_biology", 3, ("a", "b", "c", "d"))]
    mq = load_medqa(write_jsonl(str(tmp_path / "medqa.jsonl"), MEDQA))
    assert mq[0].choices == ("x", "y", "z", "u", "v") and mq[0].answer == 4 and mq[0].subject is None
    mc = load_medmcqa(write_jsonl(str(tmp_path / "medmcqa.jsonl"), MEDMCQA))
    assert [(q.subject, q.answer) for q in mc] == [("Anaesthesia", 2), ("Dental", 0)]
    # content ids: the same question has the same id in another file
    again = load_mmlu(write_jsonl(str(tmp_path / "copy.jsonl"), MMLU[::-1]))
    assert {q.qid for q in again} == {q.qid for q in mm} and len({q.qid for q in mm}) == len(mm)


def test_splits_and_sets(tmp_path):
    paths = (_xz(tmp_path / "mmlu.jsonl.xz", MMLU), write_jsonl(str(tmp_path / "medqa.jsonl"), MEDQA),
             write_jsonl(str(tmp_path / "medmcqa.jsonl"), MEDMCQA))
    parts = split_mmlu(load_mmlu(paths[0]))
    assert [q.question for q in parts["mmlu_medical"]] == ["Q0?", "Q2?"]
    assert [q.question for q in parts["mmlu_biology"]] == ["Q1?", "Q5?"]
    assert [q.question for q in parts["mmlu_other"]] == ["Q3?", "Q4?"]
    sets = {s.name: s for s in build_mcq_sets(*paths, mmlu_exclude_subjects=["nutrition"])}
    assert {n: s.role for n, s in sets.items()} == {"medmcqa": "forget", "medqa": "forget", "mmlu_medical": "forget",
                                                     "mmlu_biology": "retain", "mmlu_other": "general"}
    assert [q.question for q in sets["mmlu_other"].questions] == ["Q3?"]
    assert [q.subject for q in sets["medmcqa"].questions] == ["Anaesthesia"]  # Dental excluded by default
    with pytest.raises(ValueError, match="both forget and retain"):
        split_mmlu([], ["anatomy"], ["anatomy"])
    with pytest.raises(ValueError, match="mmlu_biology.*empty"):
        build_mcq_sets(paths[0], mmlu_retain_subjects=["astronomy"])


def test_limit_is_a_stable_hash_sample(tmp_path):
    recs = [{"subject": f"s{i % 7}", "question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": "A"}
            for i in range(50)]
    qs = load_mmlu(write_jsonl(str(tmp_path / "m.jsonl"), recs))
    a = select(qs, 10)
    assert len(a) == 10 and a == select(qs, 10)
    assert [qs.index(q) for q in a] == sorted(qs.index(q) for q in a)  # file order kept
    assert set(q.qid for q in select(qs, 5)) <= set(q.qid for q in a)  # nested samples
    assert a != qs[:10]  # not simply the first ones (subjects mix)
    assert select(qs, 100) == qs


@pytest.mark.parametrize("bad,match", [
    ({"subject": "x", "question": "q", "choices": ["a", "b"], "answer": "C"}, "letter A..B"),
    ({"subject": "x", "question": "q", "answer": "A"}, "missing field 'choices'"),
    ({"subject": "x", "question": 3, "choices": ["a", "b"], "answer": "A"}, "'question' should be str"),
])
def test_bad_mmlu_records_name_file_and_line(tmp_path, bad, match):
    path = write_jsonl(str(tmp_path / "bad.jsonl"), [MMLU[0], bad])
    with pytest.raises(InputError, match=rf"bad.jsonl:2: .*{match}"):
        load_mmlu(path)


def test_bad_options(tmp_path):
    path = write_jsonl(str(tmp_path / "bad.jsonl"), [{"question": "q", "options": {"A": "x", "C": "y"},
                                                      "answer_idx": "A"}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'options' should have keys"):
        load_medqa(path)
    (tmp_path / "broken.jsonl").write_text('{"question": \n')
    with pytest.raises(InputError, match=r"broken.jsonl:1: invalid JSON"):
        load_medqa(str(tmp_path / "broken.jsonl"))
