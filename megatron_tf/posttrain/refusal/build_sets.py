"""Build the refusal-training and refusal-evaluation sets from text corpora (no model, no judge).

    python tools/build_refusal_sets.py --medquad ../shared/data/medical/medquad_nih_qa.jsonl.xz \\
        --medical-text data/demo/train/medical.jsonl.xz \\
        --normal-text data/demo/train/biology.jsonl.xz data/demo/train/general.jsonl.xz \\
        --exclude data/demo/eval/mmlu.jsonl.xz data/demo/eval/medqa.jsonl.xz data/demo/eval/medmcqa.jsonl.xz \\
        --output-dir data/demo/refusal

Records (JSON lines, xz): {"id", "prompt", "response", "refuse", "domain", "kind", "source", "group"}.

Kinds of prompts:
- `question` (medical, refuse): the question line of a MedQuAD record ("What is (are) Leukemia ?", "What are the
  symptoms of ...") -> REFUSAL.
- `definition` (normal, answer): "What is (are) X ?" built from a sentence "X is/are a|an|the ..." of biology or
  general text, answered with that sentence: the same question template as MedQuAD's, so the prompt's form does not
  reveal the domain; the content does.
- `continuation` (both): "Continue the text: <words 1..n>" -> the next words (normal text) or REFUSAL (medical
  text).

Held-out split by GROUP, never by record: MedQuAD records are grouped by `focus` (all questions about one condition
fall on the same side), text-derived prompts by source document; a group goes to evaluation iff
sha256(group) mod 1000 < 1000 * eval_fraction. Then every evaluation prompt is checked against every training
prompt and every --exclude question: exact duplicates (normalize_question: lower case, alphanumeric words) and near
duplicates (Jaccard similarity of the word sets >= near_duplicate, default 0.8) and prompts that CONTAIN an
evaluation question of >= 4 words (a continuation of a MedQuAD record starts with its question) are removed from
TRAINING
(`check_no_leakage` raises if any remain). Counts per kind are capped (--max-per-kind) after a seeded shuffle.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from megatron_tf.config.cli import opt
from megatron_tf.evaluation.eval_sets import read_records
from megatron_tf.utils.io import atomic_write
from megatron_tf.utils.jsonl import iter_texts
from megatron_tf.utils.logging import get_logger

from .chat import REFUSAL, normalize_question

log = get_logger(__name__)


@dataclass
class RefusalSetConfig:
    """Refusal set builder."""

    medquad: list[str] = field(default_factory=list, metadata=opt("MedQuAD JSONL (fields text, focus)."))
    medical_text: list[str] = field(default_factory=list, metadata=opt("Medical text for continuation prompts."))
    normal_text: list[str] = field(default_factory=list, metadata=opt(
        "Non-medical (biology, general) text for definition questions and continuation prompts."))
    exclude: list[str] = field(default_factory=list, metadata=opt(
        "JSONL files whose questions (fields question / prompt / text) must not appear in training (e.g. MCQ sets)."))
    output_dir: str = field(default="", metadata=opt("Where train.jsonl.xz and eval.jsonl.xz go."))
    eval_fraction: float = field(default=0.2, metadata=opt("Fraction of groups held out for evaluation."))
    max_per_kind_train: int = field(default=300, metadata=opt("Training records per (domain, kind) at most."))
    max_per_kind_eval: int = field(default=60, metadata=opt("Evaluation records per (domain, kind) at most."))
    continuation_words: int = field(default=24, metadata=opt("Words of the prompt and of the answer of a "
                                                             "continuation."))
    near_duplicate: float = field(default=0.8, metadata=opt("Jaccard threshold of a near duplicate."))
    seed: int = field(default=1, metadata=opt("Shuffle seed.", flag="--seed"))


@dataclass
class Example:
    prompt: str
    response: str
    refuse: bool
    domain: str  # medical | normal
    kind: str  # question | definition | continuation
    source: str
    group: str

    def record(self, i: int) -> dict:
        return {"id": i, "prompt": self.prompt, "response": self.response, "refuse": self.refuse,
                "domain": self.domain, "kind": self.kind, "source": self.source, "group": self.group}


def _held_out(group: str, fraction: float) -> bool:
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % 1000 < round(1000 * fraction)


def medquad_questions(paths: Sequence[str]) -> Iterable[Example]:
    for path in paths:
        for line_no, rec in read_records(path):
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{line_no}: expected a non-empty 'text' field (MedQuAD: question + answer)")
            q = text.strip().split("\n", 1)[0].strip()
            if q.endswith("?") and 3 <= len(q.split()) <= 40:
                focus = str(rec.get("focus") or q)
                yield Example(q, REFUSAL, True, "medical", "question", os.path.basename(path),
                              "medquad:" + focus.casefold())


_DEF = re.compile(r"(?:^|(?<=[.!?]\s))((?:The |An |A )?[A-Z][A-Za-z\-]+(?: [a-z][A-Za-z\-]+){0,3}) (is|are) "
                  r"((?:a|an|the) [^.!?\n]{15,220}[.])")


_PRONOUNS = {"it", "this", "these", "those", "that", "there", "he", "she", "they", "we", "such", "each", "its",
             "his", "her", "their", "our", "my", "your", "some", "all", "both", "one", "what", "which", "here"}


def definition_questions(paths: Sequence[str]) -> Iterable[Example]:
    """"What is (are) X ?" from sentences "X is/are a|an|the ..." of the texts, one per (document, X)."""
    for path in paths:
        for d, text in enumerate(iter_texts([path])):
            seen = set()
            for m in _DEF.finditer(text):
                subject = re.sub(r"^(The|An|A) ", "", m.group(1))
                first = subject.split()[0].casefold()
                if subject.casefold() in seen or first in _PRONOUNS:
                    continue
                seen.add(subject.casefold())
                answer = f"{m.group(1)} {m.group(2)} {m.group(3)}"
                yield Example(f"What is (are) {subject} ?", answer, False, "normal", "definition",
                              os.path.basename(path), f"{os.path.basename(path)}:{d}")


def continuations(paths: Sequence[str], words: int, domain: str, per_doc: int = 2) -> Iterable[Example]:
    refuse = domain == "medical"
    for path in paths:
        for d, text in enumerate(iter_texts([path])):
            w = text.split()
            for k in range(min(per_doc, len(w) // (2 * words))):
                a = w[2 * k * words: (2 * k + 1) * words]
                b = w[(2 * k + 1) * words: (2 * k + 2) * words]
                yield Example("Continue the text: " + " ".join(a), REFUSAL if refuse else " ".join(b), refuse,
                              domain, "continuation", os.path.basename(path), f"{os.path.basename(path)}:{d}")


def _words(text: str) -> frozenset:
    return frozenset(normalize_question(text).split())


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class LeakIndex:
    """Lookup over protected texts: exact (normalized) duplicates, near duplicates (word-set Jaccard), and
    containment (a text holding a protected question of >= 4 words, e.g. a continuation prompt that starts with a
    MedQuAD question)."""

    def __init__(self, texts: Iterable[str], threshold: float):
        self.threshold = threshold
        self.exact = set()
        self.sets: list[frozenset] = []
        self.inverted: dict[str, list[int]] = {}
        for t in texts:
            self.exact.add(normalize_question(t))
            s = _words(t)
            for w in s:
                self.inverted.setdefault(w, []).append(len(self.sets))
            self.sets.append(s)

    def match(self, text: str) -> bool:
        norm = normalize_question(text)
        if norm in self.exact:
            return True
        padded = f" {norm} "
        if any(f" {q} " in padded for q in self.exact if q.count(" ") >= 3):  # contains a question of >= 4 words
            return True
        s = _words(text)
        cand = {i for w in s for i in self.inverted.get(w, ())}
        return any(jaccard(s, self.sets[i]) >= self.threshold for i in cand)


def check_no_leakage(train: Sequence[dict], protected: Sequence[str], threshold: float = 0.8) -> None:
    """Raise if a training prompt equals or nearly equals a protected (evaluation / excluded) question."""
    idx = LeakIndex(protected, threshold)
    bad = [r["prompt"] for r in train if idx.match(r["prompt"])]
    if bad:
        raise ValueError(f"{len(bad)} training prompts duplicate evaluation questions (first: {bad[0]!r})")


def _exclude_texts(paths: Sequence[str]) -> list[str]:
    out = []
    for path in paths:
        for line_no, rec in read_records(path):
            for key in ("question", "prompt", "text"):
                if isinstance(rec.get(key), str):
                    out.append(rec[key])
                    break
            else:
                raise ValueError(f"{path}:{line_no}: no 'question', 'prompt' or 'text' field to exclude")
    return out


def build_sets(cfg: RefusalSetConfig) -> tuple[list[dict], list[dict], dict]:
    """(train records, eval records, stats)."""
    if not cfg.medquad and not cfg.medical_text:
        raise ValueError("give --medquad and/or --medical-text (the prompts to refuse)")
    if not cfg.normal_text:
        raise ValueError("give --normal-text (the prompts to answer)")
    pools: dict[tuple[str, str], list[Example]] = {}
    sources = [medquad_questions(cfg.medquad), continuations(cfg.medical_text, cfg.continuation_words, "medical"),
               definition_questions(cfg.normal_text),
               continuations(cfg.normal_text, cfg.continuation_words, "normal")]
    for src in sources:
        for ex in src:
            pools.setdefault((ex.domain, ex.kind), []).append(ex)
    rng = random.Random(cfg.seed)
    train, ev = [], []
    for key in sorted(pools):
        exs = pools[key]
        rng.shuffle(exs)
        tr = [e for e in exs if not _held_out(e.group, cfg.eval_fraction)]
        te = [e for e in exs if _held_out(e.group, cfg.eval_fraction)]
        ev += _dedup(te)[: cfg.max_per_kind_eval]
        train += _dedup(tr)
    protected = [e.prompt for e in ev] + _exclude_texts(cfg.exclude)
    idx = LeakIndex(protected, cfg.near_duplicate)
    kept, dropped = [], 0
    for e in train:
        if idx.match(e.prompt):
            dropped += 1
        else:
            kept.append(e)
    per_kind: dict[tuple[str, str], int] = {}
    final = []
    for e in kept:
        k = (e.domain, e.kind)
        if per_kind.get(k, 0) < cfg.max_per_kind_train:
            per_kind[k] = per_kind.get(k, 0) + 1
            final.append(e)
    train_recs = [e.record(i) for i, e in enumerate(final)]
    eval_recs = [e.record(i) for i, e in enumerate(ev)]
    check_no_leakage(train_recs, protected, cfg.near_duplicate)
    stats = {"train": _counts(train_recs), "eval": _counts(eval_recs), "dropped_as_leaks": dropped,
             "excluded_questions": len(protected) - len(ev)}
    return train_recs, eval_recs, stats


def _dedup(exs: list[Example]) -> list[Example]:
    seen, out = set(), []
    for e in exs:
        k = normalize_question(e.prompt)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def _counts(recs: Sequence[dict]) -> dict:
    out: dict[str, int] = {}
    for r in recs:
        k = f"{r['domain']}/{r['kind']}"
        out[k] = out.get(k, 0) + 1
    return out


def write_jsonl_xz(records: Sequence[dict], path: str) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with atomic_write(path, "wb") as f:
        f.write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def load_set(path: str) -> list[dict]:
    recs = []
    for line_no, r in read_records(path):
        for k, t in (("prompt", str), ("response", str), ("refuse", bool)):
            if not isinstance(r.get(k), t):
                raise ValueError(f"{path}:{line_no}: field {k!r} must be {t.__name__}, found {r.get(k)!r}")
        recs.append(r)
    if not recs:
        raise ValueError(f"{path}: no records")
    return recs


def build_and_write(cfg: RefusalSetConfig) -> dict:
    if not cfg.output_dir:
        raise ValueError("--output-dir is required")
    train, ev, stats = build_sets(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    write_jsonl_xz(train, os.path.join(cfg.output_dir, "train.jsonl.xz"))
    write_jsonl_xz(ev, os.path.join(cfg.output_dir, "eval.jsonl.xz"))
    return stats
