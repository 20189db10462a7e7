#!/usr/bin/env python3
"""Build the bundled demo corpus data/demo/{train,heldout}/*.jsonl.xz from ../shared/data (deterministic).

    python tools/make_demo_corpus.py [--shared ../shared/data] [--out data/demo]

Selection (see data/demo/LICENSES.md for sources and licences):
- train, per domain about 1.25 MB of text, split evenly over the domain's training corpora (the "Suggested splits" of
  ../shared/data/README.md; Brown is left out for its non-commercial-only terms). Documents are taken in the order
  of sha256("<corpus>:<line number>") until the corpus' share is used; documents longer than 16,000 characters are
  cut at the last line break before that (field `truncated_from_chars`), so books contribute many excerpts instead
  of one. The selected documents of a domain are written in the same hash order, so corpora interleave.
- heldout, about 250 kB of text per domain: medical = pubmed_abstracts_medical rows with
  source == "medical_abstracts_tc_test"; biology = GENIA/JNLPBA rows with split == "test"; general = WikiText-2 raw
  test, one document per article (a line " = Title = " starts an article; "\\r" removed, nothing else changed).
Every record keeps its provenance fields and gains `domain`, `corpus` (source file) and `demo_split`.
Output is xz (preset 9); the same input gives the same bytes. Not run by tests (they never read ../shared).
"""

import argparse
import hashlib
import json
import lzma
import os
import re
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402

TRAIN = {
    "medical": ["medical/medquad_nih_qa", "medical/mts_dialog_doctor_patient",
                "medical/openstax_microbiology_ch13-26_clinical", "medical/pubmed_abstracts_medical"],
    "biology": ["biology/openstax_biology_1e", "biology/openstax_microbiology_ch01-12",
                "biology/openstax_behavioral_neuroscience", "biology/genia_jnlpba_molecular_biology_abstracts"],
    "general": ["general/eltec_eng_novels_1840-1920", "general/nltk_movie_reviews_polarity_v2",
                "general/nltk_us_presidential_speeches_pd"],
}
TRAIN_FILTER = {  # records of a training corpus that are held out (or belong to another split)
    "medical/pubmed_abstracts_medical": lambda r: r["source"] in ("bc5cdr", "ncbi_disease"),
    "biology/genia_jnlpba_molecular_biology_abstracts": lambda r: r["split"] == "train",
}
TRAIN_CHARS_PER_DOMAIN = 1_250_000
HELDOUT_CHARS_PER_DOMAIN = 250_000
MAX_DOC_CHARS = 16_000
WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def read_jsonl_xz(path):
    with lzma.open(path, "rt", encoding="utf-8", newline="\n") as f:
        for line in f:
            yield json.loads(line)


def order_key(corpus, i):
    return hashlib.sha256(f"{corpus}:{i}".encode()).hexdigest()


def cut(text):
    if len(text) <= MAX_DOC_CHARS:
        return text, None
    at = text.rfind("\n", 0, MAX_DOC_CHARS)
    return text[: at if at > 0 else MAX_DOC_CHARS], len(text)


def take(corpus, records, budget, domain, split):
    """Records in hash order until `budget` characters; long ones cut."""
    ranked = sorted(((order_key(corpus, i), r) for i, r in records), key=lambda x: x[0])
    out, used = [], 0
    for key, rec in ranked:
        if used >= budget:
            break
        text, orig = cut(rec["text"])
        rec = {**rec, "text": text, "domain": domain, "corpus": os.path.basename(corpus), "demo_split": split}
        if orig is not None:
            rec["truncated_from_chars"] = orig
        out.append((key, rec))
        used += len(text)
    return out


def wikitext_articles(path):
    with lzma.open(path, "rt", encoding="utf-8", newline="\n") as f:
        lines = [ln.rstrip("\n").replace("\r", "") for ln in f]
    arts, cur = [], None
    for ln in lines:
        if WIKI_TITLE.match(ln):
            cur = {"title": ln.strip(" =").strip(), "lines": [ln]}
            arts.append(cur)
        elif cur is not None:
            cur["lines"].append(ln)
    for k, a in enumerate(arts):
        yield k, {"id": f"wikitext2_raw_test_article_{k:03d}", "source": "wikitext-2-raw-v1 test",
                  "title": a["title"], "split": "test", "text": "\n".join(a["lines"]).strip("\n")}


def write_xz(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9))
    os.replace(tmp, path)
    return len(data), os.path.getsize(path), len(records)


@dataclass
class DemoCorpusConfig:
    """Where the shared corpora are read and the demo corpus is written."""

    shared: str = field(default=os.path.join(ROOT, "..", "shared", "data"), metadata=opt(
        "The shared data directory (its medical/, biology/, general/ corpora)."))
    out: str = field(default=os.path.join(ROOT, "data", "demo"), metadata=opt(
        "Output directory (train/ and heldout/ are written there)."))


def parse_args(argv=None) -> DemoCorpusConfig:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(ap, DemoCorpusConfig, "demo corpus")
    return dataclass_from_args(DemoCorpusConfig, ap.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    report = []
    for domain, corpora in TRAIN.items():
        share = TRAIN_CHARS_PER_DOMAIN // len(corpora)
        picked = []
        for corpus in corpora:
            keep = TRAIN_FILTER.get(corpus, lambda r: True)
            recs = [(i, r) for i, r in enumerate(read_jsonl_xz(os.path.join(args.shared, corpus + ".jsonl.xz")))
                    if keep(r)]
            picked += take(corpus, recs, share, domain, "train")
        picked.sort(key=lambda x: x[0])
        report.append((f"train/{domain}.jsonl.xz", *write_xz(os.path.join(args.out, "train", f"{domain}.jsonl.xz"),
                                                            [r for _, r in picked])))
    heldout = {
        "medical": ("medical/pubmed_abstracts_medical", lambda r: r["source"] == "medical_abstracts_tc_test"),
        "biology": ("biology/genia_jnlpba_molecular_biology_abstracts", lambda r: r["split"] == "test"),
    }
    for domain, (corpus, keep) in heldout.items():
        recs = [(i, r) for i, r in enumerate(read_jsonl_xz(os.path.join(args.shared, corpus + ".jsonl.xz")))
                if keep(r)]
        picked = take(corpus, recs, HELDOUT_CHARS_PER_DOMAIN, domain, "heldout")
        report.append((f"heldout/{domain}.jsonl.xz", *write_xz(os.path.join(args.out, "heldout", f"{domain}.jsonl.xz"),
                                                              [r for _, r in picked])))
    corpus = "general/wikitext2_raw_test"
    picked = take(corpus, list(wikitext_articles(os.path.join(args.shared, corpus + ".txt.xz"))),
                  HELDOUT_CHARS_PER_DOMAIN, "general", "heldout")
    report.append(("heldout/general.jsonl.xz", *write_xz(os.path.join(args.out, "heldout", "general.jsonl.xz"),
                                                         [r for _, r in picked])))
    for name, raw, xz, n in report:
        print(f"{name:28s} {n:6d} docs {raw / 1e6:6.2f} MB text {xz / 1e6:6.2f} MB xz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
