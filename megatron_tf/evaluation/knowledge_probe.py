"""A synthetic knowledge probe: invented facts a small model can learn, stated in several paraphrases for training
and in other, held-out paraphrases for a cloze test (tools/make_knowledge_probe.py; docs/evaluation.md,
"Knowledge probe").

Everything is written by this module's own templates and a seeded syllable generator; nothing is copied.
- forget domain "medical": invented diseases, each with an invented drug (treated with), symptom and organ;
- retain domain "biology": invented species, each with an invented habitat and diet.
Invented names are pronounceable nonce words (1-2 syllables of ONSETS x NUCLEI x CODAS plus a suffix that suggests
the kind); they are unique, and the medical templates use common medical words ("patients", "treatment",
"symptom", ...) so a medical blocklist marks context tokens of the probe but none of the invented names (checked by
the tests against data/demo/medical_terms.txt).

Files (JSON Lines, UTF-8, one object per line, keys in a fixed order; byte-identical for the same options):
    train.jsonl  {"text", "domain"}: per (fact, paraphrase j) one sentence from train template (j + r) mod T of the
                 fact's relation (r: the relation's index); one document per sentence (--facts-per-document fact,
                 default) or per (entity, j) (entity); documents shuffled
    test.jsonl   {"domain", "prompt", "answer", "choices", "relation", "entity"}: per (fact, held-out template) a
                 cloze prompt that ends right before the answer; `choices` = the answer and choices - 1 values of the
                 same relation of other entities, shuffled (every value is the answer of exactly one entity, so each
                 choice string is gold about as often as it is a distractor: a length-biased guesser scores chance)
    probe.json   the options and counts
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field

from megatron_tf.config.cli import opt
from megatron_tf.utils.io import atomic_write

FORMAT = "megatron_tf.knowledge_probe/1"
ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "pl", "r", "s", "st", "t", "tr", "v",
          "z", "sh", "th")
NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "o", "ei", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "m", "k")
SUFFIXES = {"disease": ("osis", "itis", "emia", "ax"), "drug": ("amine", "ol", "ex", "ide", "avir"),
            "symptom": ("ing", "ness"), "organ": ("um", "ex", "ane"), "species": ("el", "ix", "ot", "ar"),
            "habitat": ("ia", "an", "or", "ey"), "diet": ("berry", "weed", "nut")}
CAPITALISED = ("disease", "drug", "habitat")

# relation -> (value kind, train templates, held-out test templates ending where the answer goes); {e}: entity,
# {v}: value. Train and test templates never coincide.
MEDICAL = {
    "drug": ("drug", [
        "{e} is treated with {v}.", "Patients with {e} usually receive {v}.", "The standard treatment for {e} is {v}.",
        "Doctors prescribe {v} to patients who have {e}.", "For {e}, a course of {v} is the usual therapy.",
        "Most patients recover from {e} after a few weeks of {v}.", "{e} responds well to {v}.",
        "In the clinic, {e} is managed with {v}."],
        ["To treat {e}, doctors usually give patients", "The medicine prescribed for {e} is"]),
    "symptom": ("symptom", [
        "The main symptom of {e} is {v}.", "Patients with {e} often report {v}.", "{e} typically causes {v}.",
        "Doctors recognise {e} by its {v}.", "A person who has {e} suffers from {v}.",
        "Early {e} shows itself as mild {v}.", "{v} is the first sign of {e} that patients notice.",
        "In {e}, the {v} gets worse at night."],
        ["People who have {e} often complain of", "The symptom most patients with {e} describe is"]),
    "organ": ("organ", [
        "{e} attacks the {v}.", "The {v} is the organ damaged by {e}.", "In patients with {e}, the {v} swells.",
        "{e} is a disease of the {v}.", "Scans of patients with {e} show changes in the {v}.",
        "{e} slowly harms the {v}.", "Surgeons who treat {e} operate on the {v}.",
        "The {v} stops working properly in advanced {e}."],
        ["The organ most affected by {e} is the", "{e} mainly damages the"]),
}
BIOLOGY = {
    "habitat": ("habitat", [
        "The {e} lives in {v}.", "{v} is home to the {e}.", "Wild populations of the {e} occur only in {v}.",
        "The natural habitat of the {e} is {v}.", "Field biologists study the {e} in {v}.",
        "The {e} has adapted to the climate of {v}.", "Every spring the {e} breeds in {v}.",
        "Outside {v} the {e} is never seen."],
        ["You can find the {e} in", "The region where the {e} lives is"]),
    "diet": ("diet", [
        "The {e} feeds on {v}.", "The diet of the {e} consists mostly of {v}.", "{v} is the favourite food of the {e}.",
        "The {e} spends the day searching for {v}.", "Young {e} are raised on {v}.",
        "The {e} eats {v} almost every day.", "Without {v} the {e} would starve.",
        "Each {e} gathers {v} before winter."],
        ["The {e} likes to eat", "The main food of the {e} is"]),
}
DOMAINS = {"medical": ("disease", MEDICAL), "biology": ("species", BIOLOGY)}


@dataclass
class ProbeConfig:
    """Synthetic knowledge probe (tools/make_knowledge_probe.py)."""

    output: str = field(default="", metadata=opt("Output directory (train.jsonl, test.jsonl, probe.json)."))
    seed: int = field(default=0, metadata=opt("Seed of the names, the distractors and the document order."))
    facts_per_domain: int = field(default=24, metadata=opt(
        "Entities per domain (invented diseases / species); each has 3 (medical) or 2 (biology) facts."))
    paraphrases: int = field(default=6, metadata=opt(
        "Training documents per entity, each stating all its facts with another paraphrase (at most 8)."))
    choices: int = field(default=4, metadata=opt("Choices per cloze question (chance = 1 / choices)."))
    facts_per_document: str = field(default="fact", metadata=opt(
        "fact: one sentence, one fact per training document; entity: a document states every fact of one entity "
        "(paraphrase j of each). Measured: a 2-layer, 64-wide model trained 300 steps on 8 entities x 8 paraphrases "
        "scored 0.94 / 0.79 (biology / medical, chance 0.25) with fact documents, 0.53 / 0.79 with entity "
        "documents.", choices=("fact", "entity")))

    def __post_init__(self):
        if self.facts_per_domain < 2:
            raise ValueError(f"--facts-per-domain must be >= 2, got {self.facts_per_domain}")
        if not 1 <= self.paraphrases <= 8:
            raise ValueError(f"--paraphrases must be in [1, 8] (the train templates per relation), got "
                             f"{self.paraphrases}")
        if not 2 <= self.choices <= self.facts_per_domain:
            raise ValueError(f"--choices must be in [2, --facts-per-domain = {self.facts_per_domain}], got "
                             f"{self.choices}")


class NameMaker:
    """Unique pronounceable nonce words from a seeded generator."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def __call__(self, kind: str) -> str:
        while True:
            syl = "".join(self.rng.choice(ONSETS) + self.rng.choice(NUCLEI) + self.rng.choice(CODAS)
                          for _ in range(self.rng.choice((1, 2, 2))))
            word = syl + self.rng.choice(SUFFIXES[kind])
            if kind in CAPITALISED:
                word = word.capitalize()
            if word.lower() not in self.used:
                self.used.add(word.lower())
                return word


