#!/usr/bin/env python3
"""Build the bundled multiple-choice eval slices data/demo/eval/*.jsonl.xz from ../shared/data/eval (deterministic).

    python tools/make_demo_eval.py [--shared ../shared/data] [--out data/demo/eval] [--per-set 150]

Selection: per set, the questions in the order of sha256("<file>:<line number>") (line numbers from 1), the first
--per-set of them, written in file order, records unchanged:
    mmlu.jsonl.xz     150 of the MMLU medical subjects (megatron_tf.evaluation.eval_sets.MMLU_MEDICAL_SUBJECTS)
                      + 150 of the biology subjects (MMLU_BIOLOGY_SUBJECTS) + 150 of all other subjects
    medqa.jsonl.xz    150 MedQA (USMLE, 5 options) test questions
    medmcqa.jsonl.xz  150 MedMCQA dev questions outside the Dental subject
Output is xz (preset 9, CRC64): the same input gives the same bytes. Licences: data/demo/eval/LICENSES.md.
Not run by tests (they never read ../shared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402
from megatron_tf.evaluation.eval_sets import (  # noqa: E402
    MEDMCQA_EXCLUDED_SUBJECTS,
    MMLU_BIOLOGY_SUBJECTS,
    MMLU_MEDICAL_SUBJECTS,
)

FILES = {"mmlu": "mmlu_test_57subjects.jsonl.xz", "medqa": "medqa_usmle_test_5opt.jsonl.xz",
         "medmcqa": "medmcqa_dev_4opt.jsonl.xz"}


def read_lines(path):
    with lzma.open(path, "rt", encoding="utf-8", newline="\n") as f:
        return [(i, line.rstrip("\n")) for i, line in enumerate(f, start=1) if line.strip()]


def pick(name, lines, keep, n):
    """The first n kept lines in sha256("<name>:<line>") order, returned in file order."""
    cand = [(hashlib.sha256(f"{name}:{i}".encode()).hexdigest(), i, ln) for i, ln in lines if keep(json.loads(ln))]
    if len(cand) < n:
        raise SystemExit(f"{name}: only {len(cand)} questions match, {n} wanted")
    return [ln for _, _, ln in sorted(sorted(cand)[:n], key=lambda x: x[1])]


def write_xz(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = "".join(ln + "\n" for ln in lines).encode("utf-8")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9))
    os.replace(tmp, path)
    return len(lines), len(data), os.path.getsize(path)


@dataclass
class DemoEvalConfig:
    """Where the shared eval sets are read and the slices are written, and how many questions each slice has."""

    shared: str = field(default=os.path.join(ROOT, "..", "shared", "data"), metadata=opt(
        "The shared data directory (the sets are read from its eval/)."))
    out: str = field(default=os.path.join(ROOT, "data", "demo", "eval"), metadata=opt("Output directory."))
    per_set: int = field(default=150, metadata=opt("Questions per set (per subject group for MMLU)."))


def parse_args(argv=None) -> DemoEvalConfig:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(ap, DemoEvalConfig, "demo eval slices")
    return dataclass_from_args(DemoEvalConfig, ap.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    src = {k: os.path.join(args.shared, "eval", v) for k, v in FILES.items()}
    n = args.per_set
    med, bio = set(MMLU_MEDICAL_SUBJECTS), set(MMLU_BIOLOGY_SUBJECTS)
    mmlu = read_lines(src["mmlu"])
    chosen = (pick(FILES["mmlu"], mmlu, lambda r: r["subject"] in med, n)
              + pick(FILES["mmlu"], mmlu, lambda r: r["subject"] in bio, n)
              + pick(FILES["mmlu"], mmlu, lambda r: r["subject"] not in med | bio, n))
    order = {ln: i for i, ln in mmlu}
    out = {"mmlu.jsonl.xz": sorted(chosen, key=lambda ln: order[ln]),
           "medqa.jsonl.xz": pick(FILES["medqa"], read_lines(src["medqa"]), lambda r: True, n),
           "medmcqa.jsonl.xz": pick(FILES["medmcqa"], read_lines(src["medmcqa"]),
                                    lambda r: r["subject"] not in MEDMCQA_EXCLUDED_SUBJECTS, n)}
    for name, lines in out.items():
        k, raw, xz = write_xz(os.path.join(args.out, name), lines)
        print(f"{name:18s} {k:4d} questions {raw / 1e3:7.1f} kB text {xz / 1e3:6.1f} kB xz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
