"""Train / held-out splits of ../shared/data for the CPU replication (the "Suggested splits" of its README).

    python results/cpu_replication/make_splits.py --shared ../shared/data --out runs/shared_splits

Writes JSONL (xz) files: train_{medical,biology,general}.jsonl.xz and heldout_{medical,biology,general}.jsonl.xz.
- forget (medical) train: MedQuAD, MTS-Dialog, OpenStax microbiology ch13-26, BC5CDR + NCBI-disease abstracts;
  held-out: the Medical-Abstracts-TC test abstracts (another collection).
- retain (biology) train: OpenStax biology, microbiology ch01-12, behavioral neuroscience, GENIA/JNLPBA train;
  held-out: JNLPBA test abstracts.
- general train: ELTeC novels, movie reviews, presidential speeches (Brown left out: non-commercial terms);
  held-out: WikiText-2 test articles.
"""

import argparse
import json
import lzma
import os


def records(path):
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if line.strip():
                yield json.loads(line)


def wikitext_articles(path):
    text = lzma.open(path, "rt", encoding="utf-8").read()
    art = []
    for line in text.split("\n"):
        if line.startswith(" = ") and not line.startswith(" = = ") and art:
            yield {"text": "\n".join(art).strip(), "source": "wikitext2_test"}
            art = []
        art.append(line)
    if art:
        yield {"text": "\n".join(art).strip(), "source": "wikitext2_test"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--out", default="runs/shared_splits")
    a = p.parse_args()
    d = a.shared
    os.makedirs(a.out, exist_ok=True)
    out = {k: [] for k in ("train_medical", "train_biology", "train_general", "heldout_medical", "heldout_biology",
                           "heldout_general")}
    for f in ("medquad_nih_qa", "mts_dialog_doctor_patient", "openstax_microbiology_ch13-26_clinical"):
        out["train_medical"] += records(f"{d}/medical/{f}.jsonl.xz")
    for r in records(f"{d}/medical/pubmed_abstracts_medical.jsonl.xz"):
        out["heldout_medical" if r.get("source") == "medical_abstracts_tc_test" else "train_medical"].append(r)
    for f in ("openstax_biology_1e", "openstax_microbiology_ch01-12", "openstax_behavioral_neuroscience"):
        out["train_biology"] += records(f"{d}/biology/{f}.jsonl.xz")
    for r in records(f"{d}/biology/genia_jnlpba_molecular_biology_abstracts.jsonl.xz"):
        out["heldout_biology" if r.get("split") == "test" else "train_biology"].append(r)
    for f in ("eltec_eng_novels_1840-1920", "nltk_movie_reviews_polarity_v2", "nltk_us_presidential_speeches_pd"):
        out["train_general"] += records(f"{d}/general/{f}.jsonl.xz")
    out["heldout_general"] = [r for r in wikitext_articles(f"{d}/general/wikitext2_raw_test.txt.xz") if r["text"]]
    for k, rows in out.items():
        with lzma.open(os.path.join(a.out, f"{k}.jsonl.xz"), "wt", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"text": r["text"], "source": r.get("source", "")}, ensure_ascii=False) + "\n")
        print(f"{k}: {len(rows)} documents, {sum(len(r['text']) for r in rows):,} characters")


if __name__ == "__main__":
    main()