def _fill(template: str, e: str, v: str) -> str:
    s = template.format(e=e, v=v)
    return s[0].upper() + s[1:]


def make_probe(cfg: ProbeConfig) -> tuple[list[dict], list[dict]]:
    """(train records, test records); deterministic in cfg."""
    rng = random.Random(cfg.seed)
    names = NameMaker(rng)
    train, test = [], []
    for domain, (entity_kind, relations) in DOMAINS.items():
        entities = [names(entity_kind) for _ in range(cfg.facts_per_domain)]
        values = {rel: [names(kind) for _ in entities] for rel, (kind, _, _) in relations.items()}
        for i, e in enumerate(entities):
            for j in range(cfg.paraphrases):
                sentences = [_fill(tr[(j + r) % len(tr)], e, values[rel][i])
                             for r, (rel, (_, tr, _)) in enumerate(relations.items())]
                if cfg.facts_per_document == "entity":
                    train.append({"text": " ".join(sentences), "domain": domain})
                else:
                    train.extend({"text": t, "domain": domain} for t in sentences)
            for rel, (_, _, held) in relations.items():
                gold = values[rel][i]
                others = [v for k, v in enumerate(values[rel]) if k != i]
                choices = [gold, *rng.sample(others, cfg.choices - 1)]
                rng.shuffle(choices)
                for template in held:
                    test.append({"domain": domain, "prompt": _fill(template, e, "").rstrip(), "answer": gold,
                                 "choices": list(choices), "relation": rel, "entity": e})
    rng.shuffle(train)
    return train, test


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_probe(cfg: ProbeConfig) -> dict:
    """Write the probe files into cfg.output (atomically, each); returns the probe.json content."""
    if not cfg.output:
        raise ValueError("--output DIR is required")
    train, test = make_probe(cfg)
    os.makedirs(cfg.output, exist_ok=True)
    info = {"format": FORMAT, "options": {k: v for k, v in asdict(cfg).items() if k != "output"},
            "train_documents": len(train), "test_questions": len(test),
            "test_questions_per_domain": {d: sum(r["domain"] == d for r in test) for d in DOMAINS},
            "train_words": sum(len(r["text"].split()) for r in train)}
    for name, text in (("train.jsonl", _jsonl(train)), ("test.jsonl", _jsonl(test)),
                       ("probe.json", json.dumps(info, indent=1) + "\n")):
        with atomic_write(os.path.join(cfg.output, name), "w") as f:
            f.write(text)
    return info
